"""``--preset NAME``: named sets of option values per workflow, and the time estimate shown
before long runs.

A preset's values act as defaults: an option given on the command line wins, then a value from
``--config FILE``, then the preset, then the option's own default. (They are applied after
parsing, from click's record of where each value came from, because the default preset depends
on ``--device``, which may itself come from the command line or a config file.)

The table itself is ``hrdv2.presets.PRESETS`` (keys are the commands' parameter names, as
``--config`` files use them):

* ``paper``: the HR-Dv2 paper's setting for the workflow, in hrdv2's exact geometry.
  train / features: DINOv2-S/14 with registers, stride 4, shifts 1,2 Moore, flips (68 passes).
  unsupervised: its experiments' ``vanilla_dv2`` setting (experiments/exprs.json of
  tldr-group/HR-Dv2): the same features, "o" attention, PCA 128, k = 80, merge factor 1.0, CRF on.
* ``published``: ``paper`` in the published code's geometry and flip set
  (``--geometry published --flip-set published``, docs/geometry.md), to reproduce its numbers.
* ``fast``: one ViT pass at stride P (unsupervised: on a copy of at most 224 px), seconds on a CPU.
* ``auto`` (the default where a command has one): ``paper`` on a GPU, ``fast`` on a CPU.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import click
from click.core import ParameterSource

from hrdv2.errors import ConfigError
from hrdv2.presets import PRESETS

# train options that apply to one feature kind only ("deep:--flag" / "classical:--flag"); hybrid takes all
TRAIN_OPTION_KINDS = {
    "backbone": "deep:--backbone", "weights": "deep:--weights", "stride": "deep:--stride", "shift_text": "deep:--shifts",
    "pattern": "deep:--pattern", "flips": "deep:--flips", "rotations": "deep:--rotations", "dtype": "deep:--dtype",
    "batch_size": "deep:--batch-size", "geometry": "deep:--geometry", "flip_set": "deep:--flip-set",
    "pca_components": "deep:--pca", "sigmas": "classical:--sigmas", "filters": "classical:--filters",
    "planes": "deep:--planes",  # --volume / --spacing apply to classical and deep features alike
}
AUTO = "auto"
WARN_SECONDS = 60.0  # runs estimated longer than this get the estimate and how to go faster
WARN_ENV = "HRDV2_WARN_SECONDS"  # overrides WARN_SECONDS (e.g. 0 to always print the estimate)


def preset_names(workflow: str, auto: bool = False) -> list[str]:
    return ([AUTO] if auto else []) + list(PRESETS[workflow])


def resolve_preset(workflow: str, name: str | None, device: str | None) -> str | None:
    """The preset to use: ``auto`` becomes ``paper`` on a GPU and ``fast`` on a CPU."""
    if name is None:
        return None
    if name == AUTO:
        return "paper" if _is_accelerator(device) else "fast"
    if name not in PRESETS[workflow]:
        raise ConfigError(f"preset {name!r} is unknown for `hrdv2 {workflow}`; choose one of "
                          f"{preset_names(workflow)}.")
    return name


def _is_accelerator(device: str | None) -> bool:
    if not device:
        return False
    if device == "auto":
        from hrdv2.device import resolve_device

        return resolve_device(device).type != "cpu"
    return device.split(":")[0] in ("cuda", "mps")


def apply_preset(ctx: click.Context | None, workflow: str, kw: dict[str, Any], preset_key: str = "preset",
                 device_key: str = "device") -> str | None:
    """Fill ``kw`` from the chosen preset where the value is still the option's own default (not from
    the command line, the environment or a config file); returns the resolved preset name and
    stores it in ``kw[preset_key]``."""
    name = resolve_preset(workflow, kw.get(preset_key), kw.get(device_key))
    kw[preset_key] = name
    if name is None:
        return None
    for key, value in PRESETS[workflow][name].items():
        if key not in kw:
            raise ConfigError(f"preset {name!r} sets {key!r}, which `hrdv2 {workflow}` does not have (a bug in hrdv2).")
        if ctx is None or ctx.get_parameter_source(key) in (ParameterSource.DEFAULT, None):
            kw[key] = value
    return name


def explicitly_set(ctx: click.Context | None, name: str) -> bool:
    """Whether parameter ``name`` was given on the command line, by the environment or a config file."""
    if ctx is None:
        return False
    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)


def resolve_flip_set(ctx: click.Context | None, flips: bool, flip_set: str) -> bool:
    """Flips on or off: ``--flip-set published`` implies flips, and contradicts an explicit --no-flips."""
    if flip_set == "hrdv2" or flips:
        return flips
    if explicitly_set(ctx, "flips"):
        raise ConfigError("--flip-set published chooses which flips to average over, but --no-flips turns flips off; "
                          "drop one of them.")
    return True


def describe_features(preset: str | None, config: Any, n_transforms: int) -> str:
    """One line naming the preset and the deep-feature settings it (and the options) produced."""
    shifts = ",".join(map(str, config.shifts)) or "none"
    flips = f"flips ({config.flip_set})" if config.flips else "no flips"
    stride = config.stride if config.stride is not None else "P"
    extra = ", rotations" if config.rotations else ""
    return (f"{'preset ' + preset if preset else 'settings'}: {config.backbone}, stride {stride}, shifts {shifts} "
            f"{config.pattern}, {flips}{extra}, geometry {config.geometry} ({n_transforms} transforms)")


def refuse_inapplicable(ctx: click.Context | None, kind: str, kw: dict[str, Any], flags: dict[str, str]) -> None:
    """One-line error for options given explicitly that feature kind ``kind`` would ignore.

    ``flags``: parameter name -> its flag, for the parameters that apply only to deep features
    (value "deep:--flag") or only to classical ones ("classical:--flag")."""
    for name, spec in flags.items():
        needs, flag = spec.split(":", 1)
        applies = kind == "hybrid" or kind == needs
        if not applies and name in kw and explicitly_set(ctx, name):
            param = next((p for p in ctx.command.params if p.name == name), None) if ctx else None
            if param is not None and kw[name] == param.default:
                continue  # e.g. a config file restating the default: nothing would be ignored
            raise ConfigError(f"{flag} applies to {needs} features, but --features {kind} was chosen: it would be "
                              f"ignored. Drop {flag}, or use --features {needs} or hybrid.")


# --------------------------------------------------------------------------- time estimates

def warn_seconds() -> float:
    """The threshold above which the estimate is printed (``HRDV2_WARN_SECONDS`` overrides it)."""
    text = os.environ.get(WARN_ENV)
    if not text:
        return WARN_SECONDS
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{WARN_ENV}={text!r} is not a number of seconds.") from None


class TimeEstimate:
    """Seconds to featurise an image with a ``HighResFeaturizer``: one timed ViT pass on a small
    image, scaled to the image's token count (per token, a block costs ~12 D^2 for its linear layers
    plus ~2 N D for attention, D = width, N = tokens) and multiplied by the number of passes."""

    PROBE_CELLS = 20  # the probe is a 20 x 20-token image at the run's stride: large enough that fixed
    # per-call costs do not dominate, small enough to take well under a second on a CPU

    def __init__(self, featurizer: Any):
        self.fz = featurizer
        self._probe: tuple[float, int] | None = None

    def _tokens(self, height: int, width: int) -> int:
        from hrdv2.upsample.geometry import make_geometry

        bb = self.fz.backbone
        gh, gw = make_geometry(getattr(self.fz, "geometry", "hrdv2"), height, width, bb.patch_size, self.fz.stride).grid
        return gh * gw

    def _time_probe(self) -> tuple[float, int]:
        """(seconds, tokens) of one ViT pass on the probe image: the fastest of two timed runs after a
        warm-up, so a busy machine inflates it less."""
        if self._probe is None:
            import torch

            bb, stride = self.fz.backbone, self.fz.stride
            side = bb.patch_size + stride * (self.PROBE_CELLS - 1)
            x = torch.zeros(1, 3, side, side, device=bb.device)
            bb.forward_patches(x, stride, with_attention=False, dtype=self.fz.dtype)  # warm-up
            best = math.inf
            for _ in range(2):
                t0 = time.perf_counter()
                bb.forward_patches(x, stride, with_attention=False, dtype=self.fz.dtype)
                if bb.device.type == "cuda":
                    torch.cuda.synchronize(bb.device)
                best = min(best, time.perf_counter() - t0)
            self._probe = (best, self.PROBE_CELLS ** 2)
        return self._probe

    def seconds(self, height: int, width: int) -> float:
        t0, n0 = self._time_probe()
        n = self._tokens(height, width)
        d = 6 * self.fz.backbone.embed_dim
        return t0 * (n / n0) * (d + n) / (d + n0) * len(self.fz.transforms)


def format_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_message(seconds: float, what: str, fz: Any, hints: str, threshold: float | None = None) -> str | None:
    """The line to print before a run estimated to take longer than ``threshold`` s (None: shorter)."""
    threshold = warn_seconds() if threshold is None else threshold
    if not math.isfinite(seconds) or seconds <= threshold:
        return None
    return (f"estimated time for {what}: about {format_seconds(seconds)} ({len(fz.transforms)} ViT passes at stride "
            f"{fz.stride} on {fz.backbone.device}). Faster: {hints}.")


def faster_hints(workflow: str, fz: Any) -> str:
    """What would make this run faster, most effective first."""
    hints = []
    if fz.backbone.device.type == "cpu":
        hints.append("a GPU (--device cuda)")
    if len(fz.transforms) > 1 or fz.stride < fz.backbone.patch_size:
        hints.append("--preset fast (one pass at stride P" + (", <= 224 px)" if workflow == "unsupervised" else ")"))
    if fz.stride < fz.backbone.patch_size:
        hints.append(f"a larger --stride (cost ~ 1/stride^2; now {fz.stride})")
    if len(fz.transforms) > 1:
        hints.append("fewer transforms (--shifts 1 or '', --no-flips)")
    if workflow == "unsupervised":
        hints.append("--max-side 448")
    return ", ".join(hints) or "smaller images"
