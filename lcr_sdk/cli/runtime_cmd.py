"""`lcr-sdk embed / gallery / attention / bench / info` (issue 4)."""

import typer


def register(app: typer.Typer) -> None:
    """Add this group's commands to ``app``."""
