"""``--config FILE``: a JSON file of option values for one command (e.g. the best trial of
``hrdv2 tune``). Values become the command's defaults, so flags given on the command line
still win. Format (version 1)::

    {"hrdv2_config": 1, "workflow": "train", "options": {"features": "classical", "classifier": "logistic"}}

Keys in ``options`` are the command's parameter names as ``hrdv2 CMD --help`` shows them,
with dashes or underscores (``--max-samples`` -> ``max_samples``; for flags such as
``--flips/--no-flips`` the name is ``flips`` and the value true/false). ``workflow`` is
optional; when present it must name the command the file is given to.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import click

from hrdv2.errors import ConfigError

CONFIG_VERSION = 1


def _option_names(command: click.Command) -> dict[str, str]:
    """Accepted key -> parameter name: the Python name and each long flag without dashes."""
    names: dict[str, str] = {}
    for param in command.params:
        if param.name is None or param.name == "config_file" or not isinstance(param, click.Option):
            continue
        names[param.name] = param.name
        for flag in (*param.opts, *param.secondary_opts):
            if flag.startswith("--"):
                key = flag[2:]
                if key.startswith("no-") and flag in param.secondary_opts:
                    continue
                names[key] = param.name
                names[key.replace("-", "_")] = param.name
    return names


def read_config(path: Path, command: click.Command, workflow: str) -> dict[str, Any]:
    """{parameter name: value} from a config file, checked against ``command``'s options."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; write one with `hrdv2 tune` or by hand "
                          f"(see `hrdv2 {workflow} --help`).") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable JSON config file ({exc}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("options"), dict):
        raise ConfigError(f"{path}: a config file is a JSON object with an \"options\" object, "
                          f'e.g. {{"hrdv2_config": {CONFIG_VERSION}, "workflow": "{workflow}", "options": {{...}}}}.')
    version = data.get("hrdv2_config", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise ConfigError(f"{path}: config version {version!r} is not supported (this hrdv2 reads {CONFIG_VERSION}).")
    target = data.get("workflow")
    if target is not None and target != workflow:
        raise ConfigError(f"{path}: this config is for `hrdv2 {target}`, not `hrdv2 {workflow}`.")
    accepted = _option_names(command)
    values: dict[str, Any] = {}
    for key, value in data["options"].items():
        name = accepted.get(str(key))
        if name is None:
            flags = (o[2:] for p in command.params if isinstance(p, click.Option) and p.name != "config_file"
                     for o in p.opts if o.startswith("--"))
            options = ", ".join(sorted(flags))
            raise ConfigError(f"{path}: unknown option {key!r} for `hrdv2 {workflow}`; known: {options}.")
        values[name] = value
    return values


def config_file_option(workflow: str) -> Callable[[click.Command], click.Command]:
    """Decorator adding ``--config FILE`` to a click command (before its other options are read)."""

    def callback(ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
        if value is None:
            return None
        values = read_config(value, ctx.command, workflow)
        ctx.default_map = {**(ctx.default_map or {}), **values}
        ctx.meta["hrdv2.config_file"] = str(value)
        return value

    return click.option(
        "--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
        is_eager=True, expose_value=False, callback=callback,
        help="JSON file of option values (e.g. from `hrdv2 tune`); flags on the command line win.",
    )
