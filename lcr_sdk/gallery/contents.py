"""What a gallery holds: its slots, committed (a :class:`~lcr_sdk.gallery.store.Saved` view) then pending.

Slots: every item has a slot, its position in the vector array (committed slots first, then pending ones). Slots
only grow; removing an item kills its slot until compaction. Added items that are not yet committed live in
:class:`Pending`: a private in-memory SQLite item table (:func:`lcr_sdk.gallery.store.memory_db`, the same schema as
a saved gallery's, so filters and lookups are the same SQL) and a list of vector chunks. Removals of committed items
are kept as id -> slot until the commit.

:class:`Contents` answers every question about the items (vectors, rows, ids, filters, images) over both parts, and
records additions and removals; writing them to disk is :mod:`lcr_sdk.gallery.persist`'s job, searching them
:mod:`lcr_sdk.gallery.search`'s.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from lcr_sdk.errors import InputError
from lcr_sdk.fileio import free_bytes, is_disk_full, mib
from lcr_sdk.gallery import store
from lcr_sdk.gallery.calibrate import Calibration

ID_BLOCK = 64  # automatic ids reserved at a time by an attached gallery
Row = tuple[int, str, str, str, bytes | None]  # slot, id, label, metadata JSON, crop


@dataclass
class Blocks:
    """The gallery's vectors as consecutive blocks: ``(first_slot, array)``; together they cover slots 0..total-1."""

    parts: list[tuple[int, np.ndarray]]

    @property
    def total(self) -> int:
        return sum(len(a) for _, a in self.parts)

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.parts[0][1].dtype if self.parts else np.dtype(np.float32)

    def chunks(self, rows: int, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """Consecutive row chunks of at most ``rows`` rows, from slot ``start`` on."""
        for first, arr in self.parts:
            lo = max(0, start - first)
            for i in range(lo, len(arr), rows):
                yield first + i, arr[i : i + rows]

    def take(self, slots: np.ndarray) -> np.ndarray:
        """float32 rows at the given slots (any order; -1 gives a zero row)."""
        out = np.zeros((len(slots), self.parts[0][1].shape[1] if self.parts else 0), np.float32)
        for first, arr in self.parts:
            sel = (slots >= first) & (slots < first + len(arr))
            if sel.any():
                idx = slots[sel] - first
                order = np.argsort(idx)  # sorted reads are kind to a memory-mapped file
                rows = np.empty((len(idx), arr.shape[1]), np.float32)
                rows[order] = arr[idx[order]]
                out[sel] = rows
        return out


class Pending:
    """Not-yet-committed changes: pending slots 0..n-1 (after the committed slots), and removed committed items."""

    def __init__(self, dim: int, dtype: str):
        self.dim, self.dtype = dim, dtype
        self.db = store.memory_db()
        self.clear()

    def clear(self) -> None:
        for table in ("items", "kv", "crops"):
            self.db.execute(f"DELETE FROM {table}")
        self.chunks: list[np.ndarray] = []
        self.n = 0  # pending slots, live and dead
        self.alive = np.zeros(0, bool)
        self.live = 0
        self.removed: dict[str, int] = {}  # committed items removed here: id -> slot

    @property
    def changes(self) -> int:
        return self.live + len(self.removed)

    def vectors(self) -> np.ndarray:
        """All pending slots' vectors (one array; the chunks are joined once)."""
        if len(self.chunks) != 1:
            self.chunks = [np.concatenate(self.chunks) if self.chunks else np.zeros((0, self.dim), self.dtype)]
        return self.chunks[0]

    def add(
        self,
        vectors: np.ndarray,
        ids: list[str],
        labels: list[str],
        metadata: list[dict[str, Any]],
        crops: dict[int, bytes],
    ) -> None:
        """Append checked items (``crops`` maps an index within this batch to an encoded image)."""
        base = self.n
        self.db.execute("BEGIN")
        try:
            rows = range(base, base + len(ids))
            store.insert_items(self.db, rows, ids, labels, metadata, {base + i: b for i, b in crops.items()})
        except sqlite3.Error as e:
            self.db.execute("ROLLBACK")
            raise InputError(f"could not add the items ({e})") from e
        self.db.execute("COMMIT")
        self.chunks.append(np.asarray(vectors, self.dtype))
        self.n += len(ids)
        self.alive = np.concatenate([self.alive, np.ones(len(ids), bool)])
        self.live += len(ids)

    def drop(self, slot: int) -> None:
        """Remove the pending item at pending slot ``slot``."""
        store.delete_items(self.db, [slot])
        self.alive[slot] = False
        self.live -= 1

    def live_rows(self, with_crops: bool = False) -> list[Row]:
        """(pending slot, id, label, metadata JSON, crop) of the live pending items, in slot order."""
        return [r for batch in store.iter_items(self.db, with_crops) for r in batch if self.alive[r[0]]]


class Contents:
    """The items of one gallery and its gallery-wide fields: slots 0..c-1 are the saved gallery's (:attr:`saved`,
    None for an unsaved gallery or a format-1 folder), slots c.. the pending ones.

    Args:
        dim, dtype, model_sha256, index: as :class:`~lcr_sdk.gallery.Gallery` takes them (already checked).
    """

    def __init__(self, dim: int, dtype: str, model_sha256: str = "", index: str = "exact"):
        self.dim, self.dtype, self.model_sha256, self.index = dim, dtype, model_sha256, index
        self.image_root = ""  # folder the items' relative "path" metadata points into (build_from_folder), if any
        self.root: Path | None = None  # the folder this gallery is attached to
        self.saved: store.Saved | None = None  # its committed state
        self.mmap = True  # its vector file memory-mapped (False: read into memory, every version it moves to)
        self.legacy = ""  # the format-1 version folder it was read from, if any: the next commit migrates it
        self.pending = Pending(dim, dtype)
        self.next_id = 0
        self.reserved = (0, 0)  # automatic ids reserved from the store: [first, end)
        self.calibration: Calibration | None = None
        self._cache: dict[str, Any] = {}

    # -- the slots ------------------------------------------------------------------------------------------------

    def changed(self) -> None:
        """Forget what was derived from the slots (after any change), and a calibration without a threshold (one
        changed item may be the second label; recomputing such a small or unlabelled gallery's is cheap)."""
        self._cache.clear()
        if self.calibration is not None and self.calibration.threshold is None:
            self.calibration = None

    @property
    def committed(self) -> int:
        """Committed slots (live and dead)."""
        return self.saved.count if self.saved is not None else 0

    @property
    def total_slots(self) -> int:
        return self.committed + self.pending.n

    def __len__(self) -> int:
        saved = self.saved.live - len(self.pending.removed) if self.saved is not None else 0
        return saved + self.pending.live

    def blocks(self) -> Blocks:
        """The vectors of every slot: the saved file (memory-mapped), then the saved tail and the pending rows."""
        if "blocks" not in self._cache:
            raw = self.saved.raw if self.saved is not None else np.zeros((0, self.dim), self.dtype)
            tail = self.saved.tail if self.saved is not None else raw[:0]
            pend = self.pending.vectors()
            extra = pend if len(tail) == 0 else (tail if len(pend) == 0 else np.concatenate([tail, pend]))
            self._cache["blocks"] = Blocks([(0, raw), (len(raw), extra)])
        return self._cache["blocks"]  # type: ignore[no-any-return]

    def alive(self) -> np.ndarray:
        """Which slots hold a live item (removed ones, committed or not, are dead)."""
        if "alive" not in self._cache:
            saved = self.saved.alive.copy() if self.saved is not None else np.zeros(0, bool)
            saved[list(self.pending.removed.values())] = False
            self._cache["alive"] = np.concatenate([saved, self.pending.alive])
        return self._cache["alive"]  # type: ignore[no-any-return]

    def all_alive(self) -> bool:
        if "all_alive" not in self._cache:
            self._cache["all_alive"] = bool(self.alive().all())
        return self._cache["all_alive"]  # type: ignore[no-any-return]

    def take(self, slots: np.ndarray) -> np.ndarray:
        """float32 vectors at the given slots."""
        return self.blocks().take(slots)

    def live_vectors(self) -> np.ndarray:
        """The live items' vectors in slot order, in the storage dtype (the memory-mapped file when it is all)."""
        alive, blocks = self.alive(), self.blocks()
        if alive.all() and len(blocks.parts[1][1]) == 0:
            return blocks.parts[0][1]
        return np.asarray(blocks.take(np.flatnonzero(alive)), dtype=self.dtype)

    def _slot_db(self, slots: np.ndarray) -> Iterator[tuple[sqlite3.Connection, np.ndarray, int]]:
        """Split slots into (connection, rows in it, slot offset) for the saved and pending item tables."""
        c = self.committed
        committed = slots[slots < c]
        if len(committed) and self.saved is not None:
            yield self.saved.ver.conn, committed, 0
        pend = slots[slots >= c]
        if len(pend):
            yield self.pending.db, pend - c, c

    # -- the items ------------------------------------------------------------------------------------------------

    def rows(self, with_crops: bool = False) -> Iterator[Row]:
        """Live items in slot order: (slot, id, label, metadata JSON, crop)."""
        alive, c = self.alive(), self.committed
        if self.saved is not None:
            for batch in store.iter_items(self.saved.ver.conn, with_crops):
                for r in batch:
                    if r[0] < c and alive[r[0]]:
                        yield r
        for r in self.pending.live_rows(with_crops):
            yield (r[0] + c, *r[1:])

    def slot_of(self, item_id: str) -> int | None:
        hit = store.rows_of_ids(self.pending.db, [item_id])
        if hit:  # a pending item, possibly re-using the id of a committed item removed here
            return self.committed + hit[item_id]
        if item_id in self.pending.removed:
            return None
        if self.saved is not None:
            hit = store.rows_of_ids(self.saved.ver.conn, [item_id])
            if hit and hit[item_id] < self.saved.count and self.saved.alive[hit[item_id]]:
                return hit[item_id]
        return None

    def existing_slot(self, item_id: str) -> int:
        """The slot of an item, or :class:`InputError` naming the unknown id."""
        slot = self.slot_of(item_id)
        if slot is None:
            raise InputError(f"id {item_id!r} is not in this gallery of {len(self)} items")
        return slot

    def fetch(self, slots: np.ndarray) -> dict[int, tuple[str, str, dict[str, Any]]]:
        """(id, label, metadata) of the given live slots."""
        out: dict[int, tuple[str, str, dict[str, Any]]] = {}
        for conn, rows, offset in self._slot_db(slots):
            out.update({r + offset: v for r, v in store.fetch_items(conn, rows.tolist()).items()})
        return out

    def crop(self, slot: int) -> bytes | None:
        """The stored encoded image of a slot, if any."""
        for conn, rows, _ in self._slot_db(np.array([slot])):
            return store.read_crop(conn, int(rows[0]))
        return None

    def image_path(self, item_id: str, metadata: dict[str, Any]) -> Path | None:
        """Where an item's image file is: its ``path`` metadata under :attr:`image_root` (None if it has none).

        Raises:
            InputError: the stored path is absolute or climbs out of the image root (``..``): a gallery never
                reads outside the folder its images were enrolled from.
        """
        p = metadata.get("path")
        if not isinstance(p, str) or not p:
            return None
        rel = PurePosixPath(p.replace("\\", "/"))
        if rel.is_absolute() or PureWindowsPath(p).drive or ".." in rel.parts:
            raise InputError(
                f"item {item_id!r} names its image {p[:200]!r}, which leaves the gallery's image root; stored paths "
                "are relative to the image root and never climb out of it: fix the item's 'path' metadata, or "
                "rebuild the gallery with `lcr-sdk gallery build`"
            )
        base = Path(self.image_root) if self.image_root else (self.root or Path("."))
        return base.joinpath(*rel.parts)

    # -- changes --------------------------------------------------------------------------------------------------

    def add(
        self,
        vectors: np.ndarray,
        ids: list[str] | None,
        labels: list[str],
        metadata: list[dict[str, Any]],
        crops: dict[int, bytes],
    ) -> list[str]:
        """Add checked items (unit vectors; ids are generated when None); returns their ids."""
        if ids is not None:
            self._check_new_ids(ids)
            self.next_id += len(ids)  # automatic ids count every item added, with or without an id
        new_ids = ids if ids is not None else self._auto_ids(len(vectors))
        self.pending.add(np.asarray(vectors, self.dtype), new_ids, labels, metadata, crops)
        self.changed()
        return new_ids

    def _check_new_ids(self, new_ids: list[str]) -> None:
        if len(set(new_ids)) != len(new_ids):
            raise InputError("the new ids repeat (ids are unique); pick other ids")
        dup = list(store.rows_of_ids(self.pending.db, new_ids))
        if self.saved is not None:
            dup += [i for i in store.rows_of_ids(self.saved.ver.conn, new_ids) if i not in self.pending.removed]
        if dup:
            raise InputError(
                f"id {dup[0]!r} is already in the gallery (ids are unique); remove the old item first or pick other ids"
            )

    def _auto_ids(self, n: int) -> list[str]:
        """``n`` new automatic ids: counting up, skipping ids in use; an attached gallery reserves them in its
        store first, so two processes never hand out the same one."""
        out: list[str] = []
        while len(out) < n:
            need = n - len(out)
            if self.saved is not None:
                first, end = self.reserved
                if first >= end:
                    block = max(ID_BLOCK, need)
                    first = self._reserve(block)
                    end = first + block
                take = min(need, end - first)
                self.reserved = (first + take, end)
            else:
                first, take = self.next_id, need
            self.next_id = max(self.next_id, first + take)
            cand = [str(i) for i in range(first, first + take)]
            used = set(store.rows_of_ids(self.pending.db, cand)) | set(self.pending.removed)
            if self.saved is not None:
                used |= set(store.rows_of_ids(self.saved.ver.conn, cand))
            out += [c for c in cand if c not in used]
        return out

    def _reserve(self, block: int) -> int:
        """Reserve ``block`` automatic ids in the saved gallery (under its exclusive lock); returns the first."""
        assert self.saved is not None
        try:
            with store.GalleryLock(self.saved.root).hold(True):
                return self.saved.reserve_ids(block, self.next_id)
        except OSError as e:
            if not is_disk_full(e):
                raise
            raise InputError(
                f"cannot add items without ids to gallery {self.saved.root}: the disk is full "
                f"({mib(free_bytes(self.saved.root))} free) and automatic ids are reserved in the "
                "gallery's files; free space, or pass ids=[...] (nothing was added)"
            ) from None

    def remove(self, ids: list[str]) -> int:
        """Remove items by id (all or none: an unknown id raises :class:`InputError`); returns how many."""
        slots = {i: self.slot_of(i) for i in dict.fromkeys(ids)}
        unknown = [i for i, s in slots.items() if s is None]
        if unknown:
            raise InputError(f"ids {unknown[:5]} are not in the gallery of {len(self)} items")
        c = self.committed
        for i, s in slots.items():
            assert s is not None
            if s >= c:
                self.pending.drop(s - c)
            else:
                self.pending.removed[i] = s
        self.changed()
        return len(slots)

    # -- selections and samples -----------------------------------------------------------------------------------

    def filter(self, labels: list[str] | None, where: dict[str, Any] | None) -> np.ndarray:
        """Live slots whose label is one of ``labels`` and whose metadata has every ``where`` pair (checked)."""
        c = self.committed
        found = [store.filter_rows(self.pending.db, labels, where) + c]
        if self.saved is not None:
            rows = store.filter_rows(self.saved.ver.conn, labels, where)
            found.insert(0, rows[rows < c])
        cand = np.concatenate(found)
        return np.asarray(cand[self.alive()[cand]], np.int64)

    def labels_at(self, slots: np.ndarray) -> dict[int, str]:
        """{slot: label} of the live ones among ``slots``."""
        out: dict[int, str] = {}
        for conn, rows, off in self._slot_db(slots[self.alive()[slots]]):
            out.update({r + off: lab for r, lab in store.labels_of(conn, rows.tolist()).items()})
        return out

    def partners(self, label: str, start: int, limit: int) -> list[int]:
        """Up to ``limit`` live slots with ``label``, from slot ``start`` on (wrapping)."""
        alive, c = self.alive(), self.committed
        found: list[int] = []
        if self.saved is not None:
            rows = store.same_label(self.saved.ver.conn, label, start, limit)
            found += [r for r in rows if r < c and alive[r]]  # rows committed elsewhere since the last sync: not yet
        pend = store.same_label(self.pending.db, label, max(0, start - c), limit)
        return (found + [r + c for r in pend])[:limit]

    # -- the whole, for writing -----------------------------------------------------------------------------------

    def meta(self) -> store.Meta:
        """The gallery-wide fields as a new version records them."""
        cal = self.calibration
        return store.Meta(
            dim=self.dim,
            dtype=self.dtype,
            model_sha256=self.model_sha256,
            index=self.index,
            next_id=self.next_id,
            image_root=self.image_root,
            calibration=cal.to_dict() if cal is not None else None,
        )

    def chunks(self, batch: int = 8192) -> Iterator[store.Chunk]:
        """The live items in slot order, ``batch`` at a time, as :func:`store.write_version` takes them."""
        blocks = self.blocks()
        rows: list[Row] = []
        for r in self.rows(with_crops=True):
            rows.append(r)
            if len(rows) == batch:
                yield self._chunk(blocks, rows)
                rows = []
        if rows:
            yield self._chunk(blocks, rows)

    def _chunk(self, blocks: Blocks, rows: list[Row]) -> store.Chunk:
        slots = np.array([r[0] for r in rows], np.int64)
        return store.Chunk(
            blocks.take(slots).astype(self.dtype),
            [r[1] for r in rows],
            [r[2] for r in rows],
            [store.parse_metadata(r[1], r[3]) for r in rows],
            {i: r[4] for i, r in enumerate(rows) if r[4] is not None},
        )

    def pending_items(self) -> tuple[list[tuple[str, str, dict[str, Any], bytes | None]], np.ndarray]:
        """The live pending items (id, label, metadata, crop) and their vectors, as :meth:`store.Saved.commit`
        takes them."""
        p = self.pending
        new = [(r[1], r[2], store.parse_metadata(r[1], r[3]), r[4]) for r in p.live_rows(with_crops=True)]
        return new, (p.vectors()[p.alive] if p.n else p.vectors())

    def attach(self, saved: store.Saved, keep_pending: bool = False) -> None:
        """Take a saved version as the committed slots (pending removals found again by id if kept)."""
        meta = saved.meta
        if (meta.dim, meta.dtype) != (self.dim, self.dtype):
            raise InputError(
                f"gallery {saved.root} holds {meta.dim}-d {meta.dtype} vectors, not {self.dim}-d {self.dtype}"
            )
        if self.saved is not None and self.saved is not saved:
            self.saved.close()
        removed = dict(self.pending.removed) if keep_pending else {}
        if not keep_pending:
            self.pending.clear()
        self.pending.removed = {}
        if removed:  # removals pending against a rewritten version: find those items again by id
            for i, s in store.rows_of_ids(saved.ver.conn, list(removed)).items():
                if saved.alive[s]:
                    self.pending.removed[i] = s
        self.root, self.saved, self.legacy = saved.root, saved, ""
        self.model_sha256, self.index, self.image_root = meta.model_sha256, meta.index, meta.image_root
        self.reserved = (0, 0)
        self.adopt(saved)

    def adopt(self, saved: store.Saved) -> None:
        """Take the saved gallery's fields that other processes may have changed."""
        meta = saved.meta
        self.next_id = max(self.next_id, meta.next_id)
        # an item removed here and also by another process is no longer a change to make
        self.pending.removed = {i: s for i, s in self.pending.removed.items() if s < saved.count and saved.alive[s]}
        if meta.calibration is not None:
            try:
                self.calibration = Calibration.from_dict(meta.calibration)
            except ValueError as e:
                raise store.damaged(saved.ver.folder, f"its stored calibration is not valid: {e}") from None
        self.changed()

    def close(self) -> None:
        """Close the saved gallery's files and drop every array that maps them."""
        if self.saved is not None:
            self.saved.close()
            self.saved = None
        self.pending.clear()
        self._cache.clear()
