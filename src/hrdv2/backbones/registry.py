"""Names of the supported backbones and where their official weights live.

A name maps to a timm architecture plus the URL of the official checkpoint (facebookresearch
DINO / DINOv2 releases on dl.fbaipublicfiles.com) and, where it is published, its sha256.
DINOv3 weights are released under a licence each user accepts, so they are never downloaded
here: the spec says where to get them, and a local file is loaded (official .pth or timm /
Hugging Face safetensors). Any other supported timm ViT (VisionTransformer, Eva, SAM) is
available as ``timm:<timm model name>`` (weights via timm's own Hugging Face hub download).
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
    manual: str | None = None  # where to get weights that cannot be downloaded automatically (licence)

    @property
    def filename(self) -> str | None:
        return self.url.rsplit("/", 1)[-1] if self.url else None


def _dinov2(size: str, timm_size: str, reg: bool, sha256: str | None = None) -> BackboneSpec:
    base = f"dinov2_vit{size}14"
    name = base + ("_reg" if reg else "")
    timm_name = f"vit_{timm_size}_patch14_{'reg4_' if reg else ''}dinov2"
    url = (_DINOV2_REG if reg else _DINOV2).format(n=base)
    return BackboneSpec(name, timm_name, url, sha256, "dinov2")


_DINOV3_FILES = {  # official release file names (facebookresearch/dinov3 README)
    "s": "dinov3_vits16_pretrain_lvd1689m-08c60483.pth",
    "splus": "dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth",
    "b": "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth",
    "l": "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth",
}


def _dinov3(size: str, timm_size: str, name: str) -> BackboneSpec:
    timm_name = f"vit_{timm_size}_patch16_dinov3"
    manual = (f"the official {_DINOV3_FILES[size]} (request access under the DINOv3 licence at "
              "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/) or timm's "
              f"model.safetensors from https://huggingface.co/timm/{timm_name}.lvd1689m")
    return BackboneSpec(name, timm_name, family="dinov3", manual=manual)


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
        _dinov3("s", "small", "dinov3_vits16"),
        _dinov3("splus", "small_plus", "dinov3_vits16plus"),
        _dinov3("b", "base", "dinov3_vitb16"),
        _dinov3("l", "large", "dinov3_vitl16"),
    ]
}

TIMM_PREFIX = "timm:"


def list_backbones() -> list[str]:
    """The named backbones; any timm ViT is also accepted as ``timm:<name>``."""
    return sorted(REGISTRY)


# timm modules whose models hrdv2 can run (see hrdv2.backbones.vit.FAMILIES for the classes)
TIMM_MODULES = ("timm.models.vision_transformer", "timm.models.eva", "timm.models.vision_transformer_sam")
SUPPORTED_TEXT = ("named backbones ({names}); any timm VisionTransformer (vit_*, deit*), Eva (eva02_*, "
                  "vit_*_dinov3, vit_*_rope_*) or SAM encoder (samvit_*) as 'timm:<name>'")


def timm_module(arch: str) -> str | None:
    """The timm module defining architecture ``arch``, or None if timm does not know it."""
    import timm

    if not timm.is_model(arch):
        return None
    return timm.models.model_entrypoint(arch).__module__


def resolve(name: str) -> BackboneSpec:
    """The spec for ``name``; ``timm:<model>`` (or a bare timm name) builds a spec on the fly.

    Anything else is refused in one line that lists what is supported."""
    if name in REGISTRY:
        return REGISTRY[name]
    timm_name = name[len(TIMM_PREFIX):] if name.startswith(TIMM_PREFIX) else name
    arch = timm_name.split(".")[0]
    module = timm_module(arch) if arch else None
    supported = SUPPORTED_TEXT.format(names=", ".join(list_backbones()))
    if module in TIMM_MODULES:
        family = "sam" if module.endswith("_sam") else "timm"
        return BackboneSpec(name, timm_name, family=family)
    if module is not None:
        raise ConfigError(f"backbone {name!r} is a timm {module.rsplit('.', 1)[-1]} model, not a ViT hrdv2 can run. "
                          f"Supported: {supported}.")
    import difflib

    close = difflib.get_close_matches(name, list_backbones(), n=1, cutoff=0.0)
    raise ConfigError(f"unknown backbone {name!r} (did you mean {close[0]!r}?). Supported: {supported}.")
