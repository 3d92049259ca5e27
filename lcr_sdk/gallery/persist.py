"""How a gallery commits: save, commit, compact, refresh and load, one writer at a time.

Every function takes a gallery's :class:`~lcr_sdk.gallery.contents.Contents` (what it holds) and its
:class:`~lcr_sdk.gallery.search.Searcher` (its index), and writes through :mod:`lcr_sdk.gallery.store` (format 2)
under the gallery's cross-process lock: a commit is one transaction with O(changes) I/O, and changes committed by
other processes meanwhile are kept. A format-1 folder (:mod:`lcr_sdk.gallery.legacy`) is read as it is and rewritten
in format 2 at its first commit, unless another process changed it since it was read (then nothing is written).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lcr_sdk.errors import InputError
from lcr_sdk.fileio import free_bytes, is_disk_full, mib
from lcr_sdk.gallery import calibrate, legacy, store
from lcr_sdk.gallery.contents import Contents
from lcr_sdk.gallery.search import Searcher, parse_index

UNCHANGED = "the saved gallery is unchanged; pending changes are kept"


class _DiskFull(InputError):
    """The write failed for want of space (a later try may pass)."""


def write_or_explain(root: Path, write: Callable[[], Any], outcome: str = UNCHANGED) -> Any:
    """Run a write; turn a full disk or a refused write into one :class:`InputError` whose message ends with
    ``outcome`` (what the failure left: by default nothing committed).

    A full disk is what :func:`lcr_sdk.fileio.is_disk_full` says it is (no space, a user's quota used up, SQLite's
    "database or disk is full").
    """
    try:
        return write()
    except (sqlite3.Error, OSError) as e:
        if is_disk_full(e):
            quota = "; the user's disk quota is used up" if getattr(e, "errno", None) == errno.EDQUOT else ""
            raise _DiskFull(
                f"cannot write gallery {root}: the disk is full ({mib(free_bytes(root))} free{quota}); "
                f"free space and try again ({outcome})"
            ) from None
        if isinstance(e, OSError) and e.errno == errno.ELOOP:  # a file opened with O_NOFOLLOW is a link
            raise InputError(
                f"cannot write gallery {root}: {Path(str(e.filename)).name} is a symbolic link and a gallery never "
                "follows a link out of its folder; restore the gallery from a backup"
            ) from None
        why = (e.strerror or e) if isinstance(e, OSError) else e
        raise InputError(f"cannot write gallery {root} ({why}); {outcome}") from None


# -- writing ------------------------------------------------------------------------------------------------------


def save(c: Contents, s: Searcher, directory: str | os.PathLike[str], replace: bool, progress: bool) -> Path:
    """Save to ``directory`` (see :meth:`Gallery.save`); returns the version folder."""
    root = Path(directory)
    same = c.root is not None and root.resolve() == c.root.resolve()
    if same and not c.legacy:
        commit(c, s)
        assert c.saved is not None
        return c.saved.ver.folder
    store.check_target(root)
    if store.is_gallery(root) and not replace and not same:
        raise InputError(f"{root} already holds a gallery; pass replace=True (--replace) to replace it")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create gallery folder {root} ({e.strerror}); choose another path") from e
    with store.GalleryLock(root).hold(True):
        if same:
            _check_unchanged(c, root)
        return write_all(c, s, root, progress)


def write_all(
    c: Contents, s: Searcher, root: Path, progress: bool = False, index: bool = True, outcome: str = UNCHANGED
) -> Path:
    """Write the whole gallery as a new version of ``root`` and attach to it (the caller holds the lock)."""
    calibrate.current(c)
    writer = s.writer(c.dtype, progress) if index else None
    folder: Path = write_or_explain(root, lambda: store.write_version(root, c.meta(), c.chunks(), writer), outcome)
    attach(c, s, store.Saved(root, store.Version(root, folder), c.mmap))
    return folder


def commit(c: Contents, s: Searcher) -> None:
    """Write pending changes into the attached folder (see :meth:`Gallery.commit`)."""
    if c.root is None:
        raise InputError("this gallery is not saved anywhere yet; call save(folder) first")
    root = c.root
    with store.GalleryLock(root).hold(True):
        if c.legacy:  # format 1: the first commit rewrites it in format 2
            _check_unchanged(c, root)
            write_all(c, s, root)
            return
        saved = refresh_locked(c, s)
        if c.pending.changes or saved.meta.image_root != c.image_root or saved.meta.next_id < c.next_id:
            new, vecs = c.pending_items()
            removed = c.pending.removed
            write_or_explain(root, lambda: saved.commit(new, vecs, removed, c.next_id, c.image_root))
            c.pending.clear()
            c.changed()
        try:
            _maintain_locked(c, s)
        except _DiskFull as e:  # the commit stands; the upkeep is tried again at the next commit
            warnings.warn(str(e), stacklevel=3)  # <- commit <- Gallery.commit's caller


UPKEEP_FAILED = (
    "the changes are committed; only the upkeep after it (moving new vectors into the vector file, compaction) "
    "failed, and the next commit tries it again"
)


def _maintain_locked(c: Contents, s: Searcher) -> None:
    """After a commit: move a full tail into the vector file, compact, save the index and calibration."""
    saved = c.saved
    assert saved is not None and c.root is not None
    # opens the vector file without following a link
    write_or_explain(c.root, saved.checkpoint_if_full, UPKEEP_FAILED)
    c.changed()
    if saved.compaction_due:
        write_all(c, s, c.root, index=False, outcome=UPKEEP_FAILED)
        saved = c.saved
        assert saved is not None
    if s.index is not None:
        s.persist(c, locked=True)
    cal = calibrate.current(c)
    if cal.to_dict() != saved.meta.calibration:
        saved.record(calibration=cal.to_dict())


def compact(c: Contents, s: Searcher) -> Path:
    """Rewrite the saved gallery without its removed slots (see :meth:`Gallery.compact`)."""
    if c.root is None or c.saved is None:
        raise InputError("only a saved gallery can be compacted; call save(folder) first")
    if c.pending.changes:
        raise InputError(f"{c.pending.changes} changes are pending; commit() them before compacting")
    with store.GalleryLock(c.root).hold(True):
        refresh_locked(c, s)
        return write_all(c, s, c.root, index=False)


def set_index(c: Contents, s: Searcher, index: str) -> None:
    """Search with another index spec; a saved gallery records it at once (see :meth:`Gallery.set_index`)."""
    kept = s.use(parse_index(index, c.dim))
    c.index = index
    if c.saved is not None and c.root is not None:
        with store.GalleryLock(c.root).hold(True):
            saved = refresh_locked(c, s)
            if kept:  # the same index with other search parameters: its saved file stays valid
                saved.record(index=index)
                return
            old = saved.meta.index_file
            saved.record(index=index, index_file="", index_count=0)
            if old:
                (saved.ver.folder / old).unlink(missing_ok=True)


def replace(c: Contents, s: Searcher, target: Path, seen: tuple[str, int] | None, progress: bool) -> Path:
    """Write ``c`` over the gallery at ``target`` unless it changed since ``seen`` (:func:`version_seen`)."""
    with store.GalleryLock(target).hold(True):
        if seen is None or _version_now(target) != seen:
            raise InputError(
                f"gallery {target} changed while it was re-embedded (another process committed to it); "
                "nothing was replaced: run the rebuild again"
            )
        return write_all(c, s, target, progress)


def version_seen(c: Contents) -> tuple[str, int] | None:
    """Which committed state of its folder ``c`` holds: (version folder, commits into it); -1 for format 1."""
    if c.legacy:
        return c.legacy, -1
    if c.saved is not None:
        return c.saved.ver.name, c.saved.gen
    return None


def _version_now(root: Path) -> tuple[str, int]:
    """The committed state of the folder now (the caller holds the lock)."""
    ver = store.open_version(root)
    if ver is None:
        return store.current_version(root).name, -1
    try:
        return ver.name, ver.meta.generation
    finally:
        ver.close()


def _check_unchanged(c: Contents, root: Path) -> None:
    """Refuse to rewrite a format-1 folder that another process changed since ``c`` read it (its commit would be
    lost)."""
    if _version_now(root) != version_seen(c):
        raise InputError(
            f"gallery {root} was changed by another process since it was loaded (its first commit moved it to the "
            "current format); nothing was written: load it again and repeat these changes"
        )


# -- reading ------------------------------------------------------------------------------------------------------


def refresh(c: Contents, s: Searcher) -> bool:
    """Bring in changes other processes committed; returns whether any were (see :meth:`Gallery.refresh`)."""
    if c.root is None or c.saved is None:
        return False
    before = (c.saved.ver.name, c.saved.gen, c.saved.meta.synced)
    with store.GalleryLock(c.root).hold(False):
        saved = refresh_locked(c, s)
    return (saved.ver.name, saved.gen, saved.meta.synced) != before


def refresh_locked(c: Contents, s: Searcher) -> store.Saved:
    """The saved view brought up to date (the caller holds a lock)."""
    assert c.saved is not None
    saved = c.saved.current()
    if saved is not c.saved:
        attach(c, s, saved, keep_pending=True)
    else:
        c.adopt(saved)
    return saved


def attach(c: Contents, s: Searcher, saved: store.Saved, keep_pending: bool = False) -> None:
    """Attach to a saved version: its fields, its committed slots and its index spec (pending changes kept if
    asked)."""
    c.attach(saved, keep_pending)
    s.spec, s.index = parse_index(c.index, c.dim), None


def load(root: Path, mmap: bool) -> tuple[Contents, Searcher]:
    """Open the gallery saved at ``root`` (see :meth:`Gallery.load`)."""
    if not root.is_dir():
        what = "a file, not a gallery folder" if root.exists() else "no such folder"
        raise InputError(f"{root} is not a saved gallery ({what}); give the folder `lcr-sdk gallery build --out` wrote")
    store.current_version(root)  # a folder that is no gallery is refused before a lock file is made in it
    with store.GalleryLock(root).hold(False):
        ver = store.open_version(root)
        if ver is None:
            c, s = _load_v1(root, legacy.read_v1(store.current_version(root), mmap))
            c.mmap = mmap  # for the format-2 version its first commit writes
            return c, s
        try:
            meta = ver.meta
            try:
                spec = parse_index(meta.index, meta.dim)
            except InputError as e:
                raise store.damaged(ver.folder, f"its index spec {meta.index!r} is not valid: {e}") from None
            c, s = Contents(meta.dim, meta.dtype, meta.model_sha256, meta.index), Searcher(spec, meta.dim)
            c.mmap = mmap
            attach(c, s, store.Saved(root, ver, mmap))
        except BaseException:
            ver.close()
            raise
    return c, s


def _load_v1(root: Path, old: legacy.V1Gallery) -> tuple[Contents, Searcher]:
    h = old.header
    index = h.get("index", "exact")
    try:
        spec = parse_index(index, h["dim"])
    except InputError as e:
        raise store.damaged(old.folder, f"its index spec {index!r} is not valid: {e}") from None
    c, s = Contents(h["dim"], "float32", h["model_sha256"], index), Searcher(spec, h["dim"])
    for i, lab in zip(old.ids, old.labels, strict=True):
        store.check_text(i, "id")
        store.check_text(lab, "label")
    store.check_vectors(old.folder, old.vectors, "float32")
    c.pending.add(old.vectors, old.ids, old.labels, old.metadata, {})
    next_id = h.get("next_id", len(old.ids))
    c.next_id = next_id if isinstance(next_id, int) and not isinstance(next_id, bool) else len(old.ids)
    root_str = h.get("image_root", "")
    c.image_root = root_str if isinstance(root_str, str) else ""
    c.root, c.legacy = root, old.folder.name
    c.changed()
    return c, s
