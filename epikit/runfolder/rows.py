"""Row access shared by every reader: Zarr rows in any order, ``cell_id`` -> table row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from epikit.errors import DataError


def read_rows(array: Any, index: np.ndarray | Sequence[int], dtype: Any = None) -> np.ndarray:
    """Rows ``index`` of a Zarr array, in the order given (read in sorted order, one request)."""
    index = np.asarray(index, dtype=np.int64)
    if index.size == 0:
        return np.zeros((0, *array.shape[1:]), dtype=dtype or array.dtype)
    order = np.argsort(index)
    data = np.asarray(array.get_orthogonal_selection((index[order],)), dtype=dtype)
    out = np.empty_like(data)
    out[order] = data
    return out


def cell_rows(known: Sequence[str] | np.ndarray, wanted: Sequence[str] | np.ndarray, error: str) -> np.ndarray:
    """Positions in ``known`` (cell ids in row order) of the ids ``wanted``, in that order.

    Raises :class:`DataError` with the message ``error`` when a wanted id is not known.
    """
    position = pd.Series(np.arange(len(known)), index=pd.Index(np.asarray(known).astype(str)))
    rows = position.reindex(np.asarray(wanted).astype(str)).to_numpy()
    if np.isnan(rows.astype(float)).any():
        raise DataError(error)
    return rows.astype(np.int64)
