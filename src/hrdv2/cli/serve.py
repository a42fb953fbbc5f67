"""``hrdv2 serve``: the local web app for painting scribbles, training and exporting."""

from __future__ import annotations

from pathlib import Path

import click

from hrdv2.errors import ConfigError


def default_project_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("hrdv2")) / "app"


@click.command()
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Server-side folder of images the page may add (read-only; nothing outside it is reachable).")
@click.option("--project-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where projects, strokes, models and the feature cache live [default: user data dir].")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind. Anything but loopback exposes the app to your network (no login!).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--max-upload-mb", default=256, show_default=True, type=click.IntRange(1, 100_000),
              help="Largest accepted upload.")
@click.option("--device", default="cpu", show_default=True, help="Where deep features run: cpu, cuda, cuda:N, mps, auto.")
def serve(data_dir: Path | None, project_dir: Path | None, host: str, port: int, max_upload_mb: int, device: str) -> None:
    """Start the web app on http://HOST:PORT (from a remote GPU box: ssh -L 8000:127.0.0.1:8000 box)."""
    import uvicorn

    from hrdv2.app.security import is_loopback, loopback_host_names
    from hrdv2.app.server import create_app

    if data_dir is not None and not data_dir.is_dir():
        raise ConfigError(f"--data {data_dir}: no such folder. Give the folder that holds your images.")
    project_dir = project_dir or default_project_dir()
    loopback = is_loopback(host)  # 127.1, 0x7f.1, [::1], localhost... all keep the Host check on
    if not loopback:
        click.secho(
            f"warning: binding {host}: anyone who can reach this machine on port {port} can read and change your "
            "projects (there is no login). Prefer the default 127.0.0.1 with an SSH tunnel.",
            fg="yellow", err=True,
        )
    app = create_app(
        project_dir,
        data_dir,
        max_upload_bytes=max_upload_mb * 1024 * 1024,
        allowed_hosts=loopback_host_names(host) if loopback else None,
        device=device,
    )
    bind = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [::1] as in a URL
    shown = f"[{bind}]" if ":" in bind else bind
    click.echo(f"hrdv2 app: projects in {project_dir}" + (f", images from {data_dir}" if data_dir else ""))
    click.echo(f"open http://{shown}:{port}/  (Ctrl+C to stop)")
    uvicorn.run(app, host=bind, port=port, log_level="warning")
