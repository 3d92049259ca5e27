"""Domain errors. The CLI turns each into one line and exit code 1 (``--debug`` shows the traceback)."""


class LcrError(Exception):
    """Base class: the message says what was given, what is valid and how to fix it."""


class InputError(LcrError, ValueError):
    """A bad image, array or argument from the caller."""


class DataError(LcrError):
    """A data set folder that is missing, empty or unreadable."""


class ModelError(LcrError):
    """A model file, checkpoint or manifest that is missing, corrupt or does not match."""


class MissingDependencyError(LcrError, ImportError):
    """An optional dependency is not installed; the message names the pip extra."""


def require(module: str, extra: str, purpose: str):
    """Import an optional module or raise :class:`MissingDependencyError` naming the extra to install.

    Args:
        module: module to import, e.g. ``"torch"``.
        extra: pip extra of lcr-sdk that provides it, e.g. ``"train"``.
        purpose: what the caller wanted to do, for the message.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"{purpose} needs '{module}', which is not installed ({e}). Install it with: pip install 'lcr-sdk[{extra}]'"
        ) from e
