"""The ``--workers`` / ``--scheduler`` options shared by the commands that can run on Dask.

``epikit run``, ``segment``, ``extract`` and ``explain`` take them (see
:func:`epikit.distributed.get_executor`): ``--workers N`` starts N local worker processes,
``--scheduler tcp://host:8786`` (or ``$DASK_SCHEDULER_ADDRESS``) uses a running cluster.
"""

from __future__ import annotations

from typing import Optional

import typer

WORKERS: int = typer.Option(
    0, "--workers", "-w", min=0,
    help="Run per-image / per-chunk work on N local worker processes (Dask; 0: in this process).")
SCHEDULER: Optional[str] = typer.Option(
    None, "--scheduler",
    help="Address of a running Dask scheduler (e.g. tcp://host:8786; default $DASK_SCHEDULER_ADDRESS). "
         "Inputs and output folder must be on a filesystem the workers see.")
