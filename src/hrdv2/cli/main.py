"""The ``hrdv2`` command. Sub-commands are imported only when used, so ``hrdv2 --help``
is fast and one workflow's optional dependency never breaks another's command."""

from __future__ import annotations

import click

from hrdv2.cli.lazy import LazyGroup

# command name -> "module:attribute" (a click.Command or click.Group)
COMMANDS: dict[str, str] = {
    "features": "hrdv2.cli.features:features",
    "train": "hrdv2.cli.train:train",
    "apply": "hrdv2.cli.segment:apply",
    "evaluate": "hrdv2.cli.segment:evaluate",
    "unsupervised": "hrdv2.cli.unsupervised:unsupervised",
    "probe": "hrdv2.cli.probe:probe",
    "serve": "hrdv2.cli.serve:serve",
    "bench": "hrdv2.cli.main:bench",
    "backbones": "hrdv2.cli.features:backbones",
    "match": "hrdv2.cli.match:match",
    "tune": "hrdv2.cli.tune:tune",
}

# `hrdv2 bench NAME`: benchmark commands owned by each workflow's CLI module
BENCH_COMMANDS: dict[str, str] = {
    "unsupervised": "hrdv2.cli.unsupervised:bench_unsupervised",
}


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hrdv2")
def cli() -> None:
    """hrdv2: pixel-accurate ViT features without training, and what to do with them."""


@click.group(cls=LazyGroup, lazy=BENCH_COMMANDS)
def bench() -> None:
    """Benchmarks on standard datasets (quality figures beside the published ones)."""


def main() -> None:
    """The ``hrdv2`` console script: :func:`cli`, then no garbage-collection passes at exit.

    Why: a classical ``hrdv2 train`` leaves ~10^6 objects (scikit-learn, scipy, numpy), and the
    interpreter's final collections walked them all: ~0.25 s of a ~2 s command. ``gc.freeze``
    moves them out of the collector's reach; reference counting still frees them, files are closed
    and ``atexit`` handlers still run. In-process callers (tests) call :func:`cli` and keep their gc.
    """
    import gc

    try:
        cli()
    finally:
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    main()
