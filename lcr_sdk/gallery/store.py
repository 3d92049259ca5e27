"""Gallery persistence (format 2): append-only vectors, items in SQLite, one writer at a time, crash-safe.

Layout of a gallery folder ``DIR``::

    DIR/.lock              the cross-process lock (flock): writers exclusive, loads shared
    DIR/CURRENT            names the live version folder (written atomically)
    DIR/v000003/gallery.db SQLite in WAL mode: meta, items, kv (metadata index), crops, tail, dead
    DIR/v000003/vectors.f32 (or .f16) raw row-major vectors of slots 0..synced-1
    DIR/v000003/index-<n>.faiss  a persisted FAISS index over slots 0..n-1 (if the gallery has one)

An enrolment (``Gallery.commit``) is one SQLite transaction inside the current version folder: the new items, their
vectors as rows of ``tail`` and the removed slots in ``dead``. WAL mode makes that one fsync, whatever the gallery's
size. When ``tail`` holds :data:`TAIL_ROWS` vectors they are appended to the vector file (fsynced) and then dropped
from ``tail`` in a second transaction: a kill between the two leaves bytes past ``synced`` that nothing reads.
When removed slots reach :data:`COMPACT_FRACTION` of the gallery, the whole gallery is rewritten into a new version
folder which ``CURRENT`` then names (:func:`write_version`, the same path that saves a new or replaced gallery).
So every enrolment or removal costs O(1) I/O amortised, and a process killed at any moment leaves the last
committed state.

Readers hold the shared lock only while they open a version (read CURRENT, the meta and the tail, map the vector
file); writers hold the exclusive lock for a commit. A reader therefore never sees a half-switched version.

The item tables (``items``: id, label, metadata JSON; ``kv``: the metadata index; ``crops``) serve a saved gallery
and the not-yet-committed items of a :class:`~lcr_sdk.gallery.Gallery` (an in-memory SQLite database,
:func:`memory_db`) alike, so lookups, filters and samples are written once. An item's ``row`` is its slot, its
position in the gallery's vector array. Rows only grow; a removed item leaves a dead slot until compaction renumbers
them. Top-level metadata values that are scalars (str, int, float, bool, None) are also stored in ``kv`` as (key,
JSON text of the value, row), indexed, so ``where={"shop": 3}`` is an index lookup.

Sections: the item tables, the folder layout, locking, meta, an open version folder, writing a whole version, the
committed view of an attached gallery (:class:`Saved`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lcr_sdk._version import __version__
from lcr_sdk.errors import InputError
from lcr_sdk.fileio import atomic_write_text, free_bytes, fsync_dir, fsync_file, is_disk_full, mib, staging_dir
from lcr_sdk.redact import redact

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

FORMAT = "lcr-sdk-gallery"  # the format name, in every version's meta (and format 1's header.json)
FORMAT_VERSION = 2
VERSION_DIR = re.compile(r"^v(\d{6})$")  # the version folders CURRENT may name (both formats)
DB = "gallery.db"
DTYPES = ("float32", "float16")
TAIL_ROWS = 4096  # committed vectors kept in SQLite before they are appended to the vector file
COMPACT_MIN_DEAD = 1024  # compaction once removed slots are this many ...
COMPACT_FRACTION = 0.25  # ... and this share of all slots
LOCK_TIMEOUT = 60.0  # seconds a writer waits for another writer
INDEX_FILE = re.compile(r"^index-(\d+)\.faiss$")
_STORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tail (row INTEGER PRIMARY KEY, vector BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS dead (seq INTEGER PRIMARY KEY AUTOINCREMENT, row INTEGER NOT NULL);
"""
_META_TYPES: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "dim": int,
    "dtype": str,
    "model_sha256": str,
    "index": str,
    "next_id": int,
    "image_root": str,
    "count": int,
    "synced": int,
    "generation": int,
    "index_file": str,
    "index_count": int,
    "calibration": (dict, type(None)),
}

ITEM_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (row INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, label TEXT NOT NULL,
                                  metadata TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS items_label ON items(label);
CREATE TABLE IF NOT EXISTS kv (key TEXT NOT NULL, value TEXT NOT NULL, row INTEGER NOT NULL,
                               PRIMARY KEY (key, value, row)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_row ON kv(row);
CREATE TABLE IF NOT EXISTS crops (row INTEGER PRIMARY KEY, image BLOB NOT NULL);
"""
_CHUNK = 500  # parameters per IN (...) query (SQLite allows 999 in old builds)
Scalar = str | int | float | bool | None


# -- the item tables: ids, labels, metadata and crops of gallery rows ---------------------------------------------


def create_item_tables(conn: sqlite3.Connection) -> None:
    """Create the item tables (idempotent)."""
    conn.executescript(ITEM_SCHEMA)


def memory_db() -> sqlite3.Connection:
    """A private in-memory item database (pending items of a gallery)."""
    conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    create_item_tables(conn)
    return conn


def is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def kv_rows(row: int, metadata: dict[str, Any]) -> list[tuple[str, str, int]]:
    """The indexed (key, JSON value, row) entries of one item's metadata: its top-level scalar values."""
    return [(k, json.dumps(v), row) for k, v in metadata.items() if is_scalar(v)]


def insert_items(
    conn: sqlite3.Connection,
    rows: Sequence[int],
    ids: Sequence[str],
    labels: Sequence[str],
    metadata: Sequence[dict[str, Any]],
    crops: dict[int, bytes] | None = None,
) -> None:
    """Insert items (inside the caller's transaction). ``crops`` maps a row to its encoded image."""
    conn.executemany(
        "INSERT INTO items (row, id, label, metadata) VALUES (?, ?, ?, ?)",
        ((r, i, lab, json.dumps(m)) for r, i, lab, m in zip(rows, ids, labels, metadata, strict=True)),
    )
    conn.executemany(
        "INSERT INTO kv (key, value, row) VALUES (?, ?, ?)",
        (e for r, m in zip(rows, metadata, strict=True) for e in kv_rows(r, m)),
    )
    if crops:
        conn.executemany("INSERT INTO crops (row, image) VALUES (?, ?)", crops.items())


def delete_items(conn: sqlite3.Connection, rows: Iterable[int]) -> None:
    """Delete items by row (inside the caller's transaction)."""
    for part in _chunks(list(rows)):
        marks = ",".join("?" * len(part))
        for table in ("items", "kv", "crops"):
            conn.execute(f"DELETE FROM {table} WHERE row IN ({marks})", part)


def rows_of_ids(conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, int]:
    """Map the given ids that exist to their rows."""
    found: dict[str, int] = {}
    for part in _chunks(list(ids)):
        q = f"SELECT id, row FROM items WHERE id IN ({','.join('?' * len(part))})"
        found.update(conn.execute(q, part).fetchall())
    return found


def damaged_item(item_id: Any, why: str) -> InputError:
    """The error for a stored item that no writer of this SDK could have made (edited, or damaged on disk)."""
    return InputError(
        f"gallery item {item_id!r:.80} is damaged ({why}); restore the gallery from a backup, or rebuild it with "
        "`lcr-sdk gallery build`"
    )


def not_json(constant: str) -> Any:
    """``parse_constant`` for :func:`json.loads`: NaN and Infinity are not JSON (Python's json reads them)."""
    raise ValueError(f"{constant} is not valid JSON")


def parse_metadata(item_id: str, text: Any) -> dict[str, Any]:
    """A stored item's metadata: a JSON object of finite values.

    Raises:
        InputError: anything else (not text, not JSON, NaN or Infinity, nested too deeply, not an object).
    """
    if not isinstance(text, str):
        raise damaged_item(item_id, f"its metadata is stored as {type(text).__name__}, not JSON text")
    try:
        meta = json.loads(text, parse_constant=not_json)
    except RecursionError:
        raise damaged_item(item_id, "its metadata is nested too deeply to read") from None
    except ValueError as e:
        raise damaged_item(item_id, f"its metadata is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise damaged_item(item_id, f"its metadata {text[:60]!r} is not a JSON object")
    return meta


def check_stored(item_id: Any, label: Any) -> None:
    """Refuse an id or label that is not stored as text (SQLite keeps whatever type an edit wrote)."""
    if not isinstance(item_id, str):
        raise damaged_item(item_id, f"an id is stored as {type(item_id).__name__}, not text")
    if not isinstance(label, str):
        raise damaged_item(item_id, f"its label is stored as {type(label).__name__}, not text")


def fetch_items(conn: sqlite3.Connection, rows: Sequence[int]) -> dict[int, tuple[str, str, dict[str, Any]]]:
    """(id, label, metadata) of the given rows that exist (each checked as it is read)."""
    out: dict[int, tuple[str, str, dict[str, Any]]] = {}
    for part in _chunks([int(r) for r in rows]):
        q = f"SELECT row, id, label, metadata FROM items WHERE row IN ({','.join('?' * len(part))})"
        for r, i, lab, m in conn.execute(q, part):
            check_stored(i, lab)
            out[r] = (i, lab, parse_metadata(i, m))
    return out


def read_crop(conn: sqlite3.Connection, row: int) -> bytes | None:
    """The stored encoded crop of a row, if any."""
    hit = conn.execute("SELECT image FROM crops WHERE row = ?", (int(row),)).fetchone()
    if hit is not None and not isinstance(hit[0], bytes):
        raise damaged_item(f"row {row}", f"its stored image is {type(hit[0]).__name__}, not encoded image bytes")
    return bytes(hit[0]) if hit else None


def decode_crop(item_id: str, data: bytes) -> np.ndarray:
    """Decode an item's stored crop (BGR uint8) within the image pixel limit, like any image file.

    Raises:
        InputError: the bytes are not an image, or their header declares more pixels than the limit (checked before
            decoding: a crafted header is one error, not a decode of its declared size).
    """
    from lcr_sdk.images import decode_image

    return decode_image(data, f"the stored crop of gallery item {item_id!r:.80}")


def redact_values(value: Any) -> Any:
    """A JSON-like value with the credentials in every string (a source URI's password) hidden by
    :func:`lcr_sdk.redact.redact`: what a gallery stores and prints of item metadata."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_values(v) for v in value]
    return value


def count_items(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])


def iter_items(
    conn: sqlite3.Connection, with_crops: bool = False, batch: int = 10_000
) -> Iterator[list[tuple[int, str, str, str, bytes | None]]]:
    """All items in row order, in batches of (row, id, label, metadata JSON, crop or None); ids and labels are
    checked to be text (metadata is checked where it is parsed: :func:`parse_metadata`)."""
    last = -1
    crop_col = "(SELECT image FROM crops c WHERE c.row = i.row)" if with_crops else "NULL"
    q = f"SELECT row, id, label, metadata, {crop_col} FROM items i WHERE row > ? ORDER BY row LIMIT ?"
    while True:
        part = conn.execute(q, (last, batch)).fetchall()
        if not part:
            return
        for r in part:
            check_stored(r[1], r[2])
            if r[4] is not None and not isinstance(r[4], bytes):
                raise damaged_item(r[1], f"its stored image is {type(r[4]).__name__}, not encoded image bytes")
        yield part
        last = part[-1][0]


def filter_rows(
    conn: sqlite3.Connection, labels: Sequence[str] | None = None, where: dict[str, Scalar] | None = None
) -> np.ndarray:
    """Sorted rows of the items whose label is one of ``labels`` and whose metadata matches every ``where`` pair.

    Both are index lookups (``items_label``, ``kv``), not scans of the metadata.
    """
    clauses: list[str] = []
    params: list[Any] = []
    if labels is not None:
        clauses.append(f"row IN (SELECT row FROM items WHERE label IN ({','.join('?' * len(labels))}))")
        params += list(labels)
    for key, value in (where or {}).items():
        clauses.append("row IN (SELECT row FROM kv WHERE key = ? AND value = ?)")
        params += [key, json.dumps(value)]
    q = "SELECT row FROM items" + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY row"
    return np.fromiter((r for (r,) in conn.execute(q, params)), dtype=np.int64)


def labels_of(conn: sqlite3.Connection, rows: Sequence[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    for part in _chunks([int(r) for r in rows]):
        q = f"SELECT row, id, label FROM items WHERE row IN ({','.join('?' * len(part))})"
        for r, i, lab in conn.execute(q, part):
            check_stored(i, lab)
            out[r] = lab
    return out


def same_label(conn: sqlite3.Connection, label: str, start: int, limit: int) -> list[int]:
    """Up to ``limit`` rows with ``label``, from row ``start`` on, wrapping to the first ones (an index range scan)."""
    found = [
        r for (r,) in conn.execute("SELECT row FROM items WHERE label = ? AND row >= ? LIMIT ?", (label, start, limit))
    ]
    if len(found) < limit:
        q = "SELECT row FROM items WHERE label = ? AND row < ? LIMIT ?"
        found += [r for (r,) in conn.execute(q, (label, start, limit - len(found)))]
    return found


def check_text(value: str, what: str, fix: str = "or pass another id") -> None:
    """Refuse strings SQLite cannot store: lone surrogates (file names that are not UTF-8) and NUL characters
    (``fix``: the way out besides renaming, as the caller offers it)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        shown = value.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
        raise InputError(
            f"{what} {shown!r} is not valid UTF-8 (a file name in another encoding?); rename it to UTF-8 "
            f"(e.g. `convmv -f latin1 -t utf8 -r --notest DIR`){' ' + fix if fix else ''}"
        ) from None
    if "\x00" in value:
        raise InputError(f"{what} {value!r} contains a NUL character; remove it")


def _chunks(values: list[Any]) -> Iterator[list[Any]]:
    for i in range(0, len(values), _CHUNK):
        yield values[i : i + _CHUNK]


# -- the folder layout --------------------------------------------------------------------------------------------


def check_dtype(dtype: Any, option: str = "dtype") -> str:
    """The one check of the vector storage option; the CLI and the examples pass its error through (``option``:
    how the caller spells it, e.g. ``--dtype``)."""
    if dtype not in DTYPES:
        raise InputError(f"{option}={dtype!r} is not valid; use one of: {', '.join(DTYPES)} (float16: half the size)")
    return str(dtype)


def vector_file(dtype: str) -> str:
    return "vectors.f16" if dtype == "float16" else "vectors.f32"


def plain_file(path: Path) -> bool:
    """Whether ``path`` is a regular file and not a link (a gallery never follows a link out of its folder)."""
    return path.is_file() and not path.is_symlink()


def damaged(where: Path, why: str) -> InputError:
    """The error for a gallery folder that cannot be read as saved. ``lcr-sdk gallery rebuild`` is no way out: it
    loads the gallery first, so the fix is a backup or a new build from the images."""
    return InputError(
        f"gallery {where} is damaged ({why}); restore it from a backup, or build it again from its images with "
        "`lcr-sdk gallery build MODEL IMAGES --out GALLERY --replace`"
    )


def current_version(root: Path) -> Path:
    """The version folder ``root/CURRENT`` names, validated: a ``vNNNNNN`` folder directly inside ``root``.

    Raises:
        InputError: no CURRENT, or it names anything else (an absolute path, ``..``, a missing folder).
    """
    current = root / "CURRENT"
    if not current.is_file():
        raise InputError(f"{root} is not a saved gallery (no CURRENT file); build one with `lcr-sdk gallery build`")
    try:
        name = current.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"gallery {root}: CURRENT cannot be read ({e}); restore the gallery from a backup") from e
    if not VERSION_DIR.match(name):
        raise InputError(
            f"gallery {root}: CURRENT holds {name[:80]!r}, but it must name a version folder inside the gallery "
            "(v000001 ... v999999); restore the gallery from a backup or rebuild it with `lcr-sdk gallery build`"
        )
    folder = root / name
    if folder.is_symlink():
        raise InputError(
            f"gallery {root}: CURRENT names {name}, which is a symbolic link; a gallery never follows a link out of "
            "its folder: restore the gallery from a backup, or rebuild it with `lcr-sdk gallery build`"
        )
    if not folder.is_dir():
        raise InputError(
            f"gallery {root}: CURRENT names {name}, which does not exist; the gallery is damaged: restore it from a "
            "backup or rebuild it with `lcr-sdk gallery build`"
        )
    return folder


# -- locking ------------------------------------------------------------------------------------------------------


class GalleryLock:
    """The gallery's cross-process lock: ``flock`` on ``DIR/.lock`` (exclusive for writers, shared for loads).

    Where the lock file cannot be created (a read-only gallery), a shared lock is skipped: nobody can write there.
    """

    def __init__(self, root: Path):
        self.path = root / ".lock"

    @contextlib.contextmanager
    def hold(self, exclusive: bool, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        if fcntl is None:  # Windows: no flock; one writer per gallery is then the caller's job
            yield
            return
        nofollow = getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | nofollow, 0o666)  # the umask applies
        except OSError as e:
            if self.path.is_symlink():
                raise InputError(
                    f"gallery {self.path.parent}: its lock file .lock is a symbolic link; a gallery never follows a "
                    "link out of its folder: remove the link (the next writer creates the lock file)"
                ) from None
            if exclusive and is_disk_full(e):
                free = mib(free_bytes(self.path.parent))
                raise InputError(
                    f"cannot write gallery {self.path.parent}: the disk is full ({free} free), so its lock file .lock "
                    "cannot be created; free space and try again (nothing was written)"
                ) from None
            shared_ok = (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOENT, errno.ENOSPC, errno.EDQUOT)
            if exclusive or e.errno not in shared_ok:
                raise InputError(
                    f"cannot lock gallery {self.path.parent} for writing ({e.strerror}); check that the folder "
                    "exists and is writable by this user"
                ) from e
            try:
                fd = os.open(self.path, os.O_RDONLY | nofollow)
            except OSError:
                yield  # read-only media (or a full disk) without a lock file: no writer can create it either
                return
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise InputError(
                            f"gallery {self.path.parent} is being written by another process (waited {timeout:.0f} s "
                            "for its lock); try again when it has finished"
                        ) from None
                    time.sleep(0.005)
            yield
        finally:
            os.close(fd)  # releases the lock


# -- meta ---------------------------------------------------------------------------------------------------------


@dataclass
class Meta:
    """The gallery-wide fields of a format-2 version folder (the ``meta`` table)."""

    dim: int
    dtype: str = "float32"
    model_sha256: str = ""
    index: str = "exact"
    next_id: int = 0
    image_root: str = ""
    count: int = 0  # slots (live and dead)
    synced: int = 0  # slots whose vectors are in the vector file; slots synced..count-1 are rows of `tail`
    generation: int = 0  # commits into this version folder
    index_file: str = ""
    index_count: int = 0
    calibration: dict[str, Any] | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def row_bytes(self) -> int:
        return self.dim * np.dtype(self.dtype).itemsize

    def rows(self) -> list[tuple[str, str]]:
        d = {k: getattr(self, k) for k in _META_TYPES}
        d["created_by"] = f"lcr-sdk {__version__}"
        return [(k, json.dumps(v)) for k, v in d.items()]


def read_meta(conn: sqlite3.Connection, folder: Path) -> Meta:
    """Read and validate the meta table.

    Raises:
        InputError: a field is missing or of the wrong type or value (the message names it).
    """
    values = _meta_values(conn, folder)
    for key, kind in _META_TYPES.items():
        if key not in values:
            raise damaged(folder, f"meta has no {key!r}")
        v = values[key]
        if not isinstance(v, kind) or (isinstance(v, bool) and kind is int):
            raise damaged(folder, f"meta {key!r} is {v!r}")
    if values["format"] != FORMAT:
        raise damaged(folder, f"meta format is {values['format']!r}, not {FORMAT!r}")
    if values["format_version"] != FORMAT_VERSION:
        raise InputError(
            f"gallery {folder} has format version {values['format_version']}; this lcr-sdk {__version__} reads "
            f"versions 1 and {FORMAT_VERSION}: upgrade lcr-sdk (pip install -U lcr-sdk)"
        )
    meta = Meta(**{k: values[k] for k in _META_TYPES})
    if meta.dim < 1 or meta.dtype not in DTYPES:
        raise damaged(folder, f"meta says dim {meta.dim}, dtype {meta.dtype!r} (valid dtypes: {', '.join(DTYPES)})")
    if not 0 <= meta.synced <= meta.count or meta.next_id < 0:
        raise damaged(folder, f"meta says count {meta.count}, synced {meta.synced}, next_id {meta.next_id}")
    if meta.index_file and (not INDEX_FILE.match(meta.index_file) or not 0 < meta.index_count <= meta.count):
        raise damaged(folder, f"meta names index file {meta.index_file!r} over {meta.index_count} slots")
    return meta


def _meta_values(conn: sqlite3.Connection, folder: Path) -> dict[str, Any]:
    """The meta table's values parsed from JSON, not yet checked."""
    try:
        raw = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.Error as e:
        raise damaged(folder, f"its meta table cannot be read: {e}") from e
    values = {}
    for k, v in raw.items():
        try:
            values[k] = json.loads(v, parse_constant=not_json)
        except RecursionError:
            raise damaged(folder, f"meta {k!r:.40} is nested too deeply to read") from None
        except (TypeError, ValueError) as e:
            raise damaged(folder, f"meta {k!r:.40} is not JSON ({e})") from None
    return values


# -- an open version folder -----------------------------------------------------------------------------------------


def _uri(path: Path, **query: str) -> str:
    return path.resolve().as_uri() + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


SHM_SPACE = 64 * 1024  # free bytes SQLite needs to create a WAL database's shared-memory file (32 KiB), with margin
READ_ONLY, NO_SPACE = "read-only", "disk full"  # why a connection is immutable (see _connect)


def _no_space(e: sqlite3.Error, folder: Path) -> bool:
    """Whether opening a database failed for want of disk space: SQLite could not size its shared-memory file
    (``SQLITE_IOERR_SHMSIZE``, named from Python 3.11; it reports a plain "disk I/O error"), or the disk has no room
    for it (too few free bytes, or no free inode to create it: SQLite then says "unable to open database file")."""
    if is_disk_full(e) or getattr(e, "sqlite_errorname", "") == "SQLITE_IOERR_SHMSIZE":
        return True
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs (Windows)
        return False
    return st.f_bavail * st.f_frsize < SHM_SPACE or (st.f_files > 0 and st.f_favail == 0)


def _connect(db: Path) -> tuple[sqlite3.Connection, str]:
    """Open ``db`` (read-write where allowed); returns the connection and, where it is read as SQLite ``immutable``,
    why: :data:`READ_ONLY` (this user cannot write the folder: read-only media, another user's gallery) or
    :data:`NO_SPACE` (the disk has no room for the shared-memory file a WAL database needs); ``""`` otherwise.

    Reading as immutable is only done when no writer is active (the caller holds the gallery's lock and the WAL is
    empty), so the database file holds every commit.
    """
    kw: dict[str, Any] = dict(uri=True, timeout=LOCK_TIMEOUT, isolation_level=None, check_same_thread=False)
    writable = os.access(db, os.W_OK) and os.access(db.parent, os.W_OK)
    conn = sqlite3.connect(_uri(db, mode="rw" if writable else "ro"), **kw)
    try:
        conn.execute("SELECT COUNT(*) FROM meta").fetchone()
        return conn, ""
    except sqlite3.OperationalError as e:
        conn.close()
        if "no such table" in str(e):
            raise damaged(db.parent, "gallery.db has no meta table") from None
        full = _no_space(e, db.parent)
        wal = db.with_name(db.name + "-wal")
        if (wal.exists() and wal.stat().st_size > 0) or (writable and not full):
            if full:
                raise InputError(
                    f"cannot read gallery {db.parent}: the disk is full ({mib(free_bytes(db.parent))} free) and SQLite "
                    f"needs room for its shared-memory file to read the changes in {wal.name}; free some space "
                    f"({SHM_SPACE // 1024} KiB is enough) and try again"
                ) from None
            raise InputError(
                f"cannot read gallery {db.parent} ({e}): it is being written and this user cannot create the "
                "SQLite shared-memory file beside it; read it when the writer has finished, or give this user "
                "write access to the folder"
            ) from None
    # A WAL database needs a -shm file; a user who may not create one (or a full disk, where it cannot be made)
    # reads the checkpointed file as immutable (no writer is active: there is no WAL, and the caller holds the lock).
    conn = sqlite3.connect(_uri(db, mode="ro", immutable="1"), **kw)
    try:
        conn.execute("SELECT COUNT(*) FROM meta").fetchone()
    except sqlite3.Error as e:
        conn.close()
        raise damaged(db.parent, f"gallery.db: {e}") from None
    return conn, (NO_SPACE if writable else READ_ONLY)


class Version:
    """One open format-2 version folder: its SQLite connection and meta. The caller holds the gallery's lock."""

    def __init__(self, root: Path, folder: Path):
        self.root, self.folder = root, folder
        db = folder / DB
        for name in (DB, DB + "-wal", DB + "-shm", vector_file("float32"), vector_file("float16")):
            if (folder / name).is_symlink():
                raise damaged(folder, f"{name} is a symbolic link; a gallery never follows a link out of its folder")
        if not db.is_file():
            raise damaged(folder, f"{DB} is missing")
        try:
            self.conn, self.read_only = _connect(db)
        except sqlite3.DatabaseError as e:
            raise damaged(folder, f"{DB}: {e}") from e
        self.meta = read_meta(self.conn, folder)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def immutable(self) -> bool:
        """Whether the database is read as SQLite ``immutable`` (:attr:`read_only` says why): it cannot be written."""
        return bool(self.read_only)

    def _reopen(self) -> None:
        self.conn.close()
        self.conn, self.read_only = _connect(self.folder / DB)

    def reload_meta(self) -> Meta:
        if self.immutable:  # an immutable connection never sees later commits: reopen it
            self._reopen()
        self.meta = read_meta(self.conn, self.folder)
        return self.meta

    def vectors(self, synced: int) -> np.ndarray:
        """Slots 0..synced-1 from the vector file, memory-mapped (read-only)."""
        m = self.meta
        path = self.folder / vector_file(m.dtype)
        if synced == 0:
            return np.zeros((0, m.dim), m.dtype)
        try:
            size = path.stat().st_size
        except OSError as e:
            raise damaged(self.folder, f"{path.name}: {e.strerror}") from e
        if size < synced * m.row_bytes:
            raise damaged(self.folder, f"{path.name} holds {size} bytes, less than {synced} rows of {m.row_bytes}")
        return np.memmap(path, dtype=m.dtype, mode="r", shape=(synced, m.dim))

    def tail(self, start: int, stop: int) -> np.ndarray:
        """Vectors of tail slots start..stop-1 (all must be present)."""
        m = self.meta
        rows = self.conn.execute(
            "SELECT row, vector FROM tail WHERE row >= ? AND row < ? ORDER BY row", (start, stop)
        ).fetchall()
        if len(rows) != stop - start or (rows and (rows[0][0] != start or rows[-1][0] != stop - 1)):
            raise damaged(self.folder, f"its tail holds {len(rows)} of slots {start}..{stop - 1}")
        if any(len(b) != m.row_bytes for _, b in rows):
            raise damaged(self.folder, "a tail vector has the wrong size")
        out = np.frombuffer(b"".join(b for _, b in rows), dtype=m.dtype).reshape(-1, m.dim)
        return np.array(out, dtype=m.dtype)

    def dead_since(self, seq: int) -> tuple[np.ndarray, int]:
        """Rows removed after removal number ``seq``, and the newest removal number."""
        found = self.conn.execute("SELECT seq, row FROM dead WHERE seq > ? ORDER BY seq", (seq,)).fetchall()
        rows = np.fromiter((r for _, r in found), dtype=np.int64, count=len(found))
        return rows, (found[-1][0] if found else seq)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on any exception). The caller holds the exclusive lock.

        Raises:
            InputError: the gallery is read-only for this user.
            OSError: ``ENOSPC``, the disk is still too full to open the database for writing (callers turn it into
                their full-disk error).
        """
        if self.read_only == NO_SPACE:
            self._reopen()  # opened on a full disk: space may have been freed since
        if self.read_only == NO_SPACE:
            # SQLite itself reports only "disk I/O error" where it cannot make its shared-memory file: this is the
            # error a write meets on a full disk, so every writer's full-disk message applies
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.folder / DB))
        if self.immutable:
            raise InputError(f"gallery {self.root} is read-only for this user; write to a copy")
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:  # SQLite rolls back by itself on some errors (a full disk)
                self.conn.execute("ROLLBACK")
            raise

    def set_meta(self, conn: sqlite3.Connection, **values: Any) -> None:
        conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", ((k, json.dumps(v)) for k, v in values.items()))
        for k, v in values.items():
            setattr(self.meta, k, v)

    def reserve_ids(self, n: int, floor: int) -> int:
        """Reserve ``n`` automatic ids (the caller holds the exclusive lock); returns the first."""
        meta = self.reload_meta()
        first = max(meta.next_id, floor)
        with self.transaction() as conn:
            self.set_meta(conn, next_id=first + n)
        return first

    def checkpoint(self) -> None:
        """Append the tail's vectors to the vector file (fsynced), then drop them from the tail."""
        m = self.meta
        if m.count == m.synced:
            return
        vecs = self.tail(m.synced, m.count)
        path = self.folder / vector_file(m.dtype)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        try:
            os.pwrite(fd, vecs.tobytes(), m.synced * m.row_bytes)
            os.fsync(fd)
        finally:
            os.close(fd)
        with self.transaction() as conn:
            conn.execute("DELETE FROM tail WHERE row < ?", (m.count,))
            self.set_meta(conn, synced=m.count)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()


def open_version(root: Path) -> Version | None:
    """The live version of the gallery at ``root``, or None if it is a format-1 gallery. Caller holds the lock."""
    folder = current_version(root)
    if (folder / "header.json").exists() and not (folder / DB).exists():
        return None
    return Version(root, folder)


# -- writing a whole version ----------------------------------------------------------------------------------------


@dataclass
class Chunk:
    """Consecutive items for :func:`write_version`: vectors (in the gallery's dtype) and their rows' fields."""

    vectors: np.ndarray
    ids: list[str]
    labels: list[str]
    metadata: list[dict[str, Any]]
    crops: dict[int, bytes] = field(default_factory=dict)  # index within the chunk -> encoded image


def is_gallery(root: Path) -> bool:
    return (root / "CURRENT").is_file()


def next_version_name(root: Path) -> str:
    versions = [int(m.group(1)) for p in root.iterdir() if (m := VERSION_DIR.match(p.name))]
    return f"v{max(versions, default=0) + 1:06d}"


def write_version(
    root: Path,
    meta: Meta,
    chunks: Iterable[Chunk],
    index_writer: Any = None,
) -> Path:
    """Write a complete gallery as a new version folder and switch ``CURRENT`` to it (caller holds the lock).

    ``index_writer(folder, count) -> (file name, slots covered)`` may write a FAISS index into the new folder.
    A process killed at any point leaves the previous version (a hidden staging folder is all that remains).
    """
    name = next_version_name(root)
    with staging_dir(root, ".tmp-") as tmp:
        db_path = tmp / DB
        os.close(os.open(db_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # SQLite keeps the umask's mode
        conn = sqlite3.connect(db_path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=OFF")  # a staging file: durability comes from the fsyncs below
            conn.execute("PRAGMA synchronous=OFF")
            conn.executescript(ITEM_SCHEMA + _STORE_SCHEMA)
            n = 0
            with open(tmp / vector_file(meta.dtype), "wb") as vf:
                conn.execute("BEGIN")
                for c in chunks:
                    rows = list(range(n, n + len(c.ids)))
                    crops = {n + i: b for i, b in c.crops.items()}
                    insert_items(conn, rows, c.ids, c.labels, c.metadata, crops)
                    vf.write(np.ascontiguousarray(c.vectors, dtype=meta.dtype).tobytes())
                    n += len(c.ids)
                meta.count = meta.synced = n
                meta.generation, meta.index_file, meta.index_count = 0, "", 0
                if index_writer is not None:
                    vf.flush()
                    written = index_writer(tmp, n)
                    if written:
                        meta.index_file, meta.index_count = written
                conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.rows())
                conn.execute("COMMIT")
            conn.execute("PRAGMA journal_mode=WAL")  # recorded in the file: every later commit is one WAL append
        finally:
            conn.close()
        for f in tmp.iterdir():
            fsync_file(f)
        fsync_dir(tmp)
        os.rename(tmp, root / name)
        fsync_dir(root)
    try:
        atomic_write_text(root / "CURRENT", name + "\n")  # the commit point
    except BaseException:  # not committed: the new folder goes (a retry of a first save would find it in the way)
        shutil.rmtree(root / name, ignore_errors=True)
        raise
    fsync_dir(root)
    for p in root.iterdir():  # older versions (readers that mapped them keep their open files)
        if p.name != name and VERSION_DIR.match(p.name):
            shutil.rmtree(p, ignore_errors=True)
    return root / name


def check_target(root: Path) -> None:
    """Refuse a save target that is a file or a non-empty folder that is not a gallery."""
    if root.exists() and not root.is_dir():
        raise InputError(f"gallery path {root} is a file; pass a folder")
    if root.is_dir() and not is_gallery(root):
        if any(not p.name.startswith((".tmp-", ".lock")) for p in root.iterdir()):
            raise InputError(f"{root} is a non-empty folder that is not a gallery; pick a new or empty folder")


# -- the committed view of an attached gallery ----------------------------------------------------------------------

_CHECK_ROWS = 1024  # vectors checked (finite, unit length) when a version is opened


def check_vectors(
    where: Path, vectors: np.ndarray, dtype: str, alive: np.ndarray | None = None, sample: bool = True
) -> None:
    """Refuse stored vectors that are not finite unit vectors (a sample of them unless ``sample=False``)."""
    n = len(vectors)
    if n == 0:
        return
    if sample and n > _CHECK_ROWS:
        rng = np.random.default_rng(n)
        rows = np.unique(np.concatenate([rng.integers(0, n, _CHECK_ROWS), np.arange(max(0, n - 16), n)]))
    else:
        rows = np.arange(n)
    if alive is not None:
        rows = rows[alive[rows]]
    if len(rows) == 0:
        return
    norms = np.linalg.norm(np.asarray(vectors[rows], np.float32), axis=1)
    tol = 1e-2 if dtype == "float16" else 1e-3
    bad = ~np.isfinite(norms) | (np.abs(norms - 1) > tol)
    if bad.any():
        r = int(rows[np.argmax(bad)])
        raise damaged(
            where,
            f"stored vector {r} has norm {norms[np.argmax(bad)]:.4g}; stored vectors are finite and of unit "
            "length, so the vector file was modified",
        )


class Saved:
    """What this process sees of a saved gallery: its open version, the vectors of its slots (the vector file,
    memory-mapped, then the tail rows) and which slots are alive. :meth:`sync` brings in later commits; every method
    that writes expects the caller to hold the exclusive lock."""

    def __init__(self, root: Path, ver: Version, mmap: bool = True):
        self.root, self.ver, self.mmap = root, ver, mmap  # mmap False: the vector file is read into memory
        m = ver.meta
        self.raw: np.ndarray = np.zeros((0, m.dim), m.dtype)  # slots 0..synced-1
        self.tail: np.ndarray = np.zeros((0, m.dim), m.dtype)  # slots synced..count-1
        self.count = 0
        self.alive = np.zeros(0, bool)
        self.live = 0
        self.dead_seq = 0
        self.gen = -1
        self.sync()
        self._check_items()
        check_vectors(ver.folder, self.raw, m.dtype, self.alive[: len(self.raw)])

    def _check_items(self) -> None:
        """Every live slot has its item row and no other row exists (an item lost or hidden is refused)."""
        conn, count = self.ver.conn, self.count
        rows = count_items(conn)  # the one scan; the two below are index lookups
        outside = conn.execute("SELECT COUNT(*) FROM items WHERE row < 0 OR row >= ?", (count,)).fetchone()[0]
        on_dead = conn.execute("SELECT COUNT(*) FROM items WHERE row IN (SELECT row FROM dead)").fetchone()[0]
        if rows != self.live or outside or on_dead:
            raise damaged(
                self.ver.folder,
                f"{rows} item rows for its {self.live} live slots ({outside} outside its slots, {on_dead} on removed "
                "ones)",
            )

    @property
    def meta(self) -> Meta:
        return self.ver.meta

    @property
    def dead(self) -> int:
        return self.count - self.live

    def sync(self) -> bool:
        """Extend the view to the version's current state (O(changes)); returns whether anything changed."""
        ver = self.ver
        meta = ver.reload_meta() if self.gen >= 0 else ver.meta
        if meta.generation == self.gen and meta.synced == len(self.raw):
            return False
        old_synced, old_count = len(self.raw), self.count
        if meta.count < old_count or meta.synced < old_synced:
            raise damaged(ver.folder, f"it shrank from {old_count} to {meta.count} slots within a version")
        if meta.synced != old_synced:
            self.raw = ver.vectors(meta.synced) if self.mmap else np.array(ver.vectors(meta.synced))
        keep = self.tail[max(0, meta.synced - old_synced) :] if meta.synced <= old_count else self.tail[:0]
        start = max(old_count, meta.synced)
        fresh = ver.tail(start, meta.count) if meta.count > start else np.zeros((0, meta.dim), meta.dtype)
        self.tail = np.concatenate([keep, fresh]) if len(fresh) else np.ascontiguousarray(keep)
        self.alive = np.concatenate([self.alive, np.ones(meta.count - old_count, bool)])
        self.count = meta.count
        dead, self.dead_seq = ver.dead_since(self.dead_seq)
        outside = dead[(dead < 0) | (dead >= meta.count)]
        if len(outside):
            raise damaged(ver.folder, f"removed slot {outside[0]} is not one of its {meta.count} slots")
        self.alive[dead] = False
        self.live = int(self.alive.sum())
        self.gen = meta.generation
        if fresh.size:
            check_vectors(ver.folder, fresh, meta.dtype)
        return True

    def current(self) -> Saved:
        """This view brought up to date, or a new one if the gallery was rewritten (compaction, replace)."""
        folder = current_version(self.root)
        if folder.name != self.ver.name:
            self.close()
            return Saved(self.root, Version(self.root, folder), self.mmap)
        self.sync()
        return self

    def commit(
        self,
        new: list[tuple[str, str, dict[str, Any], bytes | None]],
        vectors: np.ndarray,
        removed: dict[str, int],
        next_id: int,
        image_root: str,
    ) -> None:
        """Write new items (id, label, metadata, crop) with their vectors, and remove items (id -> slot), in one
        transaction; then sync.

        Raises:
            InputError: a new id was committed by another process meanwhile (nothing is written).
        """
        ver = self.ver
        clash = [i for i in rows_of_ids(ver.conn, [r[0] for r in new]) if i not in removed]
        if clash:
            raise InputError(
                f"id {clash[0]!r} was added to {self.root} by another process since this gallery was loaded; "
                "nothing was committed: remove or rename the item here and commit again"
            )
        now = rows_of_ids(ver.conn, list(removed))
        kill = [now[i] for i, s in removed.items() if now.get(i) == s]  # items removed elsewhere are gone already
        base, dtype = ver.meta.count, ver.meta.dtype
        rows = list(range(base, base + len(new)))
        with ver.transaction() as conn:
            if kill:
                delete_items(conn, kill)
                conn.executemany("INSERT INTO dead (row) VALUES (?)", ((r,) for r in kill))
            insert_items(
                conn,
                rows,
                [r[0] for r in new],
                [r[1] for r in new],
                [r[2] for r in new],
                {row: r[3] for row, r in zip(rows, new, strict=True) if r[3] is not None},
            )
            conn.executemany(
                "INSERT INTO tail (row, vector) VALUES (?, ?)",
                ((row, np.ascontiguousarray(v, dtype).tobytes()) for row, v in zip(rows, vectors, strict=True)),
            )
            ver.set_meta(
                conn,
                count=base + len(new),
                next_id=max(ver.meta.next_id, next_id),
                image_root=image_root,
                generation=ver.meta.generation + 1,
            )
        self.sync()

    def reserve_ids(self, n: int, floor: int) -> int:
        """Reserve ``n`` automatic ids in the gallery's current version (the caller holds the exclusive lock):
        this view's version may have been replaced since (a compaction elsewhere), and a reservation written into a
        replaced version would be lost."""
        folder = current_version(self.root)
        if folder.name == self.ver.name:
            return self.ver.reserve_ids(n, floor)
        ver = Version(self.root, folder)
        try:
            return ver.reserve_ids(n, floor)
        finally:
            ver.close()

    def checkpoint_if_full(self) -> None:
        """Move a full tail into the vector file (an append)."""
        if self.meta.count - self.meta.synced >= TAIL_ROWS:
            self.ver.checkpoint()
            self.sync()

    @property
    def compaction_due(self) -> bool:
        return self.dead >= COMPACT_MIN_DEAD and self.dead >= COMPACT_FRACTION * self.count

    def record(self, **values: Any) -> None:
        """Store gallery-wide fields (calibration, index file) in one small transaction."""
        with self.ver.transaction() as conn:
            self.ver.set_meta(conn, **values)

    def close(self) -> None:
        self.ver.close()
