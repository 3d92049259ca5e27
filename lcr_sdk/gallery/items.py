"""The item table: ids, labels, metadata and stored crops of gallery rows, in SQLite.

The same schema serves a saved gallery (``gallery.db`` in its version folder) and the not-yet-committed items of a
:class:`~lcr_sdk.gallery.Gallery` (an in-memory SQLite database), so lookups, filters and samples are written once.

``row`` is the item's slot: its position in the gallery's vector array. Rows only grow; a removed item leaves a dead
slot until compaction renumbers them. Top-level metadata values that are scalars (str, int, float, bool, None) are
also stored in ``kv`` as (key, JSON text of the value, row), indexed, so ``where={"shop": 3}`` is an index lookup.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from lcr_sdk.errors import InputError
from lcr_sdk.redact import redact

SCHEMA = """
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


def create(conn: sqlite3.Connection) -> None:
    """Create the item tables (idempotent)."""
    conn.executescript(SCHEMA)


def memory_db() -> sqlite3.Connection:
    """A private in-memory item database (pending items of a gallery)."""
    conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    create(conn)
    return conn


def is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def kv_rows(row: int, metadata: dict[str, Any]) -> list[tuple[str, str, int]]:
    """The indexed (key, JSON value, row) entries of one item's metadata: its top-level scalar values."""
    return [(k, json.dumps(v), row) for k, v in metadata.items() if is_scalar(v)]


def insert(
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


def delete(conn: sqlite3.Connection, rows: Iterable[int]) -> None:
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


def fetch(conn: sqlite3.Connection, rows: Sequence[int]) -> dict[int, tuple[str, str, dict[str, Any]]]:
    """(id, label, metadata) of the given rows that exist (each checked as it is read)."""
    out: dict[int, tuple[str, str, dict[str, Any]]] = {}
    for part in _chunks([int(r) for r in rows]):
        q = f"SELECT row, id, label, metadata FROM items WHERE row IN ({','.join('?' * len(part))})"
        for r, i, lab, m in conn.execute(q, part):
            check_stored(i, lab)
            out[r] = (i, lab, parse_metadata(i, m))
    return out


def crop(conn: sqlite3.Connection, row: int) -> bytes | None:
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


def count(conn: sqlite3.Connection) -> int:
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


def check_text(value: str, what: str) -> None:
    """Refuse strings SQLite cannot store: lone surrogates (file names that are not UTF-8) and NUL characters."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        shown = value.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
        raise InputError(
            f"{what} {shown!r} is not valid UTF-8 (a file name in another encoding?); rename it to UTF-8 "
            "(e.g. `convmv -f latin1 -t utf8 -r --notest DIR`) or pass another id"
        ) from None
    if "\x00" in value:
        raise InputError(f"{what} {value!r} contains a NUL character; remove it")


def _chunks(values: list[Any]) -> Iterator[list[Any]]:
    for i in range(0, len(values), _CHUNK):
        yield values[i : i + _CHUNK]
