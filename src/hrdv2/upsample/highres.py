"""HR-Dv2: dense ViT features by averaging over invertible transforms, computed on a compressed grid.

The method (per transform t): featurise T_t(image), nearest-upsample the patch map to full
size, apply T_t^-1, and average over t. Done literally this costs T full-size (C, H, W) maps.

The fast path uses the fact that every transform here permutes pixels *separably*: after
the inverse, pixel (y, x) reads cell (r_t(y), c_t(x)) of transform t's patch grid (for quarter
turns, of the transposed grid). Rows y and y' that read the same cell in *every* transform
carry identical features, so the average only has to be formed once per distinct row
signature (r_1(y), ..., r_T(y)), and likewise for columns. For the paper's 17 Moore shifts at
stride 14 that is ~5 distinct rows per 14 px, so the accumulator is ~8x smaller than the
image; it is filled batch by batch as the ViT runs (memory bounded by ``batch_size``, not by
T) and expanded to (C, H, W) once at the end with two gathers.

Devices: every tensor on the image/feature path (input, transformed copies, accumulators,
lookups) lives on the backbone's device; only the integer planning runs on the CPU, and its
few index vectors cross once per image, not per transform. Results cross back to the CPU as
float32 once, at the end: as the compressed grid when that is less than half the full map
(the expansion then runs on the CPU), else as the expanded map.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from hrdv2.backbones import IMAGENET_MEAN, IMAGENET_STD, Backbone
from hrdv2.errors import ConfigError, ShapeError
from hrdv2.io import MIN_SIDE, to_rgb01
from hrdv2.transforms import Transform, coordinate_map, default_transforms, validate_shifts
from hrdv2.upsample.geometry import check_geometry, make_geometry
from hrdv2.upsample.result import HighResResult

ProgressCallback = Callable[[int, int], None]

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ConfigError(f"compute dtype {dtype} is not supported; use float32, bfloat16 or float16.")
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"compute dtype {dtype!r} is unknown; use one of {sorted(set(DTYPES))}.")
    return DTYPES[dtype]


def image_to_tensor(image: np.ndarray | torch.Tensor, device: str | torch.device | None = None) -> torch.Tensor:
    """ImageNet-normalised (1, 3, H, W) float32 from an (H, W) / (H, W, 3) array of any dtype, or
    from a (3, H, W) float tensor in [0, 1]. ``device``: where the result lives (default: the
    CPU for arrays, the tensor's own device for tensors); the image crosses once, before any
    arithmetic."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ShapeError(f"image tensor must be (3, H, W) in [0, 1], got {tuple(image.shape)}.")
        t = image.to(device) if device is not None else image
        t = t.float()
    else:
        arr = np.asarray(image)
        if arr.ndim == 3 and arr.shape[-1] == 4:
            arr = arr[..., :3]  # RGBA: alpha dropped, as hrdv2.io does
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
            raise ShapeError(f"image must be (H, W) grey or (H, W, 3) RGB, got shape {arr.shape}.")
        t = torch.from_numpy(to_rgb01(arr))
        t = (t.to(device) if device is not None else t).permute(2, 0, 1)
    if min(t.shape[-2:]) < MIN_SIDE:
        raise ShapeError(f"image is {t.shape[-1]}x{t.shape[-2]} px; hrdv2 needs at least {MIN_SIDE} px per side.")
    out = torch.empty((1, *t.shape), dtype=torch.float32, device=t.device)
    for c in range(3):  # per-channel Python scalars: no constant tensors to create or move
        torch.sub(t[c], IMAGENET_MEAN[c], out=out[0, c]).div_(IMAGENET_STD[c])
    return out


@dataclass
class _Plan:
    """Per-transform cell lookups on the compressed grid."""

    transform: Transform
    geometry: Any  # PatchGeometry or PublishedGeometry (hrdv2.upsample.geometry)
    transposed: bool
    rows: torch.Tensor  # (Hu,) cell row read by each distinct row class
    cols: torch.Tensor  # (Wu,) cell column read by each distinct column class

    @property
    def flat_index(self) -> torch.Tensor:
        """(Hu * Wu,) index into the flattened (gh * gw) patch grid, row-major over (Hu, Wu)."""
        gw = self.geometry.grid[1]
        if self.transposed:  # compressed (i, j) reads grid cell (cols[j], rows[i])
            return (self.cols[None, :] * gw + self.rows[:, None]).reshape(-1)
        return (self.rows[:, None] * gw + self.cols[None, :]).reshape(-1)


def _depends_only_on(m: torch.Tensor, axis: int) -> bool:
    ref = m[:, :1] if axis == 0 else m[:1, :]
    return bool(torch.equal(m, ref.expand_as(m)))


def plan_transforms(
    transforms: Sequence[Transform], height: int, width: int, patch: int, stride: int,
    device: str | torch.device | None = None, geometry: str = "hrdv2",
) -> tuple[list[_Plan], torch.Tensor, torch.Tensor]:
    """Row/column signatures of every transform and the compressed grid they define.

    Returns the plans (their cell lookups on ``device``, moved there in one copy each for rows
    and columns) and the CPU maps from image rows/columns to compressed row/column classes.
    The planning itself is small integer work with data-dependent sizes (``torch.unique``), so
    it runs on the CPU whatever the device.
    """
    row_keys, col_keys, meta = [], [], []
    for t in transforms:
        th, tw = t.output_size(height, width)
        geo = make_geometry(geometry, th, tw, patch, stride)
        ty, tx = coordinate_map(t, height, width)
        if _depends_only_on(ty, 0) and _depends_only_on(tx, 1):
            transposed, r, c = False, geo.cell_of(ty[:, 0], axis=0), geo.cell_of(tx[0, :], axis=1)
        elif _depends_only_on(ty, 1) and _depends_only_on(tx, 0):
            transposed, r, c = True, geo.cell_of(tx[:, 0], axis=1), geo.cell_of(ty[0, :], axis=0)
        else:
            raise ConfigError(f"transform {t.name} is not a separable pixel permutation; HR-Dv2 cannot use it.")
        row_keys.append(r)
        col_keys.append(c)
        meta.append((t, geo, transposed))
    row_sig, row_class = torch.unique(torch.stack(row_keys, 1), dim=0, return_inverse=True)
    col_sig, col_class = torch.unique(torch.stack(col_keys, 1), dim=0, return_inverse=True)
    if device is not None:
        row_sig, col_sig = row_sig.to(device), col_sig.to(device)
    plans = [
        _Plan(t, geo, tr, row_sig[:, i].contiguous(), col_sig[:, i].contiguous())
        for i, (t, geo, tr) in enumerate(meta)
    ]
    return plans, row_class, col_class


class HighResFeaturizer:
    """Dense (C, H, W) features and CLS attention (heads, H, W) from a frozen ViT, without training.

    backbone: from ``hrdv2.backbones.load_backbone``. stride: patch-embedding stride S
    (1 <= S <= P, default P). transforms: the set to average over (default: identity + Moore
    shifts by 1 and 2 px, 17 in all). batch_size: transformed copies per ViT call; it alone
    bounds peak memory. dtype: compute dtype (float32, bfloat16, float16); accumulation is
    always float32. Computation runs on ``backbone.device``; return_device: where results go
    (default the CPU, as float32; None keeps them on the backbone's device). geometry: "hrdv2"
    (pad so every feature sits on its own pixels) or "published" (the published HR-Dv2 code's
    unpadded grid, nearest-exact stretch and positional interpolation; docs/geometry.md).
    attention: True / "softmax" (CLS attention), "o" (CLS attention output . values, the published
    code's signal) or False. facet / layer: token (default), key, query or value of block ``layer``
    (None: the last; docs/backbones.md).
    """

    def __init__(
        self,
        backbone: Backbone,
        stride: int | None = None,
        transforms: Sequence[Transform] | None = None,
        batch_size: int = 4,
        dtype: str | torch.dtype | None = None,
        progress: bool = False,
        attention: bool | str = True,
        return_device: str | torch.device | None = "cpu",
        geometry: str = "hrdv2",
        facet: str = "token",
        layer: int | None = None,
    ):
        self.backbone = backbone
        self.geometry = check_geometry(geometry)
        self.stride = backbone.check_stride(stride)
        self.transforms = list(transforms) if transforms is not None else default_transforms()
        if not self.transforms:
            raise ConfigError("the transform set is empty; pass at least the identity.")
        validate_shifts(self.transforms, backbone.patch_size)
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
        self.batch_size = int(batch_size)
        self.dtype = parse_dtype(dtype)
        self.progress = progress
        # attention: True / "softmax" = CLS attention, "o" = the published code's o signal, False / None = none;
        # facet / layer: which features (hrdv2.backbones.facets), all checked now rather than mid-run
        self.attention_kind = ("softmax" if attention is True else attention) or None
        self.signals = backbone.signals(facet, layer, self.attention_kind)
        self.attention = self.attention_kind is not None
        self.facet, self.layer = facet, self.signals.layer
        self.return_device = None if return_device is None else torch.device(return_device)

    def __call__(self, image: np.ndarray | torch.Tensor, progress_callback: ProgressCallback | None = None,
                 project: Callable[[torch.Tensor], torch.Tensor] | None = None) -> HighResResult:
        return self.featurize(image, progress_callback, project)

    def featurize(self, image: np.ndarray | torch.Tensor, progress_callback: ProgressCallback | None = None,
                  project: Callable[[torch.Tensor], torch.Tensor] | None = None) -> HighResResult:
        """``project``: an optional per-pixel linear map (N, C) -> (N, k), e.g. a fitted PCA, applied
        to the compressed grid before expansion, so a (C, H, W) map is never materialised. It
        receives float32 rows on the backbone's device."""
        start = time.perf_counter()
        device = self.backbone.device
        x = image_to_tensor(image, device=device)
        H, W = x.shape[-2:]
        P, S = self.backbone.patch_size, self.stride
        plans, row_class, col_class = plan_transforms(self.transforms, H, W, P, S, device=device, geometry=self.geometry)
        pos_embed = None
        if self.geometry == "published":
            from hrdv2.upsample.published import published_pos_embed as pos_embed
        Hu, Wu = len(plans[0].rows), len(plans[0].cols)
        # channels-last float32 accumulators: every gather below copies contiguous C-length rows
        feats = torch.zeros(Hu, Wu, self.backbone.feature_dim(self.facet, self.layer), device=device)
        attn = torch.zeros(Hu, Wu, self.backbone.num_heads, device=device) if self.attention else None

        # batch transforms whose outputs share a shape (quarter turns of non-square images differ)
        groups: dict[tuple[int, int], list[_Plan]] = {}
        for p in plans:
            groups.setdefault((p.geometry.height, p.geometry.width), []).append(p)
        batches = [g[i: i + self.batch_size] for g in groups.values() for i in range(0, len(g), self.batch_size)]

        vit_seconds, done = 0.0, 0
        bar = tqdm(total=len(plans), desc="HR-Dv2 transforms", unit="tf", disable=not self.progress, leave=False)
        for batch in batches:
            geo = batch[0].geometry
            inputs = torch.cat([geo.pad(p.transform.forward(x)) for p in batch])
            t0 = time.perf_counter()
            grid_feats, grid_attn = self.backbone.forward_patches(inputs, S, with_attention=self.attention, dtype=self.dtype,
                                                                  facet=self.facet, layer=self.layer,
                                                                  attention_kind=self.attention_kind or "softmax",
                                                                  pos_embed=pos_embed)
            _synchronize(device)  # GPU kernels run asynchronously: time them, not their launch
            vit_seconds += time.perf_counter() - t0
            grid_feats = grid_feats.permute(0, 2, 3, 1)  # (B, gh, gw, C): the ViT's own token layout
            for i, p in enumerate(batch):
                index = p.flat_index
                _accumulate(feats, grid_feats[i], index)
                if attn is not None:
                    _accumulate(attn, grid_attn[i].permute(1, 2, 0).contiguous(), index)
            done += len(batch)
            bar.update(len(batch))
            if progress_callback is not None:
                progress_callback(done, len(plans))
        bar.close()

        n = float(len(plans))
        feats.div_(n)
        if attn is not None:
            attn.div_(n)
        if project is not None:
            feats = project(feats.view(-1, feats.shape[-1])).reshape(Hu, Wu, -1).float().contiguous()
        # all device work is queued before the first copy back, which then waits for it once
        target = device if self.return_device is None else self.return_device
        out = _expand_to(feats, row_class, col_class, target)
        out_attn = None if attn is None else _expand_to(attn, row_class, col_class, target)
        _synchronize(out.device)
        info = {
            "backbone": self.backbone.describe(),
            "untrained": not self.backbone.pretrained,
            "stride": S,
            "grid": make_geometry(self.geometry, H, W, P, S).grid,
            "geometry": self.geometry,
            "facet": f"{self.facet}@{self.layer}",
            "attention": self.attention_kind,
            "transforms": len(plans),
            "compressed_grid": (Hu, Wu),
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(device),
            "projected": project is not None,
            "seconds": time.perf_counter() - start,
            "vit_seconds": vit_seconds,
        }
        return HighResResult(out, out_attn, info)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _accumulate(acc: torch.Tensor, grid: torch.Tensor, index: torch.Tensor) -> None:
    """acc[i, j, :] += the grid cell that compressed cell (i, j) reads; one gather of
    contiguous C-length rows from the channels-last (gh, gw, C) grid."""
    C = grid.shape[-1]
    acc.view(-1, C).add_(grid.reshape(-1, C).index_select(0, index))


def _expand_to(acc: torch.Tensor, row_class: torch.Tensor, col_class: torch.Tensor,
               target: torch.device) -> torch.Tensor:
    """The expanded (C, H, W) map on ``target`` after a single transfer: of the compressed grid
    (then expanded on ``target``) when it is under half the full map, else of the full map
    (expanded on ``acc``'s device, where the gather is fastest)."""
    if acc.device != target and 2 * acc.shape[0] * acc.shape[1] <= len(row_class) * len(col_class):
        acc = acc.to(target)
    out = _expand(acc, row_class.to(acc.device), col_class.to(acc.device))
    return out.to(target)  # no-op when already there; keeps the channels-last strides


def _expand(acc: torch.Tensor, row_class: torch.Tensor, col_class: torch.Tensor) -> torch.Tensor:
    """(Hu, Wu, C) compressed grid -> (C, H, W) view of a channels-last (H, W, C) tensor."""
    Hu, Wu, C = acc.shape
    index = (row_class[:, None] * Wu + col_class[None, :]).reshape(-1)
    out = acc.view(-1, C).index_select(0, index)
    return out.view(len(row_class), len(col_class), C).permute(2, 0, 1)
