"""Where the fit loop reads crops from: one tensor in memory, or ``crops.zarr`` pool by pool.

A crop source answers two questions for :mod:`epikit.training.fit`: which batches make up an
epoch (:meth:`batches`, shuffled with the loop's generator) and what the crops of some rows
are, in order (:meth:`blocks`, for validation, test predictions and the BatchNorm refresh).

- :class:`TensorCrops` holds every crop in one tensor (on the GPU when it fits there).
  Its epoch is the loop's own shuffled order cut into batches.
- :class:`StoredCrops` keeps at most ``pool_cells`` crops in memory. An epoch visits the
  store's chunks in a random order, ``pool_cells`` cells at a time; each pool is read in one
  pass (every chunk decompressed once per epoch, not once per batch) and shuffled within
  itself. Chunks hold consecutive cells of one field, so the default pool (~1,360 cells,
  85 chunks) mixes ~85 fields of every condition. A random batch drawn from the whole store
  would touch one chunk per cell: 39 ms of reading per 16-cell batch against an 80 ms step
  on the study's crops; pools cost one read of the training cells per epoch (at 400 fields,
  training took 5% longer per cell than from memory; bench/README.md, "Study scale").

:mod:`epikit.runfolder.crop_sources` picks between them for a run folder's crops and masks
from a memory budget (:attr:`~epikit.options.TrainingOptions.crops_memory_mb`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

Batch = tuple["torch.Tensor", "torch.Tensor"]

#: A pool spans at least this many storage chunks, whatever the budget: a chunk holds cells
#: of one field, and batches drawn from a few chunks would see a few fields only.
MIN_POOL_CHUNKS = 16


@runtime_checkable
class CropSource(Protocol):
    """What the fit loop needs of its crops: shape, epoch batches and ordered reads."""

    shape: tuple[int, int, int, int]
    ndim: int

    def __len__(self) -> int: ...

    def batches(self, rows: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """(rows, crops) batches covering ``rows`` (an epoch's shuffled draw) once each."""
        ...

    def blocks(self, rows: torch.Tensor, block: int) -> Iterator[torch.Tensor]:
        """The crops of ``rows`` in their order, ``block`` at a time."""
        ...

    def identity(self) -> Any:
        """What the crops are, for resume keys (:meth:`FoldStore.fingerprint`)."""
        ...


class TensorCrops:
    """Every crop in one (N, C, S, S) tensor; an epoch is the given order cut into batches."""

    ndim = 4

    def __init__(self, data: torch.Tensor):
        self.data = data
        self.shape = tuple(data.shape)
        self.device = data.device

    def __len__(self) -> int:
        return len(self.data)

    def batches(self, rows: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """Consecutive slices of ``rows`` (already shuffled by the caller); ``generator`` unused."""
        rows = rows.to(self.device)
        for start in range(0, len(rows), batch_size):
            part = rows[start:start + batch_size]
            yield part, self.data[part]

    def blocks(self, rows: torch.Tensor, block: int) -> Iterator[torch.Tensor]:
        """``data[rows]``, ``block`` rows at a time."""
        rows = rows.to(self.device)
        for start in range(0, len(rows), block):
            yield self.data[rows[start:start + block]]

    def identity(self) -> Any:
        """The tensor itself (hashed by content)."""
        return self.data


@dataclass
class StoredCrops:
    """Crops read from a Zarr store on demand, at most ``pool_cells`` at a time (but always
    :data:`MIN_POOL_CHUNKS` whole chunks).

    ``read(rows)`` returns float32 (n, C, S, S) for dataset rows in their order; ``chunk``
    gives each row's storage chunk; ``key`` names the content (store hash, rows, channels).
    """

    read: Callable[[np.ndarray], np.ndarray]
    chunk: np.ndarray
    shape: tuple[int, int, int, int]
    pool_cells: int
    key: tuple[Any, ...]
    ndim: int = 4

    def __len__(self) -> int:
        return self.shape[0]

    def _tensor(self, rows: np.ndarray) -> torch.Tensor:
        import torch

        return torch.from_numpy(np.ascontiguousarray(self.read(rows), dtype=np.float32))

    def _pool(self) -> int:
        """Cells per pool: ``pool_cells``, but at least :data:`MIN_POOL_CHUNKS` chunks."""
        chunk_cells = int(np.bincount(self.chunk).max()) if len(self.chunk) else 1
        return max(self.pool_cells, MIN_POOL_CHUNKS * chunk_cells)

    def batches(self, rows: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """Pools of whole chunks in random chunk order, each read once and shuffled within itself.

        ``rows`` may repeat (class-balanced sampling); every entry is yielded once. Pools hold
        a whole number of batches, so only the epoch's last batch can be short.
        """
        import torch

        rows = rows.cpu()
        chunks = torch.as_tensor(self.chunk)[rows]
        chunk_order = torch.randperm(int(self.chunk.max()) + 1, generator=generator,
                                     device=generator.device).cpu()
        arranged = rows[torch.argsort(chunk_order[chunks], stable=True)]
        pool = max(batch_size, self._pool() // batch_size * batch_size)
        for start in range(0, len(arranged), pool):
            members = arranged[start:start + pool]
            crops = self._tensor(members.numpy())
            shuffle = torch.randperm(len(members), generator=generator, device=generator.device).cpu()
            for first in range(0, len(members), batch_size):
                picked = shuffle[first:first + batch_size]
                yield members[picked], crops[picked]

    def blocks(self, rows: torch.Tensor, block: int) -> Iterator[torch.Tensor]:
        """The crops of ``rows`` in order, read ``block`` rows (at most a pool) at a time."""
        rows = rows.cpu().numpy()
        block = min(block, self._pool())
        for start in range(0, len(rows), block):
            yield self._tensor(rows[start:start + block])

    def identity(self) -> Any:
        """The store's content hash, the rows and channels read, and the pool size."""
        return self.key


def as_source(crops: Any) -> CropSource:
    """``crops`` itself when it is a :class:`CropSource`, else a :class:`TensorCrops` of it."""
    import torch

    return crops if isinstance(crops, CropSource) else TensorCrops(torch.as_tensor(crops))


def pool_size(budget_mb: float, cell_bytes: int) -> int:
    """Cells that fit in ``budget_mb`` MiB at ``cell_bytes`` each (at least one)."""
    return max(1, int(budget_mb * 2**20 // cell_bytes))
