"""Command-line interface: one module per workflow, registered lazily in ``main``."""
