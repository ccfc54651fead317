"""Where the embarrassingly parallel work runs: in this process, on local processes, or on Dask.

The per-image stages (segmentation, extraction) and explanation per cell chunk are a list of
independent tasks. An :class:`Executor` runs one function over such a list and hands the
results back to the driver **as they complete**, so the driver commits each unit of work
(a mask, an extraction progress line) the moment it is whole::

    from epikit.distributed import PluginSpec, get_executor
    from epikit.segmentation import segment_image

    with get_executor(workers=2) as executor:           # a LocalCluster of 2 processes
        shared = (PluginSpec("segmenter", "watershed"), masks_dir)
        for record, counts in executor.map_unordered(segment_image, records, shared=shared,
                                                     label=lambda r: str(r.path)):
            ...                                         # the mask is written: record it

Three back ends, chosen by :func:`get_executor`:

* in-process (``workers=0``, no scheduler; the default): tasks run one after the other here;
* local processes (``workers=N``): a ``dask.distributed.LocalCluster`` of N single-threaded
  worker processes, closed with the executor;
* an existing cluster (``scheduler="tcp://host:8786"``, or the ``DASK_SCHEDULER_ADDRESS``
  environment variable, or a ``distributed.Client`` / cluster object): e.g. a dask-jobqueue
  ``SLURMCluster``. The run folder and inputs must then be on a filesystem every worker sees.

Contract of a task function ``fn(item, *shared)``: it is a module-level function (workers
import it by name), it writes its large results itself into the run folder (atomically, to a
path no other task writes) and returns something small. ``shared`` is sent to each worker
once (Dask ``scatter``), not with every task. Heavy objects a task needs (segmenter weights,
fold models) are built once per worker process with :func:`build_plugin` /
:func:`process_cache`, not once per task.

Failures: a task that raises an :class:`~epikit.errors.EpikitError` fails the map with the
same error class, its message prefixed with the task's label (the image path), and is not
retried (bad input stays bad). Any other exception is retried once (:data:`RETRIES`) and then
re-raised with a note naming the label. A worker process that dies has its tasks rescheduled
on other workers by Dask (up to ``distributed.scheduler.allowed-failures`` times). Dask is an
optional dependency (``pip install epikit[dask]``), imported only when a cluster is asked for.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from epikit.errors import ConfigError, EpikitError, PluginError

T = TypeVar("T")
R = TypeVar("R")

#: Environment variable naming an existing Dask scheduler (Dask's own convention).
SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
#: Extra attempts of a task that raised something other than an EpikitError.
RETRIES = 1
#: Seconds to wait for a scheduler to answer.
CONNECT_TIMEOUT = 30
#: Tasks submitted ahead of the results consumed: per worker thread, and at least.
TASKS_PER_WORKER = 4
MIN_WINDOW = 8
#: Environment of local worker processes (set before they start). Allocator: Dask's default
#: (return freed memory to the OS from 64 KiB, which also fixes glibc's mmap threshold at
#: 128 KiB) made every image-sized array a fresh mmap: 3x the page faults and ~30% more CPU
#: than the same work in-process (measured); these restore roughly the behaviour of an
#: ordinary Python process. Threads: one per worker process for OpenMP (torch sizes its pool
#: from ``OMP_NUM_THREADS`` when imported), MKL and OpenBLAS, so N workers use N cores
#: (Dask's defaults say the same; stated here so that a site configuration cannot undo it,
#: and applied over the driver's own environment: Dask would otherwise hand a driver's
#: ``OMP_NUM_THREADS=8`` to every local worker, 8 threads each on N cores).
LOCAL_WORKER_ENVIRON = {"MALLOC_TRIM_THRESHOLD_": 256 * 2**20, "MALLOC_MMAP_THRESHOLD_": 32 * 2**20,
                        "OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1}
#: Worker-side objects kept per process by :func:`process_cache` (models, datasets).
CACHE_SIZE = 8


# --------------------------------------------------------------------------------------------
# Objects built once per worker process


@dataclass(frozen=True)
class PluginSpec:
    """A plugin by name and parameters: tiny to ship, built on the worker that needs it.

    ``PluginSpec("segmenter", "maskrcnn", {"min_score": 0.5}).build()`` returns the same
    object for every task of a worker process (see :func:`build_plugin`).
    """

    kind: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        """The plugin object, built once per process for these parameters."""
        return build_plugin(self.kind, self.name, self.params)


def _params_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def build_plugin(kind: str, name: str, params: dict[str, Any] | None = None) -> Any:
    """Build registered plugin ``kind``/``name`` with ``params``, once per process.

    Later calls with equal parameters return the cached object, so a worker loads a
    segmenter's or explainer's weights once however many tasks it runs.
    """
    from epikit.registry import get_entry

    factory = get_entry(kind, name).factory
    return _cached_plugin(kind, name, factory, _params_key(dict(params or {})))


@functools.lru_cache(maxsize=CACHE_SIZE)
def _cached_plugin(kind: str, name: str, factory: Any, params_key: str) -> Any:
    """``factory`` in the key: a name registered anew (e.g. in a test's registry) is rebuilt."""
    from epikit.registry import build

    return build(kind, name, **json.loads(params_key))


def resolve_plugin(obj: Any) -> Any:
    """``obj`` itself, or the object a :class:`PluginSpec` builds (cached per process)."""
    return obj.build() if isinstance(obj, PluginSpec) else obj


def process_cache(builder: Callable[..., R]) -> Callable[..., R]:
    """Decorate a builder so each process keeps its last :data:`CACHE_SIZE` results.

    For worker-side state keyed by hashable arguments, e.g. the fold models of a run folder
    keyed by ``(run_dir, view)``: built by the first task on a worker, reused by the rest.
    """
    return functools.lru_cache(maxsize=CACHE_SIZE)(builder)


# --------------------------------------------------------------------------------------------
# Running one task (on a worker or here)


@dataclass(frozen=True)
class _Failed:
    """A task's EpikitError, returned as a value so that Dask does not retry it."""

    error: EpikitError


def labelled(error: EpikitError, label: str) -> EpikitError:
    """``error`` with ``label`` (e.g. the image path) leading its message, same class."""
    message = str(error)
    if not label or message.startswith(label):
        return error
    try:
        wrapped = type(error)(f"{label}: {message}")
    except TypeError:  # a subclass with another constructor
        wrapped = EpikitError(f"{label}: {message}")
    wrapped.__cause__ = error
    return wrapped


def run_task(fn: Callable[..., R], label: str, item: Any, shared: tuple[Any, ...]) -> R | _Failed:
    """Run ``fn(item, *shared)``: an EpikitError becomes a labelled :class:`_Failed` value.

    Other exceptions propagate (Dask retries them) with a note naming ``label``.
    """
    try:
        return fn(item, *shared)
    except EpikitError as error:
        return _Failed(labelled(error, label))
    except Exception as error:
        error.add_note(f"epikit: while processing {label}")
        raise


def _unwrap(result: Any) -> Any:
    if isinstance(result, _Failed):
        raise result.error
    return result


# --------------------------------------------------------------------------------------------
# Executors


class Executor:
    """Runs a module-level function over items; results come back as tasks complete.

    Use as a context manager (back ends that start processes stop them on exit). This base
    class runs tasks in the calling process, one after the other.
    """

    #: True when tasks run inside the calling process.
    in_process: bool = True

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release what the executor started (nothing for the in-process back end)."""

    @property
    def n_workers(self) -> int:
        """How many tasks can run at once."""
        return 1

    def _stream(self, fn: Callable[..., R], items: list[T], shared: tuple[Any, ...],
                label: Callable[[T], str], ordered: bool) -> Iterator[tuple[T, R]]:
        for item in items:
            yield item, _unwrap(run_task(fn, label(item), item, shared))

    def map_unordered(
        self,
        fn: Callable[..., R],
        items: Iterable[T],
        *,
        shared: tuple[Any, ...] = (),
        label: Callable[[T], str] = str,
    ) -> Iterator[tuple[T, R]]:
        """Yield ``(item, fn(item, *shared))`` for every item, in order of completion.

        ``label(item)`` names the item in error messages (e.g. its image path). Stopping the
        iteration early (or an error) cancels the tasks not yet finished.
        """
        return self._stream(fn, list(items), shared, label, ordered=False)

    def map(
        self,
        fn: Callable[..., R],
        items: Iterable[T],
        *,
        shared: tuple[Any, ...] = (),
        label: Callable[[T], str] = str,
    ) -> Iterator[tuple[T, R]]:
        """Like :meth:`map_unordered`, but in the order of ``items``.

        Each result is yielded as soon as it and every result before it are done, so a driver
        can commit results in input order while later tasks still run.
        """
        return self._stream(fn, list(items), shared, label, ordered=True)


class InProcessExecutor(Executor):
    """Runs every task here, one after the other (the default back end)."""


class DaskExecutor(Executor):
    """Runs tasks on a ``dask.distributed`` cluster through ``client``.

    ``owned`` objects (a LocalCluster started for this executor, and the client) are closed
    with the executor; a client passed in by the caller is left open. Tasks are submitted a
    window ahead of the results handed back (:data:`TASKS_PER_WORKER` per worker thread), so
    the driver holds few finished-but-unconsumed results however many items there are.
    """

    in_process = False

    def __init__(self, client: Any, owned: tuple[Any, ...] = ()) -> None:
        self.client = client
        self._owned = owned

    def close(self) -> None:
        """Close the client and cluster this executor started, if any."""
        for thing in self._owned:
            thing.close()
        self._owned = ()

    @property
    def n_workers(self) -> int:
        """Worker threads currently connected to the scheduler (at least 1)."""
        return max(1, sum(self.client.nthreads().values()))

    def _window(self) -> int:
        return max(MIN_WINDOW, TASKS_PER_WORKER * self.n_workers)

    def _stream(self, fn: Callable[..., R], items: list[T], shared: tuple[Any, ...],
                label: Callable[[T], str], ordered: bool) -> Iterator[tuple[T, R]]:
        from distributed import as_completed

        if not items:
            return
        # One copy of ``shared`` per worker instead of one per task.
        payload = self.client.scatter(_Shared(shared), broadcast=True, hash=False)
        prefix = f"epikit-{getattr(fn, '__name__', 'task')}-{uuid.uuid4().hex[:8]}"
        labels = [label(item) for item in items]
        running: dict[str, tuple[int, Any]] = {}
        pending = as_completed()
        done: dict[int, Any] = {}
        submitted = yielded = 0
        window, checked = self._window(), time.monotonic()

        def top_up() -> None:
            nonlocal submitted
            while submitted < min(yielded + window, len(items)):
                future = self.client.submit(_run_shared, items[submitted], labels[submitted], fn=fn,
                                            payload=payload, key=f"{prefix}-{submitted}", retries=RETRIES)
                running[future.key] = (submitted, future)
                pending.add(future)
                submitted += 1

        try:
            top_up()
            for future in pending:
                index, _ = running.pop(future.key)
                done[index] = _unwrap(_result(future, labels[index]))
                future.release()
                ready = range(yielded, len(items)) if ordered else [index]
                for current in ready:
                    if current not in done:
                        break
                    yield items[current], done.pop(current)
                    yielded += 1
                if time.monotonic() - checked > 1.0:  # workers come and go (adaptive clusters)
                    window, checked = self._window(), time.monotonic()
                top_up()
        finally:
            if running:
                self.client.cancel([future for _, future in running.values()])


@dataclass(frozen=True)
class _Shared:
    """The arguments every task of one map gets (scattered as one object)."""

    args: tuple[Any, ...]


def _run_shared(item: Any, label: str, *, fn: Callable[..., R], payload: _Shared) -> R | _Failed:
    return run_task(fn, label, item, payload.args)


def _result(future: Any, label: str) -> Any:
    """A future's result; a task that killed its workers becomes a labelled EpikitError."""
    from distributed import KilledWorker

    try:
        return future.result()
    except KilledWorker as error:
        raise EpikitError(f"{label}: every worker that ran this task died ({error}); it may need "
                          "more memory per worker than the cluster gives") from error


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as error:
        raise PluginError("running on several workers needs Dask: pip install 'epikit[dask]' "
                          f"(import failed: {error})") from error
    return distributed


def get_executor(workers: int = 0, scheduler: Any = None) -> Executor:
    """The executor for ``workers`` local processes or an existing ``scheduler``.

    ``scheduler``: an address (``"tcp://host:8786"``), a ``distributed.Client``, or a cluster
    object (``LocalCluster``, dask-jobqueue's ``SLURMCluster`` ...). With neither ``workers``
    nor ``scheduler``, ``$DASK_SCHEDULER_ADDRESS`` is used when set, else everything runs in
    this process. Use the result as a context manager.
    """
    if workers is None:
        workers = 0
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise ConfigError(f"workers must be a non-negative integer; got {workers!r}")
    if scheduler in ("", None) and workers == 0:
        scheduler = os.environ.get(SCHEDULER_ENV) or None
    if scheduler not in ("", None) and workers:
        raise ConfigError(f"give either --workers ({workers}) or --scheduler ({scheduler}), not both")
    if scheduler in ("", None) and workers == 0:
        return InProcessExecutor()
    distributed = _import_distributed()
    if isinstance(scheduler, distributed.Client):
        return DaskExecutor(scheduler)
    if workers:
        import dask

        environ = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in LOCAL_WORKER_ENVIRON.items()}
        try:
            with dask.config.set(environ), _driver_environ(LOCAL_WORKER_ENVIRON):
                cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                   dashboard_address=None)
        except RuntimeError as error:  # e.g. "Nanny failed to start"
            raise ConfigError(f"could not start {workers} local worker process(es) ({error}); a script "
                              "that starts workers must do so under `if __name__ == \"__main__\":` "
                              "(workers re-import the main module)") from error
        client = distributed.Client(cluster)
        return DaskExecutor(client, owned=(client, cluster))
    address = getattr(scheduler, "scheduler_address", scheduler)  # a cluster object
    try:
        client = distributed.Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError, TypeError) as error:
        raise ConfigError(f"cannot reach the Dask scheduler {address!r} ({error}); check the address "
                          "(e.g. tcp://host:8786) and that the scheduler is running") from error
    return DaskExecutor(client, owned=(client,))


@contextlib.contextmanager
def _driver_environ(values: dict[str, Any]) -> Iterator[None]:
    """Set ``values`` in this process's environment while local workers start, then restore it.

    Dask's nanny lets a variable already set in the driver's environment override its
    ``pre-spawn-environ`` configuration; the worker pinning must win over it.
    """
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update({key: str(value) for key, value in values.items()})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def for_workers(record: T) -> T:
    """A copy of an input record (anything with a ``path``) whose path works from any cwd.

    Workers of a cluster do not share the driver's working directory; identifiers derived
    from the path (``image_id``, the mask's file name) do not change.
    """
    import dataclasses

    path = record.path  # type: ignore[attr-defined]
    return dataclasses.replace(record, path=type(path)(os.path.abspath(path)))  # type: ignore[type-var]
