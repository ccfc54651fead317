"""The one resumable work scratch of every stage (epikit.runfolder.scratch) and the one settings hash."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from epikit.config import section_hash
from epikit.runfolder.layout import SCRATCH_DIR, STAGE_OUTPUTS
from epikit.runfolder.scratch import Scratch, scratch_folders


def test_opening_a_key_removes_other_settings_folders_of_that_stage_only(tmp_path: Path) -> None:
    first = Scratch(tmp_path, "explain", "aaa")
    assert first.open() == []
    (first.path / "chunk.npy").write_bytes(b"done")
    other_stage = Scratch(tmp_path, "train", "zzz")
    other_stage.open()
    assert first.open() == [] and (first.path / "chunk.npy").is_file()  # same key: kept
    second = Scratch(tmp_path, "explain", "bbb")
    assert second.open() == ["aaa"]
    assert scratch_folders(tmp_path, "explain") == [second.path]
    assert scratch_folders(tmp_path, "train") == [other_stage.path]
    second.remove()
    assert scratch_folders(tmp_path, "explain") == [] and not second.root.exists()


def test_every_scratch_is_removed_with_its_stage_outputs() -> None:
    for stage in ("extract", "train", "explain"):
        assert (SCRATCH_DIR / stage).as_posix() in STAGE_OUTPUTS[stage]


def test_the_settings_hash_counts_arrays_by_content() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert section_hash(a, {"k": 1}) == section_hash(a.copy(), {"k": 1})
    assert section_hash(a) != section_hash(a.reshape(4, 3))
    assert section_hash(a) != section_hash(a.astype(np.float64))
    changed = a.copy()
    changed[0, 0] = -1
    assert section_hash(a) != section_hash(changed)
    assert section_hash({"seed": np.int64(3)}) == section_hash({"seed": "3"})  # scalars as before: str
