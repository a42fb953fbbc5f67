"""Device placement: everything the upsamplers compute lives on the backbone's device, results
come back as float32 CPU tensors, and device names are checked against this machine.

No GPU is needed: the backbone's weights are put on the ``meta`` device (shapes, no data), and
a dispatch mode records the device of every tensor every aten op reads and writes. Meta
tensors mix silently with CPU tensors, so the record, not an exception, is the check.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from hrdv2.backbones import Backbone, load_backbone, resolve_device
from hrdv2.errors import ConfigError
from hrdv2.transforms import Identity, flips, product, rotations, shifts
from hrdv2.upsample import HighResFeaturizer, upsample_baseline

META = torch.device("meta")
CPU = torch.device("cpu")
TRANSFERS = ("aten._to_copy.default", "aten.copy_.default", "aten.to.device", "aten.to.dtype_layout",
             "aten.to.other")
ENTRY = "aten.lift_fresh.default"  # torch.from_numpy: host data entering torch, not computation


@dataclasses.dataclass
class Op:
    name: str
    inputs: list[torch.device]
    outputs: list[torch.device]
    float_out: bool
    numel: int  # elements of the first input (the transferred tensor, for transfers)

    @property
    def transfer(self) -> tuple[str, str] | None:
        if self.name in TRANSFERS and self.inputs and self.outputs and self.inputs[0] != self.outputs[0]:
            return self.inputs[0].type, self.outputs[0].type
        return None


class DeviceLog(TorchDispatchMode):
    """Records every aten op. Copies from meta to the CPU (impossible: meta holds no data) are
    answered with zeros of the right shape, strides and dtype, so the path to CPU results runs."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[Op] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ins = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        target = kwargs.get("device")
        if str(func) == "aten._to_copy.default" and ins[0].is_meta and target is not None and torch.device(target) == CPU:
            src = ins[0]
            out = torch.empty_strided(src.shape, src.stride(), dtype=kwargs.get("dtype") or src.dtype).zero_()
        else:
            out = func(*args, **kwargs)
        outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        # 0-dim CPU tensors are scalars that torch allows beside any device
        self.ops.append(Op(str(func), [t.device for t in ins if t.dim() > 0 or t.is_meta],
                           [t.device for t in outs], any(t.is_floating_point() for t in outs),
                           ins[0].numel() if ins else 0))
        return out


@pytest.fixture(scope="module")
def meta_backbone(tiny_backbone) -> Backbone:
    """The tiny backbone's architecture on the meta device: runs every op, computes nothing.
    Cut to two blocks, as meta kernels are slow Python and placement does not depend on depth."""
    model = copy.deepcopy(tiny_backbone.model).to(META)
    model.blocks = torch.nn.Sequential(*list(model.blocks)[:2])
    return dataclasses.replace(tiny_backbone, model=model, device=None, _compute_copies={})


def run_logged(fn):
    log = DeviceLog()
    with log:
        result = fn()
    return result, log.ops


def assert_no_op_mixes_devices(ops: list[Op]) -> None:
    mixed = [op for op in ops if op.transfer is None and len(set(op.inputs + op.outputs)) > 1]
    assert not mixed, f"ops mixing devices: {[(op.name, op.inputs, op.outputs) for op in mixed[:5]]}"


def h2d(ops: list[Op]) -> list[Op]:
    return [op for op in ops if op.transfer == ("cpu", "meta")]


IMAGE = np.random.default_rng(0).integers(0, 256, (42, 56, 3), dtype=np.uint8)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_featurizer_computes_only_on_the_backbone_device(meta_backbone, dtype):
    assert meta_backbone.device == META
    fz = HighResFeaturizer(meta_backbone, stride=7, transforms=product(shifts((1,)), flips()), batch_size=12,
                           dtype=dtype, return_device=None)
    res, ops = run_logged(lambda: fz(IMAGE))
    assert res.features.device == META and res.attention.device == META
    assert res.features.dtype == torch.float32 and res.attention.dtype == torch.float32
    assert res.features.shape == (384, 42, 56) and res.attention.shape == (6, 42, 56)
    assert_no_op_mixes_devices(ops)
    # no floating-point work on the CPU at all: only the integer planning runs there
    cpu_float = [op.name for op in ops if op.transfer is None and op.name != ENTRY and op.float_out and CPU in op.outputs]
    assert not cpu_float, f"float ops on the CPU: {cpu_float[:5]}"
    assert not [op for op in ops if op.transfer == ("meta", "cpu")]
    # the image crosses once as float32 pixels; all else that crosses is integer row/column lookups
    moved = h2d(ops)
    assert sum(op.numel == 42 * 56 * 3 and op.float_out for op in moved) == 1
    assert all(not op.float_out and op.numel <= (42 + 56) * len(fz.transforms) for op in moved if op.numel != 42 * 56 * 3)


def test_host_to_device_traffic_does_not_grow_with_the_transforms(meta_backbone):
    counts = []
    for tfs in ([Identity()], product(shifts((1, 2), "moore"), flips())):
        fz = HighResFeaturizer(meta_backbone, stride=7, transforms=tfs, batch_size=34, return_device=None)
        _, ops = run_logged(lambda: fz(IMAGE))
        counts.append(len(h2d(ops)))
    assert counts[0] == counts[1] >= 1  # at least the image crosses


def test_results_cross_to_the_cpu_once_at_the_end(meta_backbone):
    """Default: float32 CPU results; after the first device -> CPU copy nothing runs on the device."""
    fz = HighResFeaturizer(meta_backbone, stride=14, transforms=rotations(), batch_size=2)  # non-square: 2 grids
    res, ops = run_logged(lambda: fz(IMAGE))
    assert res.features.device == CPU and res.attention.device == CPU
    assert res.features.dtype == torch.float32 and res.features.shape == (384, 42, 56)
    assert res.features_hwc.is_contiguous()  # channels-last storage survives the copy
    assert_no_op_mixes_devices(ops)
    d2h = [i for i, op in enumerate(ops) if op.transfer == ("meta", "cpu")]
    assert 1 <= len(d2h) <= 2  # features, attention
    assert not [op.name for op in ops[d2h[0]:] if META in op.inputs + op.outputs and op.transfer is None]


@pytest.mark.parametrize("mode", ["nearest", "bicubic"])
def test_baselines_compute_on_the_backbone_device(meta_backbone, mode):
    kept, ops = run_logged(lambda: upsample_baseline(IMAGE, meta_backbone, mode, stride=7, return_device=None))
    assert kept.features.device == META and kept.attention.device == META
    assert_no_op_mixes_devices(ops)
    assert not [op.name for op in ops if op.transfer is None and op.name != ENTRY and op.float_out and CPU in op.outputs]
    res, ops = run_logged(lambda: upsample_baseline(IMAGE, meta_backbone, mode, stride=7))
    assert res.features.device == CPU and res.features.dtype == torch.float32
    assert_no_op_mixes_devices(ops)


def test_float16_compute_returns_float32_cpu_results(tiny_backbone):
    """float16 compute, float32 accumulation and results (bfloat16: tests/test_upsample.py)."""
    image = IMAGE[:28, :28]
    ref = HighResFeaturizer(tiny_backbone, transforms=flips())(image)
    res = HighResFeaturizer(tiny_backbone, transforms=flips(), dtype="float16", batch_size=8)(image)
    assert res.features.dtype == torch.float32 and res.features.device == CPU
    assert res.attention.dtype == torch.float32 and res.info["device"] == "cpu"
    cos = torch.nn.functional.cosine_similarity(ref.features.reshape(384, -1), res.features.reshape(384, -1), dim=0)
    assert cos.mean() > 0.99


def test_backbone_device_follows_its_weights(tiny_backbone):
    assert tiny_backbone.device == CPU
    with pytest.raises(ConfigError, match="weights are on cpu but device=meta"):
        dataclasses.replace(tiny_backbone, device="meta", _compute_copies={})


# --- device names -------------------------------------------------------------------------


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_cpu_and_auto_resolve_without_a_gpu(no_gpu):
    assert resolve_device("cpu") == CPU
    assert resolve_device(" CPU ") == CPU
    assert resolve_device(torch.device("cpu")) == CPU
    assert resolve_device("auto") == CPU and resolve_device(None) == CPU


@pytest.mark.parametrize("name, message", [
    ("cuda", r"^--device cuda: no CUDA device on this machine \(torch.cuda.is_available\(\) is False\); use --device cpu$"),
    ("cuda:1", "--device cuda:1: no CUDA device"),
    ("mps", "--device mps: no Apple MPS device on this machine.*use --device cpu"),
    ("tpu", "'tpu' is not a device; use one of auto, cpu, cuda, cuda:N, mps"),
    ("", "'' is not a device"),
    ("cuda:x", "write cuda:N"),
    ("meta", "'meta' is not a device"),
])
def test_devices_this_machine_lacks_are_one_line_errors(no_gpu, name, message):
    with pytest.raises(ConfigError, match=message) as err:
        resolve_device(name)
    assert "\n" not in str(err.value)


def test_cuda_names_are_indexed_and_checked_against_the_gpu_count(one_gpu):
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("auto") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match=r"--device cuda:2: this machine has 1 CUDA device\(s\) \(cuda:0\)"):
        resolve_device("cuda:2")


def test_load_backbone_refuses_a_missing_device_before_reading_weights(no_gpu, tmp_path):
    # the weights file does not exist: the device error must come first
    with pytest.raises(ConfigError, match="--device cuda: no CUDA device"):
        load_backbone("dinov2_vits14", weights=tmp_path / "absent.pth", device="cuda")
