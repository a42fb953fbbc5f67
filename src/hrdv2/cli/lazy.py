"""A click group whose sub-commands are named by "module:attribute" strings and imported only
when used, so ``--help`` stays fast and one workflow's optional dependency never breaks another's
command. It is also the one place where an unexpected error becomes one line (``fail``)."""

from __future__ import annotations

import importlib

import click

from hrdv2.cli.boundary import fail


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
