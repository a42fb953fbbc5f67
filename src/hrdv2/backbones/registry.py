"""Names of the supported backbones and where their official weights live.

A name maps to a timm architecture plus the URL of the official checkpoint (facebookresearch
DINO / DINOv2 releases on dl.fbaipublicfiles.com) and, where it is published, its sha256.
Any other timm ViT is available as ``timm:<timm model name>`` (weights via timm's own
Hugging Face hub download and cache).
"""

from __future__ import annotations

from dataclasses import dataclass

from hrdv2.errors import ConfigError

_DINOV2 = "https://dl.fbaipublicfiles.com/dinov2/{n}/{n}_pretrain.pth"
_DINOV2_REG = "https://dl.fbaipublicfiles.com/dinov2/{n}/{n}_reg4_pretrain.pth"
_DINO = "https://dl.fbaipublicfiles.com/dino/{d}/{d}_pretrain.pth"


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    timm_name: str  # architecture, built with pretrained=False and filled from ``url`` or a local file
    url: str | None = None  # official checkpoint; None -> timm's own pretrained download
    sha256: str | None = None  # published digest of the file at ``url``, when known
    family: str = "timm"

    @property
    def filename(self) -> str | None:
        return self.url.rsplit("/", 1)[-1] if self.url else None


def _dinov2(size: str, timm_size: str, reg: bool, sha256: str | None = None) -> BackboneSpec:
    base = f"dinov2_vit{size}14"
    name = base + ("_reg" if reg else "")
    timm_name = f"vit_{timm_size}_patch14_{'reg4_' if reg else ''}dinov2"
    url = (_DINOV2_REG if reg else _DINOV2).format(n=base)
    return BackboneSpec(name, timm_name, url, sha256, "dinov2")


REGISTRY: dict[str, BackboneSpec] = {
    s.name: s
    for s in [
        # sha256 of dinov2_vits14_pretrain.pth as published for the official release
        _dinov2("s", "small", False, "b938bf1bc15cd2ec0feacfe3a1bb553fe8ea9ca46a7e1d8d00217f29aef60cd9"),
        _dinov2("b", "base", False),
        _dinov2("l", "large", False),
        _dinov2("g", "giant", False),
        _dinov2("s", "small", True),
        _dinov2("b", "base", True),
        _dinov2("l", "large", True),
        _dinov2("g", "giant", True),
        BackboneSpec("dino_vits8", "vit_small_patch8_224", _DINO.format(d="dino_deitsmall8"), family="dino"),
        BackboneSpec("dino_vits16", "vit_small_patch16_224", _DINO.format(d="dino_deitsmall16"), family="dino"),
        BackboneSpec("dino_vitb8", "vit_base_patch8_224", _DINO.format(d="dino_vitbase8"), family="dino"),
        BackboneSpec("dino_vitb16", "vit_base_patch16_224", _DINO.format(d="dino_vitbase16"), family="dino"),
    ]
}

TIMM_PREFIX = "timm:"


def list_backbones() -> list[str]:
    """The named backbones; any timm ViT is also accepted as ``timm:<name>``."""
    return sorted(REGISTRY)


def resolve(name: str) -> BackboneSpec:
    """The spec for ``name``; ``timm:<model>`` (or a bare timm ViT name) builds a spec on the fly."""
    if name in REGISTRY:
        return REGISTRY[name]
    timm_name = name[len(TIMM_PREFIX):] if name.startswith(TIMM_PREFIX) else name
    import timm

    arch = timm_name.split(".")[0]
    if arch in timm.list_models() and arch.startswith(("vit_", "deit", "eva", "beit")):
        return BackboneSpec(name, timm_name)
    close = [n for n in list_backbones() if n.split("_")[0] in name] or list_backbones()[:4]
    raise ConfigError(
        f"unknown backbone {name!r}. Known: {', '.join(list_backbones())}; or any timm ViT as "
        f"'timm:<name>' (see timm.list_models('vit_*')). Did you mean {close[0]!r}?"
    )
