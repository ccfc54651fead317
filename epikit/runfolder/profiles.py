"""Radial profiles in a run folder: ``profiles.parquet`` (per cell) and ``profile_curves.csv`` (per condition).

``profiles.parquet`` is tidy, one row per cell, quantity and bin:

=============  ===============================================================================
column         meaning
=============  ===============================================================================
cell_id        the cell (as in ``cells.parquet``), with ``image_id``, ``condition``, ``group``
source         ``image`` (a channel's intensity) or ``map`` (an explanation map)
explainer      the map's explainer (empty for ``image``)
channel        the channel name, or the map's view
scale          ``relative`` (0 = outline, 1 = centre) or ``um`` (micrometres from the outline)
bin            bin number from the outline inwards; ``start``, ``stop``: its edges
value          mean in the bin over the nucleus mean (1 = the nucleus average; NaN: empty bin)
=============  ===============================================================================

Strings are stored dictionary-encoded, rows in row groups, so large runs stay compact.
``profile_curves.csv`` holds the same key columns plus ``curve`` (a condition, or
``<condition> - <reference>``), ``kind`` (``condition`` / ``difference``), ``value`` (the
curve), ``low`` / ``high`` (its 95% simultaneous band), ``n_units`` and ``significant`` (bin
inside an interval with p < 0.05). :func:`profiles` reads either, or the per-image means.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from epikit.errors import ConfigError, DataError
from epikit.io.store import write_csv, write_parquet
from epikit.runfolder.layout import PROFILE_CURVES, PROFILES

#: Columns that name one profiled quantity (``target``: the class a map explains, "" for images).
QUANTITY: tuple[str, ...] = ("source", "explainer", "channel", "target", "scale")
CELL_COLUMNS: tuple[str, ...] = ("cell_id", "image_id", "condition", "group", *QUANTITY,
                                 "bin", "start", "stop", "value")
LEVELS: tuple[str, ...] = ("cell", "image", "condition")


def write_cell_profiles(run_dir: str | Path, table: pd.DataFrame) -> Path:
    """Write ``profiles.parquet`` atomically (columns :data:`CELL_COLUMNS`, strings as categories)."""
    table = table[list(CELL_COLUMNS)].copy()
    for column in ("cell_id", "image_id", "condition", "group", *QUANTITY):
        table[column] = table[column].astype(str).astype("category")
    table["value"] = table["value"].astype("float32")
    return write_parquet(table, Path(run_dir) / PROFILES)


def write_profile_curves(run_dir: str | Path, curves: pd.DataFrame) -> Path:
    """Write ``profile_curves.csv`` atomically."""
    return write_csv(curves, Path(run_dir) / PROFILE_CURVES)


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: not found; run `epikit biomarkers` on this run folder first")
    if path.suffix == ".csv":
        table = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"explainer": str})
        return table.assign(explainer=table["explainer"].fillna(""))
    table = pd.read_parquet(path)
    for column in table.columns:
        if isinstance(table[column].dtype, pd.CategoricalDtype):
            table[column] = table[column].astype(str)
    return table


def profiles(run_dir: str | Path, level: str = "cell") -> pd.DataFrame:
    """The radial profiles of a run as a tidy DataFrame.

    ``level="cell"``: ``profiles.parquet`` as stored (one row per cell, quantity and bin);
    ``"image"``: the mean over each image's cells (the statistical unit), column
    ``n_cells``; ``"condition"``: ``profile_curves.csv``, the per-condition curves and the
    difference curves with their 95% bands. Example::

        import epikit
        curves = epikit.profiles("run", level="condition")
        h3 = curves[(curves.channel == "H3K27ac") & (curves.scale == "relative")]
    """
    if level not in LEVELS:
        raise ConfigError(f"profile level {level!r} is not one of: {', '.join(LEVELS)}")
    run_dir = Path(run_dir)
    if level == "condition":
        return _read(run_dir / PROFILE_CURVES)
    table = _read(run_dir / PROFILES)
    if level == "cell":
        return table
    keys = ["image_id", "condition", "group", *QUANTITY, "bin", "start", "stop"]
    grouped = table.groupby(keys, sort=True, observed=True)["value"]
    return grouped.mean().to_frame("value").assign(n_cells=grouped.count()).reset_index()
