"""The ``hrdv2`` command. Sub-commands are imported only when used, so ``hrdv2 --help``
is fast and one workflow's optional dependency never breaks another's command."""

from __future__ import annotations

import importlib

import click

from hrdv2.cli.boundary import fail

# command name -> "module:attribute" (a click.Command or click.Group)
COMMANDS: dict[str, str] = {
    "features": "hrdv2.cli.features:features",
    "train": "hrdv2.cli.segment:train",
    "apply": "hrdv2.cli.segment:apply",
    "evaluate": "hrdv2.cli.segment:evaluate",
    "unsupervised": "hrdv2.cli.unsupervised:unsupervised",
    "probe": "hrdv2.cli.probe:probe",
    "serve": "hrdv2.cli.serve:serve",
    "bench": "hrdv2.cli.main:bench",
    "backbones": "hrdv2.cli.features:backbones",
}

# `hrdv2 bench NAME`: benchmark commands owned by each workflow's CLI module
BENCH_COMMANDS: dict[str, str] = {
    "unsupervised": "hrdv2.cli.unsupervised:bench_unsupervised",
}


def _load(spec: str) -> click.Command:
    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


class LazyGroup(click.Group):
    def __init__(self, *args, lazy: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self._lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self._lazy)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        spec = self._lazy.get(name)
        return _load(spec) if spec else None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except Exception as exc:  # the one boundary where errors become one line
            fail(exc)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hrdv2")
def cli() -> None:
    """hrdv2: pixel-accurate ViT features without training, and what to do with them."""


@click.group(cls=LazyGroup, lazy=BENCH_COMMANDS)
def bench() -> None:
    """Benchmarks on standard datasets (quality figures beside the published ones)."""


if __name__ == "__main__":  # pragma: no cover
    cli()
