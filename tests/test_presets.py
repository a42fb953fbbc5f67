"""``--preset`` on train / features / unsupervised, the new train options and their refusals,
option precedence (flags > --config > preset > defaults) and the time estimate before long runs.
Deep features here use random weights (UNTRAINED) and --dry-run, which stops before featurising."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hrdv2.cli.main import cli
from hrdv2.cli.presets import (
    PRESETS, TimeEstimate, estimate_message, faster_hints, format_seconds, resolve_preset,
)
from hrdv2.engine import transform_set
from hrdv2.errors import HRDv2Error
from hrdv2.features.sets import FeatureConfig
from hrdv2.io import write_image
from hrdv2.transforms import PublishedCompose

# tiny images and tensors: one torch thread is fastest and keeps a busy shared machine usable
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny RGB image and a two-class scribble map."""
    folder = tmp_path_factory.mktemp("pair")
    rng = np.random.default_rng(0)
    image = (rng.random((40, 52, 3)) * 255).astype(np.uint8)
    labels = np.zeros((40, 52), np.uint8)
    labels[5:10, 5:20], labels[30:35, 30:45] = 1, 2
    return write_image(folder / "img.png", image), write_image(folder / "img_scribble.png", labels)


def train_args(pair, tmp_path, *extra: str) -> list[str]:
    img, lab = pair
    return ["train", "--image", str(img), "--scribble", str(lab), "--out", str(tmp_path / "m.skops"), *extra]


# ------------------------------------------------------------------ presets print their settings

def test_features_preset_paper_prints_its_settings(runner, pair, tmp_path):
    res = runner.invoke(cli, ["features", str(pair[0]), "--preset", "paper", "--weights", "random", "--dry-run",
                              "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert ("preset paper: dinov2_vits14_reg, stride 4, shifts 1,2 moore, flips (hrdv2), geometry hrdv2 "
            "(68 transforms)") in res.output
    assert "estimated time for img (52x40)" in res.output and "68 ViT passes at stride 4" in res.output
    assert not list(tmp_path.glob("*.npy"))  # a dry run writes nothing


def test_train_preset_paper_prints_settings_and_published_preset_switches_geometry(runner, pair, tmp_path):
    res = runner.invoke(cli, train_args(pair, tmp_path, "--preset", "paper", "--weights", "random", "--dry-run"))
    assert res.exit_code == 0, res.output
    assert "preset paper: dinov2_vits14_reg, stride 4, shifts 1,2 moore, flips (hrdv2), geometry hrdv2" in res.output
    assert "dry run" in res.output and not (tmp_path / "m.skops").exists()
    res = runner.invoke(cli, train_args(pair, tmp_path, "--preset", "published", "--weights", "random", "--dry-run",
                                        "--stride", "7"))
    assert res.exit_code == 0, res.output
    assert "preset published: dinov2_vits14_reg, stride 7, shifts 1,2 moore, flips (published), geometry published" \
        in res.output


def test_unsupervised_defaults_to_fast_on_cpu_and_paper_is_the_experiments_setting(runner, pair, tmp_path):
    res = runner.invoke(cli, ["unsupervised", str(pair[0]), "--weights", "random", "--dry-run", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "preset fast: stride 14, shifts none, flips off (1 transforms), max side 224 px" in res.output
    res = runner.invoke(cli, ["unsupervised", str(pair[0]), "--weights", "random", "--dry-run", "--preset", "paper",
                              "--stride", "7", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if "preset paper" in ln)
    assert "dinov2_vits14_reg" in line and "stride 7, shifts 1,2, flips on (68 transforms), full size" in line
    assert "o attention" in line and "CRF on" in line
    assert not list(tmp_path.glob("*_labels.png"))


def test_auto_preset_follows_the_device():
    assert resolve_preset("unsupervised", "auto", "cpu") == "fast"
    assert resolve_preset("unsupervised", "auto", "cuda:1") == "paper"
    assert resolve_preset("unsupervised", "auto", "mps") == "paper"
    assert resolve_preset("train", None, "cpu") is None
    with pytest.raises(Exception, match="unknown"):
        resolve_preset("train", "weka-paper", "cpu")


def test_every_preset_key_is_an_option_of_its_command():
    from hrdv2.cli.features import features
    from hrdv2.cli.train import train
    from hrdv2.cli.unsupervised import unsupervised

    for workflow, command in (("features", features), ("train", train), ("unsupervised", unsupervised)):
        names = {p.name for p in command.params}
        for preset, values in PRESETS[workflow].items():
            assert set(values) <= names, (workflow, preset, set(values) - names)


# ------------------------------------------------------------------ precedence

def test_flags_beat_config_beat_preset_beat_defaults(runner, pair, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"hrdv2_config": 1, "workflow": "train", "options": {"stride": 7, "shifts": "1"}}))
    common = ["--weights", "random", "--dry-run"]

    def setup_line(*args: str) -> str:
        res = runner.invoke(cli, train_args(pair, tmp_path, *common, *args))
        assert res.exit_code == 0, res.output
        return next(ln for ln in res.output.splitlines() if ln.startswith(("preset", "settings")))

    assert setup_line("--features", "deep").startswith("settings: dinov2_vits14, stride P, shifts 1,2 moore, no flips")
    assert "stride 4, shifts 1,2 moore, flips" in setup_line("--preset", "paper")  # preset over defaults
    line = setup_line("--preset", "paper", "--config", str(cfg))  # config over preset
    assert "stride 7, shifts 1 moore, flips (hrdv2)" in line and "dinov2_vits14_reg" in line
    line = setup_line("--config", str(cfg), "--preset", "paper", "--stride", "14", "--no-flips")  # flags over config
    assert "stride 14, shifts 1 moore, no flips" in line


# ------------------------------------------------------------------ refusals

@pytest.mark.parametrize("args,named", [
    (["--features", "classical", "--stride", "3"], "--stride"),
    (["--stride", "3"], "--stride"),  # classical is train's default kind
    (["--features", "classical", "--flips"], "--flips"),
    (["--features", "classical", "--shifts", "1"], "--shifts"),
    (["--features", "classical", "--dtype", "bfloat16"], "--dtype"),
    (["--features", "classical", "--geometry", "published"], "--geometry"),
])
def test_train_refuses_deep_options_with_classical_features(runner, pair, tmp_path, args, named):
    res = runner.invoke(cli, train_args(pair, tmp_path, *args))
    assert res.exit_code == 2, res.output
    assert named in res.output and "--features classical" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_train_refuses_classical_options_with_deep_features_and_contradictions(runner, pair, tmp_path):
    res = runner.invoke(cli, train_args(pair, tmp_path, "--features", "deep", "--sigmas", "1,2", "--weights", "random"))
    assert res.exit_code == 2 and "--sigmas" in res.output and "--features deep" in res.output
    res = runner.invoke(cli, train_args(pair, tmp_path, "--preset", "paper", "--features", "classical"))
    assert res.exit_code == 2 and "--preset paper" in res.output
    res = runner.invoke(cli, train_args(pair, tmp_path, "--features", "deep", "--weights", "random",
                                        "--flip-set", "published", "--no-flips"))
    assert res.exit_code == 2 and "--flip-set published" in res.output and "--no-flips" in res.output
    # restating a default (as a config file from `hrdv2 tune` may) is not refused, and hybrid takes both kinds
    res = runner.invoke(cli, train_args(pair, tmp_path, "--features", "classical", "--no-flips", "--dry-run"))
    assert res.exit_code == 0, res.output


# ------------------------------------------------------------------ time estimate

def test_estimate_message_only_above_the_threshold():
    class B:
        device = torch.device("cpu")
        patch_size = 14

    class Fz:
        backbone, stride, transforms = B(), 4, [None] * 68

    msg = estimate_message(900.0, "big.tif", Fz(), faster_hints("unsupervised", Fz()), threshold=60)
    assert msg is not None and "about 15 min" in msg and "68 ViT passes at stride 4 on cpu" in msg
    assert "--preset fast" in msg and "--device cuda" in msg and "--max-side" in msg
    assert estimate_message(30.0, "small.png", Fz(), "x", threshold=60) is None
    assert estimate_message(30.0, "small.png", Fz(), "x", threshold=10) is not None
    assert format_seconds(45) == "45 s" and format_seconds(7200) == "2.0 h"


def test_estimate_printed_before_a_run_over_the_threshold(runner, pair, tmp_path, monkeypatch):
    args = ["unsupervised", str(pair[0]), "--weights", "random", "--k", "4", "--pca", "0", "--out", str(tmp_path)]
    monkeypatch.setenv("HRDV2_WARN_SECONDS", "0")  # every run is "long"
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "estimated time for img (52x40 px processed)" in res.output and "Faster:" in res.output
    monkeypatch.setenv("HRDV2_WARN_SECONDS", "100000")
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "estimated time" not in res.output and "img: 52x40" in res.output


def test_time_estimate_scales_with_passes_and_tokens(tiny_backbone):
    from hrdv2.upsample import HighResFeaturizer

    fz1 = HighResFeaturizer(tiny_backbone, stride=14, transforms=transform_set((), "moore"))
    fz17 = HighResFeaturizer(tiny_backbone, stride=14, transforms=transform_set((1, 2), "moore"))
    est1, est17 = TimeEstimate(fz1), TimeEstimate(fz17)
    est17._probe = est1._time_probe()  # the same measured pass: only the counts differ
    assert est17.seconds(224, 224) == pytest.approx(17 * est1.seconds(224, 224))
    assert est1.seconds(448, 448) > 4 * est1.seconds(224, 224)  # 4x the tokens, plus attention's N^2


# ------------------------------------------------------------------ configs and transform sets

def test_feature_config_keys_and_published_transform_set():
    base = FeatureConfig(kind="deep")
    assert FeatureConfig(kind="deep", geometry="hrdv2", flip_set="published").key() == base.key()  # no flips
    assert FeatureConfig(kind="deep", geometry="published").key() != base.key()
    assert FeatureConfig(kind="deep", flips=True, flip_set="published").key() != FeatureConfig(kind="deep",
                                                                                            flips=True).key()
    assert FeatureConfig(kind="classical", geometry="published").key() == FeatureConfig(kind="classical").key()
    with pytest.raises(Exception, match="geometry"):
        FeatureConfig(kind="deep", geometry="paper")
    tfs = transform_set((1, 2), "moore", flips=True, flip_set="published")
    assert len(tfs) == 68 and sum(isinstance(t, PublishedCompose) for t in tfs) == 16 * 2  # shift x {h, v}
    assert sum(t.name == "identity" for t in tfs) == 2  # the published set counts the identity twice


def test_the_library_presets_are_read_from_the_cli_table():
    """One table: the Python API's unsupervised presets are the CLI presets' extraction values."""
    from hrdv2.cli.presets import PRESETS as CLI_PRESETS
    from hrdv2.presets import parse_shifts
    from hrdv2.unsupervised import PRESETS as LIBRARY_PRESETS

    assert set(LIBRARY_PRESETS) == set(CLI_PRESETS["unsupervised"])
    for name, cli in CLI_PRESETS["unsupervised"].items():
        lib = LIBRARY_PRESETS[name]
        assert (lib["stride"], lib["shifts"], lib["flips"]) == (cli["stride"], parse_shifts(cli["shift_text"]), cli["flips"])
        assert lib["max_side"] == (cli["max_side"] or None)
    assert LIBRARY_PRESETS["fast"]["max_side"] == 224 and LIBRARY_PRESETS["paper"]["max_side"] is None
    with pytest.raises(HRDv2Error, match="'slow' is unknown"):
        from hrdv2.presets import extraction_settings

        extraction_settings("slow")
