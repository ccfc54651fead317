"""Atomic writes into run folders: nothing half-written survives an error or a kill.

Every writer here first writes to a temporary sibling of the target (same directory, so
the final ``os.replace`` is atomic on one filesystem) and renames it onto the target only
when writing finished without error.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success move it onto ``target``.

    Works for files and directories (e.g. a Zarr store). On an exception the temporary
    path is deleted and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield temporary
    except BaseException:
        _remove(temporary)
        raise
    if temporary.is_dir() and target.exists():
        # Directories cannot be replaced in one step: move the old one aside first.
        trash = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, trash)
        os.replace(temporary, target)
        _remove(trash)
    else:
        os.replace(temporary, target)


def _to_builtin(value: Any) -> Any:
    """JSON fallback for numpy scalars/arrays, paths and sets; NaN/inf become null."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.ndarray):
        return [_to_builtin(v) for v in value.tolist()]
    if isinstance(value, (Path, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, (set, frozenset, tuple)):
        return [_to_builtin(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_builtin(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_builtin(v) for v in value]
    return value


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (numpy values converted, NaN -> null)."""
    path = Path(path)
    text = json.dumps(_to_builtin(obj), indent=2, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return path


def read_json(path: str | os.PathLike[str], default: Any = None) -> Any:
    """Read a JSON file; return ``default`` when it does not exist."""
    path = Path(path)
    if not path.exists():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


def write_tiff(path: str | os.PathLike[str], array: np.ndarray, **kwargs: Any) -> Path:
    """Write ``array`` as a TIFF atomically (zlib-compressed; opens in napari and Fiji)."""
    import tifffile

    path = Path(path)
    kwargs.setdefault("compression", "zlib")
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, **kwargs)
    return path


def write_parquet(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a DataFrame to Parquet atomically (index dropped)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return path


def write_csv(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a DataFrame to CSV atomically (index dropped)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's contents, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()
