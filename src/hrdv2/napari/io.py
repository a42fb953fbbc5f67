"""npe2 reader, writer and sample data of the hrdv2 napari plugin.

The reader opens the OME-Zarr outputs of ``hrdv2 apply --format ome-zarr`` (labels with their
mode pyramid as a multiscale Labels layer; ``--proba`` outputs as an image per class) lazily,
level by level; the writer saves a Labels layer as a PNG (2-D) or multi-page TIFF, atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from hrdv2.errors import ConfigError, ImageReadError

LayerData = tuple[Any, dict, str]


def _multiscales(path: Path) -> tuple[Any, dict] | None:
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception:  # not a zarr group: another reader's file
        return None
    attrs = dict(group.attrs)
    ms = (attrs.get("ome") or {}).get("multiscales") or attrs.get("multiscales")
    return (group, ms[0]) if ms else None


def get_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """npe2 reader hook: a reader for OME-Zarr folders, or None so napari asks other plugins."""
    if isinstance(path, list):
        return None if len(path) != 1 else get_reader(path[0])
    p = Path(path)
    if not p.is_dir() or _multiscales(p) is None:
        return None
    return read_ome_zarr


def read_ome_zarr(path: str | list[str]) -> list[LayerData]:
    """Every pyramid level, lazily (zarr arrays): a Labels layer for label maps (the pyramid's
    type is "mode", as hrdv2 writes labels), an Image layer (one per channel) otherwise."""
    p = Path(path[0] if isinstance(path, list) else path)
    found = _multiscales(p)
    if found is None:
        raise ImageReadError(f"{p}: not an OME-Zarr image (no multiscales metadata).")
    group, meta = found
    levels = [group[d["path"]] for d in meta["datasets"]]
    axes = [a["name"] if isinstance(a, dict) else str(a) for a in meta.get("axes", [])]
    scale = next((t["scale"] for t in meta["datasets"][0].get("coordinateTransformations", [])
                  if t.get("type") == "scale"), None)
    name = meta.get("name") or p.name.split(".")[0]
    kwargs: dict[str, Any] = {"name": name, "multiscale": len(levels) > 1}
    data: Any = levels if len(levels) > 1 else levels[0]
    is_labels = meta.get("type") == "mode" or name.endswith("_labels")
    if "c" in axes and not is_labels:
        kwargs["channel_axis"] = axes.index("c")
        if scale is not None:
            scale = [s for i, s in enumerate(scale) if i != axes.index("c")]
    if scale is not None:
        kwargs["scale"] = list(scale)
    return [(data, kwargs, "labels" if is_labels else "image")]


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 writer: a Labels layer as PNG (2-D, uint8/uint16) or TIFF (any, stacks as pages)."""
    from hrdv2.io import write_image

    arr = np.asarray(data[0] if meta.get("multiscale") else data)
    if arr.dtype.kind not in "ui" or (arr.size and arr.min() < 0):
        raise ConfigError(f"{path}: labels must be non-negative integers, got {arr.dtype}.")
    top = int(arr.max()) if arr.size else 0
    arr = arr.astype(np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32)
    suffix = Path(path).suffix.lower()
    if suffix == ".png" and arr.ndim != 2:
        raise ConfigError(f"{path}: PNG holds one 2-D label map, this layer is {arr.shape}; save it as .tif.")
    if suffix == ".png" and arr.dtype == np.uint32:
        raise ConfigError(f"{path}: label ids above 65535 do not fit a PNG; save it as .tif.")
    write_image(path, arr, pages=arr.ndim == 3)
    return [str(path)]


def sample_ihc() -> list[LayerData]:
    """scikit-image's immunohistochemistry micrograph (RGB, 512x512; bundled, no download)."""
    from skimage import data

    return [(data.immunohistochemistry(), {"name": "immunohistochemistry (scikit-image)", "rgb": True}, "image")]


def sample_cell() -> list[LayerData]:
    """scikit-image's phase-contrast cell micrograph (grey; bundled, no download)."""
    from skimage import data

    return [(data.cell(), {"name": "cell (scikit-image)"}, "image")]
