"""The resumable work scratch of every stage: ``RUN/.epikit/scratch/<stage>/<settings key>/``.

A stage that works in units (images, folds, cell chunks) keeps each finished unit in its
:class:`Scratch` until its outputs are written, so an interrupted stage resumes. The key is
a :func:`epikit.config.section_hash` of the settings the units depend on: opening the scratch
removes the folders other settings left in that stage (their work can never be reused), and
:meth:`Scratch.remove` clears the stage's scratch once it is no longer needed.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from epikit.runfolder.layout import SCRATCH_DIR


@dataclass(frozen=True)
class Scratch:
    """The work folder of one stage for one settings key (see the module docstring)."""

    run_dir: Path
    stage: str
    key: str

    @property
    def root(self) -> Path:
        """``RUN/.epikit/scratch/<stage>``: every key's folder of this stage."""
        return Path(self.run_dir).absolute() / SCRATCH_DIR / self.stage

    @property
    def path(self) -> Path:
        """``RUN/.epikit/scratch/<stage>/<key>``: this key's folder (exists after :meth:`open`)."""
        return self.root / self.key

    def open(self) -> list[str]:
        """Create this key's folder; remove other keys' folders and return their keys."""
        stale = [folder for folder in scratch_folders(self.run_dir, self.stage) if folder.name != self.key]
        for folder in stale:
            shutil.rmtree(folder, ignore_errors=True)
        self.path.mkdir(parents=True, exist_ok=True)
        return [folder.name for folder in stale]

    def remove(self) -> None:
        """Remove this stage's scratch, every key's folder."""
        shutil.rmtree(self.root, ignore_errors=True)


def scratch_folders(run_dir: str | Path, stage: str) -> list[Path]:
    """The scratch folders of ``stage`` in ``run_dir``, one per settings key (sorted; empty when none)."""
    root = Path(run_dir).absolute() / SCRATCH_DIR / stage
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
