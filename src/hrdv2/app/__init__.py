"""The local web app behind ``hrdv2 serve``: paint scribbles, train, inspect, export.

``create_app(project_dir, data_dir)`` (in :mod:`hrdv2.app.server`) builds the FastAPI
application; the page itself is static files in ``static/``. See docs/app.md.
"""
