"""The ``quantgate`` command: ``main`` (serve, check, jobs, demo) and one module per larger
subcommand (quantize, bench, recommend, demo)."""

from gateway.cli.main import main

__all__ = ["main"]
