"""The cells of a run folder: ``CellDataset`` (a PyTorch ``Dataset``) and the nucleus masks.

Reads ``crops.zarr`` and ``cells.parquet`` written by :func:`epikit.extraction.extract_cells`::

    from epikit.runfolder.cells import CellDataset

    data = CellDataset("runs/demo", channels=["H3K27ac"])   # one of the study's "views"
    crop, label = data[0]              # float32 tensor (1, S, S), index into data.classes
    x = data.load_crops()              # every crop at once, (N, 1, S, S) float32
    adata = data.to_anndata()          # features as X, metadata as obs (scanpy, pycytominer)

The Zarr store is opened lazily in whichever process reads it, so the dataset pickles into
``DataLoader`` worker processes without carrying open file handles.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from epikit.errors import ConfigError, DataError, InputError
from epikit.runfolder.crops import CONTENT_HASH_ATTR, content_hash
from epikit.runfolder.layout import CELLS, CROPS

#: Bytes of stored crops read per Zarr request by :meth:`CellDataset.load_crops`
#: (rounded down to whole chunks, at least one chunk).
READ_BLOCK_BYTES = 64 * 1024 * 1024


def chunk_runs(chunks: np.ndarray, longest: int) -> list[tuple[int, int]]:
    """Sorted unique chunk numbers grouped into runs of neighbours: ``(first, last)``, at most ``longest`` long."""
    runs: list[tuple[int, int]] = []
    for run in np.split(chunks, np.flatnonzero(np.diff(chunks) != 1) + 1):
        for start in range(0, len(run), longest):
            part = run[start:start + longest]
            runs.append((int(part[0]), int(part[-1])))
    return runs


class CellDataset(Dataset):
    """Cells of a run folder: ``dataset[i] -> (crop float32 tensor (C', S, S), label int)``.

    ``channels`` selects and orders channels by name (default: all, as stored); an unknown name
    raises :class:`ConfigError` listing the available ones. ``indices`` restricts the dataset to
    those rows of ``cells.parquet`` (e.g. one cross-validation fold); ``transform`` is applied
    to each crop tensor.

    Attributes: ``table`` (the rows of ``cells.parquet`` in dataset order), ``classes``
    (sorted condition names of the whole run, so subsets agree on label numbers),
    ``labels`` (``np.ndarray`` of class indices), ``groups`` (``np.ndarray`` of group strings),
    ``channel_names`` (the selected channels), ``crop_size``, ``attrs`` (the store's attributes).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        channels: Sequence[str] | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        import zarr

        self.run_dir = Path(run_dir)
        self.store_path = self.run_dir / CROPS
        table_path = self.run_dir / CELLS
        for path in (self.store_path, table_path):
            if not path.exists():
                raise InputError(f"{path}: not found; run `epikit extract` (or `epikit run`) into "
                                 f"{self.run_dir} first")
        full = pd.read_parquet(table_path)
        group = zarr.open_group(str(self.store_path), mode="r")
        self.attrs: dict[str, Any] = dict(group.attrs)
        stored = int(group["crops"].shape[0])
        if len(full) and int(full["crop_index"].max()) >= stored:
            raise DataError(f"{table_path}: refers to crop {int(full['crop_index'].max())} but "
                            f"{self.store_path} holds {stored}; re-run `epikit extract`")
        all_channels = list(self.attrs["channel_names"])
        if channels is None:
            channels = all_channels
        if isinstance(channels, str):
            channels = [channels]
        unknown = [c for c in channels if c not in all_channels]
        if unknown or not channels:
            raise ConfigError(f"unknown channel(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                              f"available: {', '.join(all_channels)}")
        self.channel_names: list[str] = list(channels)
        self._channel_index = [all_channels.index(c) for c in channels]
        self.crop_size = int(self.attrs["crop_size"])
        self.classes: list[str] = sorted(full["condition"].astype(str).unique())
        rows = np.arange(len(full)) if indices is None else np.asarray(indices, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(full)):
            raise ConfigError(f"indices must be rows of {table_path} (0 to {len(full) - 1})")
        self.table: pd.DataFrame = full.iloc[rows].reset_index(drop=True)
        lookup = {name: i for i, name in enumerate(self.classes)}
        self.labels: np.ndarray = self.table["condition"].astype(str).map(lookup).to_numpy(np.int64)
        self.groups: np.ndarray = self.table["group"].astype(str).to_numpy()
        self._crop_index = self.table["crop_index"].to_numpy(np.int64)
        self.transform = transform
        self._crops: Any = None  # opened on first read, in the reading process

    def __len__(self) -> int:
        return len(self.table)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_crops"] = None  # each worker opens the store itself
        return state

    def _array(self) -> Any:
        if self._crops is None:
            import zarr

            self._crops = zarr.open_group(str(self.store_path), mode="r")["crops"]
        return self._crops

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"cell {index} out of range for a dataset of {len(self)} cells")
        crop = np.asarray(self._array()[int(self._crop_index[index])])[self._channel_index]
        tensor = torch.from_numpy(crop.astype(np.float32))
        if self.transform is not None:
            tensor = self.transform(tensor)
        return tensor, int(self.labels[index])

    def load_crops(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Read many crops at once: ``(n, C', S, S)`` float32 in the order of ``indices``.

        ``indices`` are dataset positions (default: all). Reads only the chunks that hold
        wanted cells, each run of neighbouring chunks in one request (at most
        :data:`READ_BLOCK_BYTES`), instead of one request per cell; no ``transform`` is applied.
        """
        positions = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        wanted = self._crop_index[positions]
        out = np.empty((len(wanted), len(self._channel_index), self.crop_size, self.crop_size),
                       dtype=np.float32)
        if not len(wanted):
            return out
        array = self._array()
        chunk = int(array.chunks[0])
        chunk_bytes = chunk * int(np.prod(array.shape[1:])) * np.dtype(self.attrs["dtype"]).itemsize
        order = np.argsort(wanted, kind="stable")
        sorted_wanted = wanted[order]
        for first, last in chunk_runs(np.unique(sorted_wanted // chunk), max(1, READ_BLOCK_BYTES // chunk_bytes)):
            low, high = first * chunk, min((last + 1) * chunk, array.shape[0])
            start, stop = np.searchsorted(sorted_wanted, [low, high])
            data = np.asarray(array[low:high])
            out[order[start:stop]] = data[sorted_wanted[start:stop] - low][:, self._channel_index]
        return out

    def crop_chunks(self) -> np.ndarray:
        """The ``crops.zarr`` chunk that holds each cell (dataset order): cells of one chunk are read together."""
        return self._crop_index // int(self._array().chunks[0])

    def content_key(self) -> tuple[str, np.ndarray, list[int]]:
        """What :meth:`load_crops` returns, for resume keys: the store's content hash, rows and channels."""
        stored = self.attrs.get(CONTENT_HASH_ATTR) or content_hash(self.store_path)
        return str(stored), self._crop_index, list(self._channel_index)

    def feature_columns(self) -> list[str]:
        """The per-cell feature columns (names recorded by the extraction, present in ``table``)."""
        recorded = self.attrs.get("feature_columns") or []
        return [c for c in recorded if c in self.table.columns]

    def to_pandas(self) -> pd.DataFrame:
        """The cells of this dataset as a DataFrame (metadata and features; a copy)."""
        return self.table.copy()

    def to_anndata(self) -> Any:
        """An ``anndata.AnnData``: features as ``X`` (float32), every other column as ``obs``.

        ``obs_names`` are the cell ids; ``uns["epikit"]`` holds the crop store's attributes.
        Needs the optional ``anndata`` package.
        """
        try:
            import anndata
        except ImportError as error:
            raise ConfigError("to_anndata needs the anndata package: pip install anndata "
                              "(or pip install 'epikit[anndata]')") from error
        features = self.feature_columns()
        if not features:
            raise DataError(f"{self.run_dir / CELLS}: no feature columns; extract with features on")
        obs = self.table.drop(columns=[*features, "cell_id"])
        obs.index = pd.Index(self.table["cell_id"].astype(str), name="cell_id")
        for column in obs.columns:
            if obs[column].dtype == object:
                obs[column] = obs[column].astype(str)
        x = self.table[features].to_numpy(dtype=np.float32)
        uns = {"epikit": {k: v for k, v in self.attrs.items() if k != "feature_columns"}}
        return anndata.AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(features, name="feature")),
                               uns=uns)


