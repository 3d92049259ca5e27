"""The ``lcr-sdk`` command line: thin typer commands over library functions.

One module per command group registers its commands on the shared app. No module here imports torch, OpenCV,
onnxruntime or TensorRT at import time, so ``lcr-sdk --help`` lists every command on a core install (a TensorRT
container without OpenCV, a Jetson venv without JetPack's packages); a command that needs one of them fails with
one line naming the pip extra (desktop) or the JetPack package (Jetson) to install.

Exit codes, the same for every command (scripts may rely on them):

    0    success
    1    the input was wrong or could not be processed (a bad file, option value, model or data set; a full
         disk): one line on stderr, ``Error: <what was given>; <what is valid / how to fix it>``
    2    usage error: an unknown command or option, a missing argument (typer/click's own message)
    130  interrupted by Ctrl+C or SIGTERM; whatever was being written is left as it was before the command
    141  the reader of stdout went away (``lcr-sdk ... | head``): nothing more is printed, as a standard tool killed
         by SIGPIPE (128 + 13)

``--debug`` (or ``LCR_SDK_DEBUG`` set to 1, true or yes; any other value is off) shows the full traceback instead
of the one line.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import signal
import sys
import warnings
from pathlib import Path
from types import FrameType
from typing import Any

import typer
from typer.core import TyperGroup

from lcr_sdk._version import __version__
from lcr_sdk.errors import PLATFORM_PACKAGES, LcrError, platform_message
from lcr_sdk.fileio import is_disk_full, mib

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 130, 141


def _debug_env() -> bool:
    """``LCR_SDK_DEBUG`` turns tracebacks on only when it is 1, true or yes (any case); 0, false, no: off."""
    return os.environ.get("LCR_SDK_DEBUG", "").strip().lower() in ("1", "true", "yes")


_state = {"debug": _debug_env()}


def os_error_line(e: OSError) -> str:
    """One line for an operating-system error: what failed, on which path, and (disk full) how much space is left."""
    name = e.filename or ""
    what = f"{e.strerror or e} ({name})" if name else str(e.strerror or e)
    if is_disk_full(e) and name:
        folder = Path(name).parent if not Path(name).is_dir() else Path(name)
        while not folder.exists() and folder != folder.parent:  # a file of a folder still to be made: its disk
            folder = folder.parent
        try:
            free = shutil.disk_usage(folder).free
            what += f"; {mib(free)} free on {folder}: free space or write elsewhere"
        except OSError:
            what += ": free space or write elsewhere"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what += ": choose a path you may write, or fix its permissions"
    return what


class _Group(TyperGroup):
    """Turns errors into one line on stderr and the documented exit code; ``--debug`` re-raises."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except BrokenPipeError:  # `lcr-sdk --help | head`: the root's help and --version print here
            _stdout_closed()

    def invoke(self, ctx: Any) -> Any:
        python_format = warnings.formatwarning
        warnings.formatwarning = _warning_text
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # output the reader never took fails here, not at interpreter exit
            return result
        except BrokenPipeError:
            _stdout_closed()
        except LcrError as e:
            _fail(e, f"Error: {e}", EXIT_ERROR)
        except KeyboardInterrupt as e:
            _fail(e, "Interrupted.", EXIT_INTERRUPTED)
        except OSError as e:  # disk full, permissions: validated inputs can still meet these
            _fail(e, f"Error: {os_error_line(e)}", EXIT_ERROR)
        except ImportError as e:  # an optional package a command reached without the SDK's own check
            line = missing_package_line(e)
            if line is None:
                raise
            _fail(e, f"Error: {line}", EXIT_ERROR)
        finally:
            warnings.formatwarning = python_format


def _warning_text(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """A warning as one line, ``warning: ...``, without the file and source line Python shows (code of the SDK's,
    not the user's); a warning of another kind than UserWarning names its kind. --debug: Python's own format.

    It replaces :func:`warnings.formatwarning` (not ``showwarning``) while a command runs, so code that records
    warnings (``warnings.catch_warnings(record=True)``, pytest) still gets them."""
    if _state["debug"]:  # set by the root callback, which runs after invoke() installed this
        return _PYTHON_FORMAT(message, category, filename, lineno, line)
    kind = "" if issubclass(category, UserWarning) else f" ({category.__name__})"
    return f"warning: {str(message).strip()}{kind}\n"


_PYTHON_FORMAT = warnings.formatwarning


# Optional packages (top-level module name) -> how to install them; the platform packages (OpenCV, onnxruntime,
# TensorRT) are named per platform by lcr_sdk.errors.PLATFORM_PACKAGES.
_TORCH = "pip install 'lcr-sdk[train]' (training) or 'lcr-sdk[export]' (export from a checkpoint)"
INSTALL = {
    "torch": _TORCH,
    "torchvision": _TORCH,
    "onnx": "pip install 'lcr-sdk[export]'",
    "onnxscript": "pip install 'lcr-sdk[export]'",
    "matplotlib": "pip install 'lcr-sdk[train]'",
    "scipy": "pip install 'lcr-sdk[train]'",
    "faiss": "pip install 'lcr-sdk[faiss]'",
    "cuda": "pip install 'lcr-sdk[trt-cu12]' (CUDA 12 driver; on a Jetson 'lcr-sdk[jetson]') or 'lcr-sdk[trt-cu13]'",
}


def missing_package_line(e: ImportError) -> str | None:
    """The one-line fix for an optional package that is not installed, or None for any other import error (a bug,
    shown with its traceback)."""
    name = (getattr(e, "name", None) or "").split(".")[0]
    first = str(e).splitlines()[0] if str(e) else name
    if name in PLATFORM_PACKAGES:
        return platform_message(name, first)  # an installed OpenCV missing a system library says which one
    if name in INSTALL:
        return f"this command needs {name!r}, which is not installed ({first}); {INSTALL[name]}"
    return None


def _stdout_closed() -> None:
    """End the command quietly when the reader of stdout has gone: no error line, exit code 141."""
    try:  # the interpreter flushes stdout again at exit: point it at /dev/null so that flush cannot fail
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):  # no file descriptor (a test runner's buffer)
        pass
    raise typer.Exit(EXIT_BROKEN_PIPE) from None


def _fail(e: BaseException, line: str, code: int) -> None:
    if _state["debug"]:
        raise e
    typer.secho(line, err=True, fg=typer.colors.RED)
    raise typer.Exit(code) from None


app = typer.Typer(
    cls=_Group,
    name="lcr-sdk",
    help="LCR fine-grained image embeddings: train, export (ONNX/TensorRT), embed, retrieve, attention maps.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lcr-sdk {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = debug or _debug_env()  # per invocation, never sticky


def _register() -> None:
    from lcr_sdk.cli import export_cmd, fleet_cmd, gallery_cmd, runtime_cmd, train_cmd

    for module in (train_cmd, export_cmd, runtime_cmd, gallery_cmd, fleet_cmd):
        module.register(app)


_register()


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # a service stop ends the command like Ctrl+C: writers clean up, exit code 130


def _buffered_stdout() -> None:
    """Under ``python -u`` / ``PYTHONUNBUFFERED`` stdout writes straight to the raw file, whose write may take part of
    a large document when the reader goes away and report no error, so a cut document would exit 0. A buffered
    writer (line-buffered: output still appears line by line) writes everything or raises BrokenPipeError (141)."""
    raw = getattr(sys.stdout, "buffer", None)
    if isinstance(raw, io.RawIOBase) and isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout = io.TextIOWrapper(
            io.BufferedWriter(raw), encoding=sys.stdout.encoding, errors=sys.stdout.errors, line_buffering=True
        )


def main() -> None:
    """Console-script entry point."""
    signal.signal(signal.SIGTERM, _sigterm)
    _buffered_stdout()
    app()
