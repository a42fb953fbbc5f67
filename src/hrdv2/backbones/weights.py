"""Getting weights into a backbone: official download (cached, checksummed), local files, or
random initialisation for tests. Never silently substitutes one for another."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from hrdv2.backbones.registry import BackboneSpec
from hrdv2.checkpoints import load_checkpoint
from hrdv2.errors import WeightsUnavailableError

RANDOM = "random"


def how_to_supply(spec: BackboneSpec) -> str:
    if spec.manual:  # licensed weights: never downloaded automatically
        return (f"To use {spec.name}, download {spec.manual} and pass the file with --weights PATH (Python: "
                "weights=PATH). Without weights, use classical features (--features classical), which need none;"
                " --weights random builds the untrained architecture (for testing only).")
    where = spec.url or f"timm/Hugging Face hub model {spec.timm_name!r}"
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return (
        f"To use {spec.name}: on a machine with internet, download {where}"
        + (f" and pass it with --weights /path/to/{spec.filename} (Python: weights=PATH), or put it in {cache}/."
           if spec.url else ", then pass the saved file with --weights PATH.")
        + " Without weights, use classical features (--features classical), which need none;"
        " --weights random builds the untrained architecture (for testing only)."
    )


def _unwrap(state: dict, path: Path) -> dict[str, torch.Tensor]:
    """Accept the usual checkpoint containers: raw state dict, {'model': ...}, {'state_dict': ...},
    DINO training checkpoints ({'teacher': ...} with 'backbone.' / 'module.' prefixes)."""
    for key in ("teacher", "model", "state_dict", "model_state"):
        if key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailableError(f"{path}: not a state dict of tensors (found keys {list(state)[:5]}).")
    for prefix in ("module.", "backbone."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.startswith(("head.", "dino_head."))}


def read_checkpoint(path: str | os.PathLike, spec: BackboneSpec, expected_sha256: str | None = None) -> dict:
    """Load a local checkpoint (.pth/.pt with weights_only, or .safetensors) and check its digest.

    The digest is checked against ``expected_sha256`` if given, else against the published one
    when the file carries the official file name (it claims to be the official release).
    """
    path = Path(path)
    expected = expected_sha256 or (spec.sha256 if spec.filename and path.name == spec.filename else None)
    state = load_checkpoint(path, f"{spec.name} weights", how_to_supply(spec), sha256=expected)
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"{path}: expected a state dict, found {type(state).__name__}.")
    return _unwrap(state, path)


def download_checkpoint(spec: BackboneSpec) -> dict:
    """The official checkpoint through torch.hub's download cache, checksummed when published."""
    assert spec.url is not None
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    target = cache / spec.filename
    if not target.exists():
        try:
            cache.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(spec.url, str(target), progress=True)
        except Exception as exc:  # URLError, HTTPError, socket errors...
            raise WeightsUnavailableError(
                f"could not download pretrained weights for {spec.name} from {spec.url} ({exc}). {how_to_supply(spec)}"
            ) from exc
    return read_checkpoint(target, spec, spec.sha256)


def _has_q_bias(model: torch.nn.Module, path: str) -> bool:
    try:
        return getattr(model.get_submodule(path), "q_bias", None) is not None
    except AttributeError:  # a block the model does not have: reported as an unexpected key later
        return True


def _official_dinov3_biases(state: dict, model: torch.nn.Module, source: str) -> dict:
    """The official DINOv3 layout stores one fused ``attn.qkv.bias`` (its key third masked to zero).
    timm's DINOv3 models without q/v biases have no place for it: accept it only when it is all
    zero (as in the distilled releases) and drop it, so nothing is silently lost."""
    if "storage_tokens" not in state:
        return state
    out = {}
    for k, v in state.items():
        if k.endswith("attn.qkv.bias") and not _has_q_bias(model, k[: -len(".qkv.bias")]):
            q, _, val = v.chunk(3, dim=-1)
            if q.abs().max() > 0 or val.abs().max() > 0:
                raise WeightsUnavailableError(
                    f"{source} has non-zero query/value biases ({k}) that this timm architecture has no place for; "
                    "use the '_qkvb' variant of the model, e.g. timm:vit_small_patch16_dinov3_qkvb.")
            continue
        out[k] = v
    return out


def _filter_for(model: torch.nn.Module):
    """timm's own checkpoint converter for the model's family (official layouts -> timm layout)."""
    kind = type(model).__name__
    if kind == "Eva":
        from timm.models.eva import checkpoint_filter_fn
    elif kind == "VisionTransformerSAM":
        from timm.models.vision_transformer_sam import checkpoint_filter_fn
    else:
        from timm.models.vision_transformer import checkpoint_filter_fn
    return checkpoint_filter_fn


def load_into(model: torch.nn.Module, state: dict, spec: BackboneSpec, source: str) -> None:
    """Convert (official DINO/DINOv2/DINOv3/SAM layouts via timm's filters) and load strictly, with
    a clear message on missing keys or shape mismatches."""
    state = _official_dinov3_biases(state, model, source)
    try:
        state = _filter_for(model)(state, model)
    except Exception as exc:
        raise WeightsUnavailableError(f"{source}: cannot be converted for {spec.name} ({exc}).") from exc
    own = model.state_dict()
    wrong = [
        f"{k}: file {tuple(v.shape)} vs {spec.name} {tuple(own[k].shape)}"
        for k, v in state.items() if k in own and own[k].shape != v.shape
    ]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if wrong or missing or unexpected:
        detail = "; ".join(
            part for part in (
                f"{len(wrong)} shape mismatches, e.g. {wrong[:2]}" if wrong else "",
                f"{len(missing)} missing keys, e.g. {missing[:3]}" if missing else "",
                f"{len(unexpected)} unexpected keys, e.g. {unexpected[:3]}" if unexpected else "",
            ) if part
        )
        raise WeightsUnavailableError(
            f"{source} does not fit {spec.name}: {detail}. Is it a checkpoint of a different model size?"
        )
    model.load_state_dict(state, strict=True)
