"""The ``lcr-sdk`` command line: thin typer commands over library functions.

One module per command group registers its commands on the shared app. No module here imports torch at import
time, so ``lcr-sdk --help`` lists every command on a torch-free install; a command that needs torch fails with
the pip extra to install.
"""

from __future__ import annotations

import os

import typer
from typer.core import TyperGroup

from lcr_sdk._version import __version__
from lcr_sdk.errors import LcrError

_state = {"debug": bool(os.environ.get("LCR_SDK_DEBUG"))}


class _Group(TyperGroup):
    """Turns a domain error (:class:`LcrError`) into one line on stderr and exit code 1; ``--debug`` re-raises."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LcrError as e:
            if _state["debug"]:
                raise
            typer.secho(f"Error: {e}", err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Group,
    name="lcr-sdk",
    help="LCR fine-grained image embeddings: train, export (ONNX/TensorRT), embed, retrieve, attention maps.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)


def _version(value: bool):
    if value:
        typer.echo(f"lcr-sdk {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    _state["debug"] = debug or _state["debug"]


def _register() -> None:
    from lcr_sdk.cli import export_cmd, gallery_cmd, runtime_cmd, train_cmd

    for module in (train_cmd, export_cmd, runtime_cmd, gallery_cmd):
        module.register(app)


_register()


def main() -> None:
    """Console-script entry point."""
    app()
