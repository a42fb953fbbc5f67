"""The named settings (``paper``, ``published``, ``fast``) of each workflow: the one table.

Keys are the CLI commands' parameter names (as ``--config`` files use them), so the CLI applies
a preset as option defaults (``hrdv2.cli.presets``); the Python API reads the same table through
``extraction_settings`` (``hrdv2.unsupervised.PRESETS``). No torch, no click: the classical
``train`` path imports this.

* ``paper``: the HR-Dv2 paper's setting. train / features: DINOv2-S/14 with registers, stride 4,
  shifts 1,2 Moore, flips (68 passes). unsupervised: its experiments' ``vanilla_dv2`` setting
  (experiments/exprs.json of tldr-group/HR-Dv2): the same features, "o" attention, PCA 128,
  k = 80, merge factor 1.0, CRF on.
* ``published``: ``paper`` in the published code's geometry and flip set (docs/geometry.md).
* ``fast``: one ViT pass at stride P (unsupervised: stride 14 on a copy of at most 224 px).
"""

from __future__ import annotations

from typing import Any

from hrdv2.errors import ConfigError

_PAPER_FEATURES = {"backbone": "dinov2_vits14_reg", "stride": 4, "shift_text": "1,2", "pattern": "moore",
                   "flips": True}
_PUBLISHED = {"geometry": "published", "flip_set": "published"}
_PAPER_UNSUPERVISED = {  # unsupervised shifts are always Moore
    "backbone": "dinov2_vits14_reg", "stride": 4, "shift_text": "1,2", "flips": True, "max_side": 0,
    "attention_kind": "o", "pca": 128, "k": 80, "merge_factor": 1.0, "crf": True,
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "features": {
        "paper": dict(_PAPER_FEATURES),
        "published": {**_PAPER_FEATURES, **_PUBLISHED},
        "fast": {"stride": None, "shift_text": "", "flips": False, "rotations": False},
    },
    "train": {
        "paper": {"kind": "deep", **_PAPER_FEATURES},
        "published": {"kind": "deep", **_PAPER_FEATURES, **_PUBLISHED},
        "fast": {"kind": "deep", "stride": None, "shift_text": "", "flips": False, "rotations": False},
    },
    "unsupervised": {
        "paper": {**_PAPER_UNSUPERVISED},
        "published": {**_PAPER_UNSUPERVISED, **_PUBLISHED},
        "fast": {"stride": 14, "shift_text": "", "flips": False, "max_side": 224},
    },
}


def parse_shifts(text: str) -> tuple[int, ...]:
    """'1,2' -> (1, 2); '' -> ()."""
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"shifts {text!r} must be comma-separated integers, e.g. '1,2' (or '' for none).") from None


def extraction_settings(name: str) -> dict[str, Any]:
    """The unsupervised feature-extraction settings of preset ``name`` in the library's terms:
    ``stride``, ``shifts`` (tuple), ``flips``, ``max_side`` (None: full size)."""
    table = PRESETS["unsupervised"]
    if name not in table:
        raise ConfigError(f"unsupervised preset {name!r} is unknown; choose one of {list(table)}.")
    values = table[name]
    return {"stride": values["stride"], "shifts": parse_shifts(values["shift_text"]), "flips": values["flips"],
            "max_side": values["max_side"] or None}
