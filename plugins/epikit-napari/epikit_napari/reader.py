"""Open an epikit run folder in napari: a field's image, its nuclei and their explanation maps.

``napari RUN`` opens the first input field of the run; ``napari RUN/masks/<condition>/<name>.tif``
opens that field. Layers, in physical units (µm) when the run knows the pixel size:

* the field's channels (one image layer each, additive blending), read the way the run read
  them (scene, Z projection, per-channel files);
* the label mask, with the field's rows of ``cells.parquet`` (features, fold, prediction,
  probability) as label ``features`` (column ``index`` holds the label);
* for every view in ``maps.zarr`` and every class its maps explain, the maps placed back on
  their nuclei (:func:`epikit.nuclei.placement.place_maps`; NaN where a nucleus has no map
  for that class), named ``<image> <explainer> evidence for <class> (<view>)``.

:func:`layer_data` returns napari's ``LayerData`` tuples ``(data, kwargs, layer_type)``, so it
needs neither napari nor a display (the tests check it that way).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

LayerData = tuple[Any, dict[str, Any], str]
MANIFEST = "manifest.json"
MASKS = "masks"


def run_folder_of(path: str | Path) -> tuple[Path, str | None] | None:
    """``(run folder, image id or None)`` for a run folder or a mask file inside one; None otherwise."""
    path = Path(path)
    if path.is_dir():
        return (path, None) if (path / MANIFEST).is_file() else None
    for parent in path.parents:
        if parent.name == MASKS and (parent.parent / MANIFEST).is_file() and path.suffix.lower() in (".tif", ".tiff"):
            return parent.parent, path.relative_to(parent).with_suffix("").as_posix()
    return None


def napari_get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """npe2 reader hook: a reader when ``path`` is an epikit run folder (or one of its masks)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    return read_run if run_folder_of(path) is not None else None


def read_run(path: str | list[str]) -> list[LayerData]:
    """The layers of the field ``path`` points at (see the module docstring)."""
    if isinstance(path, list):
        path = path[0]
    found = run_folder_of(path)
    if found is None:
        raise ValueError(f"{path}: not an epikit run folder (no {MANIFEST}) nor a mask inside one")
    return layer_data(*found)


def _cell_features(cells: Any, image_id: str) -> Any:
    """The image's rows of cells.parquet, numeric and text columns, ``index`` = label first."""
    rows = cells[cells["image_id"] == image_id]
    columns = [c for c in rows.columns if c not in ("image_id", "path", "label")]
    table = rows[columns].reset_index(drop=True)
    table.insert(0, "index", rows["label"].to_numpy())
    return table


def _map_layers(run: Any, image_id: str, labels: np.ndarray, scale: tuple[float, float]) -> list[LayerData]:
    from epikit.errors import EpikitError
    from epikit.nuclei.crops import CropSettings
    from epikit.nuclei.placement import place_maps

    crops = run.crops
    if crops is None or not (run.path / "maps.zarr").exists():
        return []
    attrs = crops.attrs
    settings = CropSettings(crop_size=int(attrs["crop_size"]), keep_context=bool(attrs.get("keep_context")),
                            scale=str(attrs.get("scale_mode", "fit")), align=str(attrs.get("align", "none")))
    try:
        map_sets = run.map_sets
    except EpikitError:  # e.g. maps of models retrained since: nothing trustworthy to show
        return []
    layers = []
    prefix = f"{image_id}#"
    for stored in map_sets:
        explainer = stored.attrs.get("explainer", "map")
        classes = [str(c) for c in stored.attrs.get("classes") or []]
        rows = [i for i, cell in enumerate(stored.cell_ids) if cell.startswith(prefix)]
        # One layer per explained class: under the contrast policy a reference nucleus has a
        # map for every other condition, and each belongs with that condition's layer.
        for target in sorted({int(stored.target[i]) for i in rows}):
            maps = {int(stored.cell_ids[i].rsplit("#", 1)[1]): stored.maps[i] for i in rows
                    if int(stored.target[i]) == target}
            name = classes[target] if 0 <= target < len(classes) else f"class {target}"
            layers.append((place_maps(labels, maps, settings),
                           {"name": f"{image_id} {explainer} evidence for {name} ({stored.view})",
                            "colormap": "inferno", "blending": "additive", "opacity": 0.7,
                            "contrast_limits": [0.0, 1.0], "scale": scale}, "image"))
    return layers


def layer_data(run_dir: str | Path, image_id: str | None = None) -> list[LayerData]:
    """napari ``LayerData`` of one field of a run: image channels, labels with cell features, maps."""
    from epikit.io import read_labels, read_record
    from epikit.runfolder.reader import RunFolder

    run = RunFolder(run_dir)
    inputs = [i for i in run.manifest.get("inputs") or [] if isinstance(i, dict) and "image_id" in i]
    if image_id is None:
        if not inputs:
            raise ValueError(f"{run_dir}: the manifest lists no inputs")
        image_id = str(inputs[0]["image_id"])
    record = run.input_record(image_id)
    if record is None:
        raise ValueError(f"{run_dir}: no input {image_id!r} in the manifest")
    size = record.pixel_size_um or 1.0
    scale = (size, size)
    image = read_record(record)
    layers: list[LayerData] = [(image.array, {
        "channel_axis": 0, "name": [f"{image_id} {c}" for c in image.channel_names],
        "blending": "additive", "scale": scale}, "image")]
    mask = run.mask_file(image_id)
    if mask.is_file():
        labels = read_labels(mask)
        kwargs: dict[str, Any] = {"name": f"{image_id} nuclei", "scale": scale, "opacity": 0.4}
        if run.cells is not None:
            kwargs["features"] = _cell_features(run.cells, image_id)
        layers.append((labels, kwargs, "labels"))
        layers += _map_layers(run, image_id, labels, scale)
    return layers
