"""`--config FILE`: option values from JSON become defaults; command-line flags win; bad files fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from hrdv2.cli.config_file import config_file_option


@click.command()
@config_file_option("train")
@click.option("--classifier", default="random_forest")
@click.option("--max-samples", type=int, default=20_000)
@click.option("--flips/--no-flips", default=False)
def echo_options(classifier: str, max_samples: int, flips: bool) -> None:
    click.echo(json.dumps({"classifier": classifier, "max_samples": max_samples, "flips": flips}))


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "best.json"
    path.write_text(json.dumps(data))
    return path


def _run(*args: str) -> click.testing.Result:
    return CliRunner().invoke(echo_options, list(args))


def test_values_become_defaults_and_flags_win(tmp_path):
    cfg = _write(tmp_path, {"hrdv2_config": 1, "workflow": "train",
                            "options": {"classifier": "logistic", "max-samples": 500, "flips": True}})
    res = _run("--config", str(cfg))
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"classifier": "logistic", "max_samples": 500, "flips": True}
    res = _run("--classifier", "gradient_boosting", "--config", str(cfg), "--no-flips")
    assert json.loads(res.output) == {"classifier": "gradient_boosting", "max_samples": 500, "flips": False}


def test_underscored_names_are_accepted(tmp_path):
    cfg = _write(tmp_path, {"options": {"max_samples": 7}})
    assert json.loads(_run("--config", str(cfg)).output)["max_samples"] == 7


@pytest.mark.parametrize("data, words", [
    ({"options": {"bogus": 1}}, ["unknown option 'bogus'", "max-samples"]),
    ({"workflow": "unsupervised", "options": {}}, ["for `hrdv2 unsupervised`, not `hrdv2 train`"]),
    ({"hrdv2_config": 9, "options": {}}, ["version 9"]),
    ([1, 2], ['"options" object']),
])
def test_bad_files_are_refused_with_the_reason(tmp_path, data, words):
    res = _run("--config", str(_write(tmp_path, data)))
    assert res.exit_code != 0
    text = str(res.exception) if res.exception else res.output
    for word in words:
        assert word in text


def test_missing_and_unreadable_files_name_the_path(tmp_path):
    res = _run("--config", str(tmp_path / "nope.json"))
    assert "config file not found" in str(res.exception) and "nope.json" in str(res.exception)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    res = _run("--config", str(bad))
    assert "not a readable JSON config file" in str(res.exception)
