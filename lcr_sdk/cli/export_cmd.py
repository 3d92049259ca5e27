"""`lcr-sdk export` and `lcr-sdk verify` (issue 3)."""

import typer


def register(app: typer.Typer) -> None:
    """Add this group's commands to ``app``."""
