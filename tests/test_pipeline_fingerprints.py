"""Stage fingerprints: what re-runs when a manifest's design column (replicate, dose) is edited."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from epikit.config import STAGES, default_config, section_hash
from epikit.io.record import ImageRecord
from epikit.pipeline import stage_fingerprints


def records(dose: str, replicate: str = "r1") -> list[ImageRecord]:
    return [ImageRecord(Path(f"{c}.tif"), c, f"{c}/a", ("Hoechst",), f"{c}/a",
                        {"replicate": replicate, "dose": dose if c == "vpa" else "0"})
            for c in ("ctrl", "vpa")]


def test_an_edited_dose_or_replicate_reruns_extraction_and_later_stages_not_segmentation():
    config = default_config()
    before = stage_fingerprints(config, records("1"), ["a", "b"])
    for edited in (records("3"), records("1", replicate="r2")):
        after = stage_fingerprints(config, edited, ["a", "b"])
        assert after["segment"] == before["segment"]
        assert all(after[s] != before[s] for s in ("extract", "train", "explain", "biomarkers", "report"))
    assert stage_fingerprints(config, records("1"), ["a", "b"]) == before
    assert stage_fingerprints(config, records("1"), ["a", "c"])["segment"] != before["segment"]


def test_inputs_without_metadata_keep_the_fingerprints_of_earlier_runs():
    """Run folders made before metadata entered the fingerprints resume without re-running a stage."""
    config = default_config()
    bare = [replace(r, metadata={}) for r in records("1")]
    upstream = section_hash([(r.image_id, r.condition, r.group, list(r.channel_names), digest)
                             for r, digest in zip(bare, ["a", "b"])], config["channels"], config["seed"],
                            config["read"], [(r.z, r.pixel_size_um, r.scene) for r in bare])
    earlier = {}
    for stage in STAGES:
        earlier[stage] = upstream = section_hash(config[stage], upstream)
    assert stage_fingerprints(config, bare, ["a", "b"]) == earlier
