"""Crash-safe file writing, the one implementation every part of the SDK uses.

Rule: nothing is ever written in place. A file is written under a hidden temporary name in the same folder and
renamed onto its target (:func:`atomic_path`); a set of files is built in a hidden staging folder and renamed into
place (:func:`staging_dir`). A process killed at any moment leaves the old content or the new, never a mix.

Everything written here gets the permissions a plain ``open()`` would give under the process umask (``0o666`` or
``0o777`` minus the umask), not the ``0o600`` / ``0o700`` of :mod:`tempfile`, so a model or gallery made by one
user can be read by the service user that runs it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lcr_sdk.errors import InputError


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux: /proc/self/status)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    # elsewhere, set and restore at once: for that instant another thread's new file would ignore the umask
    mask = os.umask(0o077)  # so the instant errs towards owner-only, never world-writable
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Permissions a new file gets under the current umask (what ``open(path, "w")`` would give)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """Permissions a new folder gets under the current umask (what ``os.mkdir`` would give)."""
    return 0o777 & ~_umask()


def mib(nbytes: float | None) -> str:
    """A byte count as every full-disk message gives it: ``"12.3 MiB"`` (None counts as 0)."""
    return f"{(nbytes or 0) / 2**20:.1f} MiB"


def free_bytes(folder: str | os.PathLike[str]) -> int:
    """Free bytes on the disk of ``folder`` for this user, as a full-disk message gives them (0 if it cannot be
    asked)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # no space left; disk quota exceeded


def is_disk_full(exc: BaseException) -> bool:
    """Whether an exception means the disk (or the user's quota) is full: the one rule every writer uses.

    True for an ``OSError`` with ``ENOSPC`` or ``EDQUOT``, and for SQLite's ``database or disk is full``
    (``sqlite3.OperationalError`` carries no errno).
    """
    if isinstance(exc, OSError):
        return exc.errno in DISK_FULL_ERRNOS
    return type(exc).__module__ == "sqlite3" and "disk is full" in str(exc).lower()


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a file's content to disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (renames into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable(folder: str | os.PathLike[str], what: str) -> None:
    """Refuse a folder the process cannot create files in (permissions, a read-only file system), before any work:
    a file is tried there, so read-only file systems and root are judged right, not only permission bits.

    Raises:
        InputError: the folder cannot be written; names ``what`` and the folder.
    """
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".lcr-write-check-"):
            pass
    except OSError as e:
        raise InputError(
            f"cannot write {what}: folder {folder} is not writable ({e.strerror}); choose a folder you may write, "
            "or fix its permissions"
        ) from e


def check_can_create(path: str | os.PathLike[str], what: str) -> None:
    """:func:`check_writable` for a ``path`` (file or folder, existing or to be made): the nearest existing folder
    on its way must accept a new file.

    Raises:
        InputError: names ``what``, the path, the folder and the reason.
    """
    folder = Path(path)
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    check_writable(folder, f"{what} {path}")


def _check_parent(path: Path) -> None:
    if not path.parent.is_dir():
        what = "is a file" if path.parent.exists() else "does not exist"
        raise InputError(f"cannot write {path}: folder {path.parent} {what}; create the folder or choose another path")
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a folder; give a file name inside it")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], fsync: bool = True, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    On any exception (Ctrl+C included) the temporary file is removed and ``path`` is left as it was (old content
    or absent).

    Args:
        path: the file to (re)write.
        fsync: flush to disk before the rename (off for frame streams, where a lost last frame does not matter).
        suffix: ending of the temporary name; a writer that picks its format by extension (OpenCV's
            VideoWriter) needs the target's, e.g. ``".partial.mp4"``.

    Raises:
        InputError: the folder does not exist, or ``path`` is a folder.
    """
    path = Path(path)
    _check_parent(path)
    made: list[Path] = []  # filled before a held stop is let through, so the cleanup below always knows the name
    try:
        _new_temp(path, suffix, made)
        tmp = made[0]
        os.chmod(tmp, file_mode())
        yield tmp
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, path)
    except OSError as e:
        for tmp in made:
            tmp.unlink(missing_ok=True)
        # name the file the caller asked for, not our temp name
        if e.filename in [str(t) for t in made] or e.filename is None:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    except BaseException:
        for tmp in made:
            tmp.unlink(missing_ok=True)
        raise


def _new_temp(path: Path, suffix: str, made: list[Path]) -> None:
    """Create an empty temporary file ``.NAME.XXXXXXXX<suffix>`` beside ``path`` and append its name to ``made``.

    The name is recorded before the file is created (exclusively, so an existing file is never taken over): a stop
    whose handler raises at any moment leaves either no file or one whose name the caller's cleanup knows. (Holding
    the signals instead would not be enough: in a program with other threads the kernel hands a process-directed
    signal to a thread that does not block it.)
    """
    for _ in range(100):
        name = path.parent / f".{path.name}.{''.join(secrets.choice(_TEMP_CHARS) for _ in range(8))}{suffix}"
        made.append(name)
        try:
            _create_exclusive(name)
            return
        except FileExistsError:
            made.remove(name)
        except OSError as e:  # read-only media, no permission, full disk: name the file asked for, not the temp name
            made.remove(name)
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    raise OSError(errno.EEXIST, "no free temporary name", str(path))


_TEMP_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"


def _create_exclusive(name: Path) -> None:
    """Create ``name`` empty (owner-only until :func:`atomic_path` sets its mode); FileExistsError if it exists."""
    os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_staging(parent: str | os.PathLike[str], prefix: str) -> list[Path]:
    """Remove staging folders ``parent/{prefix}<pid>-*`` whose process is gone (left by a killed run).

    Folders of live processes (a concurrent writer) are kept. Returns the folders removed.
    """
    removed = []
    for p in Path(parent).glob(f"{prefix}*"):
        pid = p.name[len(prefix) :].split("-", 1)[0]
        if p.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def staging_dir(parent: str | os.PathLike[str], prefix: str) -> Iterator[Path]:
    """A hidden folder ``parent/{prefix}<pid>-XXXX`` to build files in, removed on exit (whatever is left in it).

    It is on the same file system as ``parent``, so renaming files (or the folder itself) out of it is atomic.
    Leftovers of killed processes with the same prefix are removed first.

    Raises:
        InputError: ``parent`` does not exist or is not writable.
    """
    parent = Path(parent)
    if not parent.is_dir():
        raise InputError(f"output folder {parent} does not exist; create it first or choose another output path")
    remove_stale_staging(parent, prefix)
    try:
        path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
        os.chmod(path, dir_mode())
    except OSError as e:
        raise InputError(f"cannot write to folder {parent} ({e.strerror}); choose another output path") from e
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def error_under_target(e: OSError, stage: Path, target: Path) -> OSError:
    """``e`` (a failed write under the staging folder ``stage``) naming the path under ``target`` that the file was
    going to become, so a message never shows the hidden staging folder; ``e`` itself for any other path."""
    try:
        rel = Path(e.filename).relative_to(stage) if e.filename else None
    except ValueError:  # not a file of the staging folder (a source file, say)
        return e
    if e.errno is None:
        return e
    return OSError(e.errno, e.strerror or str(e), str(target / rel) if rel is not None else str(target))


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
