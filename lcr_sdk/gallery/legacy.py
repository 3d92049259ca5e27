"""The first gallery format (format version 1): read to load and migrate old galleries, written only by tests and
the before/after benchmark.

Layout: ``DIR/CURRENT`` names a version folder ``DIR/v000007/`` holding ``header.json`` (dim, model sha256, count,
index, next id, image root), ``vectors.npy`` (float32 N x D) and ``items.sqlite`` (row, id, label, JSON metadata).
Every save rewrote every file (O(N) per enrolment), which is what format 2 (:mod:`lcr_sdk.gallery.store`) replaces.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lcr_sdk.errors import InputError
from lcr_sdk.fileio import atomic_write_text, fsync_dir, fsync_file, staging_dir
from lcr_sdk.gallery import store
from lcr_sdk.gallery.store import FORMAT, VERSION_DIR

V1 = 1
_HEADER_KEYS = {"format": str, "format_version": int, "dim": int, "count": int, "model_sha256": str}


@dataclass
class V1Gallery:
    """What a format-1 folder holds, validated."""

    folder: Path
    header: dict[str, Any]
    vectors: np.ndarray  # float32 N x D, memory-mapped
    ids: list[str]
    labels: list[str]
    metadata: list[dict[str, Any]]


def write_v1(
    directory: str | os.PathLike[str],
    vectors: np.ndarray,
    ids: list[str],
    labels: list[str],
    metadata: list[dict[str, Any]],
    model_sha256: str = "",
    index: str = "exact",
    next_id: int | None = None,
    image_root: str = "",
) -> Path:
    """Write a format-1 gallery exactly as lcr-sdk 0.1's ``Gallery.save`` did (a new version folder, then CURRENT)."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    versions = [int(m.group(1)) for p in root.iterdir() if (m := VERSION_DIR.match(p.name))]
    name = f"v{max(versions, default=0) + 1:06d}"
    with staging_dir(root, ".tmp-") as tmp:
        np.save(tmp / "vectors.npy", np.ascontiguousarray(vectors, dtype=np.float32))
        with sqlite3.connect(tmp / "items.sqlite") as db:
            db.execute(
                "CREATE TABLE items (row INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, label TEXT, metadata TEXT)"
            )
            db.executemany(
                "INSERT INTO items VALUES (?, ?, ?, ?)",
                ((r, i, lab, json.dumps(m)) for r, (i, lab, m) in enumerate(zip(ids, labels, metadata, strict=True))),
            )
        db.close()
        header = {
            "format": FORMAT,
            "format_version": V1,
            "dim": int(vectors.shape[1]),
            "count": len(ids),
            "model_sha256": model_sha256,
            "index": index,
            "next_id": len(ids) if next_id is None else next_id,
            "image_root": image_root,
        }
        (tmp / "header.json").write_text(json.dumps(header, indent=2) + "\n", encoding="utf-8")
        for f in tmp.iterdir():
            fsync_file(f)
        fsync_dir(tmp)
        os.rename(tmp, root / name)
        fsync_dir(root)
    atomic_write_text(root / "CURRENT", name + "\n")
    fsync_dir(root)
    for p in root.iterdir():
        if p.name != name and (VERSION_DIR.match(p.name) or p.name.startswith(".tmp-")):
            shutil.rmtree(p, ignore_errors=True)
    return root / name


def _damaged(folder: Path, why: str) -> InputError:
    return InputError(f"gallery {folder} is damaged ({why}); rebuild it with `lcr-sdk gallery build`")


def read_v1(folder: Path, mmap: bool = True) -> V1Gallery:
    """Read and validate a format-1 version folder (vectors memory-mapped unless ``mmap=False``).

    Raises:
        InputError: a missing or malformed file, a header that is not an object or lacks a field, a count that does
            not match the files, or metadata that is not a JSON object.
    """
    for name in ("header.json", "vectors.npy", "items.sqlite"):
        if (folder / name).is_symlink():
            raise _damaged(folder, f"{name} is a symbolic link; a gallery never follows a link out of its folder")
    header = _read_header(folder)
    vectors, rows = _read_items(folder, mmap)
    if vectors.dtype != np.float32 or vectors.shape != (header["count"], header["dim"]) or len(rows) != header["count"]:
        raise _damaged(
            folder,
            f"header says {header['count']} x {header['dim']}, vectors are {vectors.dtype} {vectors.shape}, "
            f"{len(rows)} items",
        )
    metadata = []
    for r in rows:
        store.check_stored(r[1], r[2] or "")
        metadata.append(store.parse_metadata(r[1], r[3]) if r[3] is not None else {})
    return V1Gallery(folder, header, vectors, [r[1] for r in rows], [r[2] or "" for r in rows], metadata)


def _read_header(folder: Path) -> dict[str, Any]:
    """``header.json``: a JSON object with every field of :data:`_HEADER_KEYS`, of format 1."""
    try:
        header = json.loads((folder / "header.json").read_text(encoding="utf-8"), parse_constant=store.not_json)
    except RecursionError:
        raise _damaged(folder, "header.json is nested too deeply to read") from None
    except (OSError, ValueError) as e:
        raise _damaged(folder, f"header.json: {e}") from e
    if not isinstance(header, dict):
        raise _damaged(folder, f"header.json holds a {type(header).__name__}, not a JSON object")
    for key, kind in _HEADER_KEYS.items():
        if key not in header:
            raise _damaged(folder, f"header.json has no {key!r}")
        if not isinstance(header[key], kind) or isinstance(header[key], bool):
            raise _damaged(folder, f"header.json {key!r} is {header[key]!r}, not a {kind.__name__}")
    if header["format"] != FORMAT or header["format_version"] != V1:
        raise InputError(
            f"{folder} holds gallery format {header['format']!r} version {header['format_version']!r}; this reader "
            f"reads {FORMAT} v{V1}"
        )
    if header["dim"] < 1 or header["count"] < 0:
        raise _damaged(folder, f"header.json says {header['count']} x {header['dim']}")
    return header


def _read_items(folder: Path, mmap: bool) -> tuple[np.ndarray, list[Any]]:
    """The vectors and the item rows (row, id, label, metadata) as stored, not yet checked against the header."""
    try:
        vectors = np.load(folder / "vectors.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
        # an escaped URI, as format 2 opens its files ('#', '?' or '%' in a folder name cut or changed a raw one)
        with sqlite3.connect(store._uri(folder / "items.sqlite", mode="ro"), uri=True) as db:
            rows = db.execute("SELECT row, id, label, metadata FROM items ORDER BY row").fetchall()
        db.close()
    except (OSError, ValueError, EOFError, sqlite3.Error) as e:
        raise _damaged(folder, str(e) or type(e).__name__) from e
    return vectors, rows
