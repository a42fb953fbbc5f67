"""One owner opens checkpoints (hrdv2.checkpoints.load_checkpoint): every caller (backbone
weights, click head, linear head, LiFT) refuses a file that would run code, and a missing or
truncated file gives the same one-line CheckpointError naming the file and a fix."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from hrdv2.checkpoints import load_checkpoint
from hrdv2.errors import CheckpointError, ModelFileError, WeightsUnavailableError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _RunsCode:
    """Pickles as a call to os.mkdir(target): loading it with plain pickle would create the folder."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.mkdir, (self.target,)


def _click_head(path: Path) -> Any:
    from hrdv2.probe.head import load_head

    return load_head(path)


def _linear_head(path: Path) -> Any:
    from hrdv2.probe.linear import load_head

    return load_head(path)


def _lift(path: Path) -> Any:
    from hrdv2.probe.lift import LiFT, load_lift_state

    return load_lift_state(LiFT(8), path)


def _backbone_weights(path: Path) -> Any:
    from hrdv2.backbones import load_backbone

    return load_backbone("dinov2_vits14", weights=path)


# caller, what its message must call the file, words of the fix it must give
CALLERS: dict[str, tuple[Callable[[Path], Any], str, str]] = {
    "click-head": (_click_head, "click-head checkpoint", "hrdv2 probe train"),
    "linear-head": (_linear_head, "linear-head checkpoint", "hrdv2 probe linear"),
    "lift": (_lift, "LiFT checkpoint", "published .pth/.ckpt"),
    "backbone": (_backbone_weights, "dinov2_vits14 weights", "--weights"),
}


def _one_line_error(call: Callable[[Path], Any], path: Path) -> str:
    with pytest.raises(CheckpointError) as err:
        call(path)
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    return msg


@pytest.mark.parametrize("kind", ["torch-zip", "plain-pickle"])
@pytest.mark.parametrize("caller", list(CALLERS))
def test_a_checkpoint_that_would_run_code_is_refused_by_every_caller(tmp_path: Path, caller: str, kind: str) -> None:
    call, what, fix = CALLERS[caller]
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth"
    payload = {"hook": _RunsCode(marker), "state_dict": {"w": torch.zeros(2)}}  # the hook is met first
    if kind == "torch-zip":
        torch.save(payload, evil)
    else:  # the legacy (non-zip) format torch.load also accepts
        evil.write_bytes(pickle.dumps(payload, protocol=2))
    msg = _one_line_error(call, evil)
    assert not marker.exists(), "the crafted pickle ran code while loading"
    assert "refused" in msg and "would run code" in msg and "mkdir" in msg and what in msg and fix in msg, msg


@pytest.mark.parametrize("caller", list(CALLERS))
def test_missing_and_truncated_files_give_the_one_line_error(tmp_path: Path, caller: str) -> None:
    call, what, fix = CALLERS[caller]
    msg = _one_line_error(call, tmp_path / "nothing.pth")
    assert "does not exist" in msg and what in msg and fix in msg, msg
    msg = _one_line_error(call, tmp_path)  # a folder given instead of a file
    assert "is a folder" in msg and fix in msg, msg
    whole = tmp_path / "whole.pth"
    torch.save({"state_dict": {f"layer{i}.weight": torch.randn(64, 64) for i in range(4)}}, whole)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    msg = _one_line_error(call, cut)
    assert "cannot be read" in msg and "truncated" in msg and what in msg and fix in msg, msg
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")  # garbage is unreadable, not code: no false alarm
    msg = _one_line_error(call, junk)
    assert "cannot be read" in msg and "refused" not in msg, msg


def test_the_error_is_caught_where_model_file_and_weights_errors_are() -> None:
    """The app and the CLI's classical fallback catch WeightsUnavailableError; model-file handlers
    catch ModelFileError: one checkpoint error reaches both."""
    assert issubclass(CheckpointError, ModelFileError) and issubclass(CheckpointError, WeightsUnavailableError)


def test_good_files_load_and_digests_are_checked(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from hrdv2.checkpoints import sha256_of

    state = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.int64)}
    pt, st = tmp_path / "w.pt", tmp_path / "w.safetensors"
    torch.save(state, pt)
    save_file(state, str(st))
    for path in (pt, st):
        got = load_checkpoint(path, "test weights", "Fix it.", sha256=sha256_of(path))
        assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    with pytest.raises(CheckpointError, match=r"w\.pt: sha256 [0-9a-f]{64} does not match the published 00ff"):
        load_checkpoint(pt, "test weights", "Fix it.", sha256="00ff" * 16)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(st.read_bytes()[:20])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: cannot be read as a test weights file.*Fix it\.$"):
        load_checkpoint(cut, "test weights", "Fix it.")


def test_cli_prints_the_refusal_as_one_line(shared_data: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hrdv2.cli.main import cli

    evil = tmp_path / "evil.pth"
    torch.save({"x": _RunsCode(tmp_path / "code-ran")}, evil)
    res = CliRunner().invoke(cli, ["features", str(shared_data / "superalloy" / "isb_3.png"), "--weights", str(evil),
                                   "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "evil.pth: refused" in lines[0], res.output
    assert not (tmp_path / "code-ran").exists()
