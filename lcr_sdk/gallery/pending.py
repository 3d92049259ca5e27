"""Pending items: added or removed since the last commit (for a gallery that was never saved: all of its items).

Added items live in a private in-memory SQLite item table (:mod:`lcr_sdk.gallery.items`, the same schema as a saved
gallery's, so filters and lookups are the same SQL) and a list of vector chunks; removing one kills its pending slot.
Removals of committed items are kept as id -> slot until the commit.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import numpy as np

from lcr_sdk.errors import InputError
from lcr_sdk.gallery import items


class Pending:
    """Not-yet-committed changes: pending slots 0..n-1 (after the committed slots), and removed committed items."""

    def __init__(self, dim: int, dtype: str):
        self.dim, self.dtype = dim, dtype
        self.db = items.memory_db()
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
            items.insert(self.db, rows, ids, labels, metadata, {base + i: b for i, b in crops.items()})
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
        items.delete(self.db, [slot])
        self.alive[slot] = False
        self.live -= 1

    def live_rows(self, with_crops: bool = False) -> list[tuple[int, str, str, str, bytes | None]]:
        """(pending slot, id, label, metadata JSON, crop) of the live pending items, in slot order."""
        return [r for batch in items.iter_items(self.db, with_crops) for r in batch if self.alive[r[0]]]
