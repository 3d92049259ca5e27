"""The Gallery: unit embeddings with ids, labels, metadata and (optionally) their images; search, save, explain.

A Gallery is either in memory (``Gallery(dim, ...)``) or attached to a folder (``Gallery.load(folder)`` or after
``save(folder)``). Changes (:meth:`Gallery.add`, :meth:`Gallery.remove`) are pending until :meth:`Gallery.commit`
(or ``save`` to the same folder) writes them as one transaction: O(1) I/O per item, whatever the gallery's size,
and never a lost update when several processes commit to one gallery (see :mod:`lcr_sdk.gallery.store`).

Slots: every item has a slot, its position in the vector array (committed slots first, then pending ones). Slots
only grow; removing an item kills its slot until compaction. Search results are slots turned into :class:`Hit`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lcr_sdk.errors import InputError, LcrError, ModelError
from lcr_sdk.fileio import mib
from lcr_sdk.gallery import items, legacy, store
from lcr_sdk.gallery.calibrate import Calibration, calibrate
from lcr_sdk.gallery.explain import (
    MAX_SPREAD,
    Explanation,
    Quality,
    check_quality,
    compare_parts,
    draw,
)
from lcr_sdk.gallery.pending import Pending
from lcr_sdk.gallery.search import (
    Blocks,
    FaissIndex,
    IndexSpec,
    exact,
    exact_subset,
    parse_index,
    search_with_index,
)

log = logging.getLogger("lcr_sdk.gallery")

SMALL_FILTER = 20_000  # a filter with at most this many candidates is searched exactly, even with an index
INDEX_EXTEND = 1024  # slots past the index before it is extended in memory ...
INDEX_PERSIST = 0.01  # ... and share of its size past the saved index before the index file is rewritten
ID_BLOCK = 64  # automatic ids reserved at a time by an attached gallery


@dataclass
class Hit:
    """One search result: the item's id, label, cosine score and metadata.

    :meth:`image` returns the item's stored image and :meth:`explain` compares it with the query.
    """

    id: str
    label: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)
    gallery: Gallery | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """id, label, score and metadata (what ``lcr-sdk gallery search --json`` prints)."""
        return {"id": self.id, "label": self.label, "score": self.score, "metadata": self.metadata}

    def image(self) -> np.ndarray:
        """The item's image (BGR uint8): its stored crop, or the file its ``path`` metadata names."""
        if self.gallery is None:
            raise InputError(f"hit {self.id!r} is not tied to a gallery; use Gallery.image(id)")
        return self.gallery.image(self.id)

    def explain(self, query: Any, embedder: Any, color: str = "bgr") -> Explanation:
        """Why this item matched ``query``: both attention maps, the matched part peaks and per-part similarity.

        Args:
            query: the query image (array, path or PIL image), as given to the search.
            embedder: the :class:`~lcr_sdk.embedder.Embedder` of the gallery's model.
        """
        from lcr_sdk.images import to_bgr

        q_img, h_img = to_bgr(query, color), self.image()
        q_att, h_att = embedder.attend(q_img), embedder.attend(h_img)
        parts = compare_parts(q_att, h_att)
        stored = self.gallery.vector(self.id) if self.gallery is not None else None
        note = ""
        if stored is not None and float(np.dot(stored, h_att.embedding)) < 0.99:
            note = "the item's image no longer gives its stored vector (changed since enrolment, or another model)"
        score = float(np.dot(q_att.embedding, h_att.embedding))
        title = f"score {self.score:.3f}  label {self.label or '-'}  id {self.id}"[:100]
        picture = draw(q_img, q_att, h_img, h_att, parts, title)
        return Explanation(score, self.label, self.id, parts, picture, note)


@dataclass
class Enrolment:
    """What :meth:`Gallery.enroll` did: the new item's id and the image's attention quality."""

    id: str
    quality: Quality


def _unit_rows(x: Any, dim: int, what: str) -> np.ndarray:
    try:
        x = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise InputError(f"{what} must be a float array of shape ({dim},) or (N, {dim}); got {type(x).__name__}") from e
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != dim or len(x) == 0:
        raise InputError(f"{what} must be ({dim},) or (N, {dim}) for this gallery of dim {dim}; got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise InputError(f"{what} contain zero, NaN or infinite vectors; pass embeddings from Embedder.embed")
    return np.asarray(x / norms, dtype=np.float32)


def _encode_crop(image: Any, i: int) -> bytes:
    from lcr_sdk.images import to_bgr

    img = to_bgr(image)
    ok, data = cv2.imencode(".png", img)
    if not ok:
        raise InputError(f"crops[{i}] of shape {img.shape} could not be encoded as PNG")
    return bytes(data.tobytes())


def _check_metadata(metadata: Any, n: int) -> list[dict[str, Any]]:
    if metadata is None:
        return [{} for _ in range(n)]
    if isinstance(metadata, dict) or not isinstance(metadata, Sequence):
        raise InputError(f"metadata must be a list of {n} dicts (one per vector); got {type(metadata).__name__}")
    out = []
    for i, m in enumerate(metadata):
        if not isinstance(m, dict):
            raise InputError(f"metadata[{i}] is {type(m).__name__} {m!r:.60}; each item's metadata must be a dict")
        for key in m:
            if not isinstance(key, str):
                raise InputError(f"metadata[{i}] has key {key!r}; keys must be strings (JSON objects)")
            items.check_text(key, f"metadata[{i}] key")
        try:
            json.dumps(m, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise InputError(f"metadata must be JSON-serialisable dicts; metadata[{i}] = {m!r:.80} ({e})") from e
        out.append(dict(m))
    return out


class Gallery:
    """Unit vectors with ids, labels and metadata; exact cosine search (or FAISS), persisted crash-safely.

    Args:
        dim: embedding dimension D.
        model_sha256: identity of the model that made the vectors (``Embedder.model_id``); searching with another
            model is refused unless forced.
        index: ``"exact"`` (numpy), ``"faiss"`` (flat inner product) or ``"faiss:<factory>[;<params>]"``, e.g.
            ``"faiss:HNSW32;efSearch=64"`` or ``"faiss:IVF1024,SQ8;nprobe=16"`` (see :mod:`lcr_sdk.gallery.search`).
        dtype: storage of the vectors: ``"float32"`` or ``"float16"`` (half the memory and disk; scores are
            computed in float32 from the stored values).
    """

    def __init__(self, dim: int, model_sha256: str = "", index: str = "exact", dtype: str = "float32"):
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise InputError(f"dim must be a positive int (the model's embedding_dim); got {dim!r}")
        if not isinstance(model_sha256, str):
            raise InputError(f"model_sha256 must be a str (Embedder.model_id); got {model_sha256!r}")
        if dtype not in store.DTYPES:
            raise InputError(f"dtype={dtype!r} is not valid; use one of {', '.join(store.DTYPES)}")
        self._spec: IndexSpec = parse_index(index, dim)
        self.dim, self.model_sha256, self.index, self.dtype = dim, model_sha256, index, dtype
        self.image_root = ""  # folder the items' relative "path" metadata points into (build_from_folder), if any
        self._mutex = threading.RLock()
        self._root: Path | None = None  # the folder this gallery is attached to
        self._saved: store.Saved | None = None  # its committed state (None: in memory, or a format-1 folder)
        self._legacy = False  # attached to a format-1 folder: the next commit migrates it
        self._pending = Pending(dim, dtype)
        self._cache: dict[str, Any] = {}
        self._next = 0
        self._reserved = (0, 0)  # automatic ids reserved from the store: [first, end)
        self._faiss: FaissIndex | None = None
        self._calibration: Calibration | None = None

    # -- state ------------------------------------------------------------------------------------------------
    # Slots 0..c-1 are the saved gallery's (self._saved, None for an unsaved gallery), slots c.. the pending ones.

    def _changed(self) -> None:
        self._cache.clear()

    @property
    def _c_count(self) -> int:
        return self._saved.count if self._saved is not None else 0

    def __len__(self) -> int:
        saved = self._saved.live - len(self._pending.removed) if self._saved is not None else 0
        return saved + self._pending.live

    @property
    def path(self) -> Path | None:
        """The folder this gallery is saved in (None for an unsaved gallery)."""
        return self._root

    @property
    def pending(self) -> int:
        """Changes (added or removed items) not yet committed."""
        return self._pending.changes

    def _blocks(self) -> Blocks:
        """The vectors of every slot: the saved file (memory-mapped), then the saved tail and the pending rows."""
        if "blocks" not in self._cache:
            raw = self._saved.raw if self._saved is not None else np.zeros((0, self.dim), self.dtype)
            tail = self._saved.tail if self._saved is not None else raw[:0]
            pend = self._pending.vectors()
            extra = pend if len(tail) == 0 else (tail if len(pend) == 0 else np.concatenate([tail, pend]))
            self._cache["blocks"] = Blocks([(0, raw), (len(raw), extra)])
        return self._cache["blocks"]  # type: ignore[no-any-return]

    def _alive(self) -> np.ndarray:
        """Which slots hold a live item (removed ones, committed or not, are dead)."""
        if "alive" not in self._cache:
            saved = self._saved.alive.copy() if self._saved is not None else np.zeros(0, bool)
            saved[list(self._pending.removed.values())] = False
            self._cache["alive"] = np.concatenate([saved, self._pending.alive])
        return self._cache["alive"]  # type: ignore[no-any-return]

    def _slot_db(self, slots: np.ndarray) -> Iterator[tuple[sqlite3.Connection, np.ndarray, int]]:
        """Split slots into (connection, rows in it, slot offset) for the saved and pending item tables."""
        c = self._c_count
        committed = slots[slots < c]
        if len(committed) and self._saved is not None:
            yield self._saved.conn, committed, 0
        pend = slots[slots >= c]
        if len(pend):
            yield self._pending.db, pend - c, c

    # -- reading ------------------------------------------------------------------------------------------------

    def _iter_rows(self, with_crops: bool = False) -> Iterator[tuple[int, str, str, str, bytes | None]]:
        """Live items in slot order: (slot, id, label, metadata JSON, crop)."""
        alive, c = self._alive(), self._c_count
        if self._saved is not None:
            for batch in items.iter_items(self._saved.conn, with_crops):
                for r in batch:
                    if r[0] < c and alive[r[0]]:
                        yield r
        for r in self._pending.live_rows(with_crops):
            yield (r[0] + c, *r[1:])

    @property
    def ids(self) -> list[str]:
        """Ids of all items in slot (insertion) order; O(N): reads the item table."""
        with self._mutex:
            return [r[1] for r in self._iter_rows()]

    @property
    def labels(self) -> list[str]:
        """Labels of all items in slot order; O(N)."""
        with self._mutex:
            return [r[2] for r in self._iter_rows()]

    @property
    def metadata(self) -> list[dict[str, Any]]:
        """Metadata of all items in slot order; O(N)."""
        with self._mutex:
            return [json.loads(r[3]) for r in self._iter_rows()]

    @property
    def vectors(self) -> np.ndarray:
        """N x D unit vectors of the live items in slot order, in the storage dtype (memory-mapped when the
        gallery is saved with no removed or pending items; otherwise a copy)."""
        with self._mutex:
            alive, blocks = self._alive(), self._blocks()
            if alive.all() and len(blocks.parts[1][1]) == 0:
                return blocks.parts[0][1]
            return np.asarray(blocks.take(np.flatnonzero(alive)), dtype=self.dtype)

    def _slot_of(self, item_id: str) -> int | None:
        if item_id in self._pending.removed:
            return None
        hit = items.rows_of_ids(self._pending.db, [item_id])
        if hit:
            return self._c_count + hit[item_id]
        if self._saved is not None:
            hit = items.rows_of_ids(self._saved.conn, [item_id])
            if hit and hit[item_id] < self._saved.count and self._saved.alive[hit[item_id]]:
                return hit[item_id]
        return None

    def vector(self, item_id: str) -> np.ndarray | None:
        """The stored unit vector of an item (float32), or None if there is no such item."""
        with self._mutex:
            slot = self._slot_of(str(item_id))
            return None if slot is None else self._blocks().take(np.array([slot]))[0]

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and self._slot_of(item_id) is not None

    def image_path(self, item_id: str) -> Path | None:
        """Where an item's image file is: its ``path`` metadata, relative to :attr:`image_root` (None if none)."""
        with self._mutex:
            slot = self._slot_of(str(item_id))
            if slot is None:
                raise InputError(f"id {item_id!r} is not in this gallery of {len(self)} items")
            meta = self._fetch(np.array([slot]))[slot][2]
        p = meta.get("path")
        if not isinstance(p, str) or not p:
            return None
        path = Path(p)
        if path.is_absolute():
            return path
        base = Path(self.image_root) if self.image_root else (self._root or Path("."))
        return base / path

    def image(self, item_id: str) -> np.ndarray:
        """An item's image (BGR uint8): its stored crop (live enrolments), else the file of its ``path``.

        Raises:
            InputError: the item has neither, or its file is gone.
        """
        from lcr_sdk.images import read_image

        with self._mutex:
            slot = self._slot_of(str(item_id))
            if slot is None:
                raise InputError(f"id {item_id!r} is not in this gallery of {len(self)} items")
            data = None
            for conn, rows, _ in self._slot_db(np.array([slot])):
                data = items.crop(conn, int(rows[0]))
        if data is not None:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if img is not None:
                return img
        path = self.image_path(item_id)
        if path is None:
            raise InputError(
                f"item {item_id!r} has no stored image: it was added without a 'path' in its metadata or a crop; "
                "add items with build_from_folder, enroll(), or metadata={'path': ...}"
            )
        return read_image(path)

    def _fetch(self, slots: np.ndarray) -> dict[int, tuple[str, str, dict[str, Any]]]:
        out: dict[int, tuple[str, str, dict[str, Any]]] = {}
        for conn, rows, offset in self._slot_db(slots):
            out.update({r + offset: v for r, v in items.fetch(conn, rows.tolist()).items()})
        return out

    # -- changing -----------------------------------------------------------------------------------------------

    def add(
        self,
        vectors: Any,
        ids: Sequence[Any] | None = None,
        labels: Sequence[Any] | None = None,
        metadata: Sequence[dict[str, Any]] | None = None,
        crops: Sequence[Any] | None = None,
    ) -> list[str]:
        """Add vectors (normalised to unit length) with optional ids, labels, JSON-able metadata dicts and crops.

        Everything is checked before anything changes: a bad argument leaves the gallery as it was. On a saved
        gallery the items are pending until :meth:`commit`.

        Args:
            vectors: (D,) or (N, D) embeddings.
            ids: unique ids (converted to str); generated ``"0"``, ``"1"``... when not given.
            labels: one label per vector (converted to str); ``""`` when not given.
            metadata: one dict per vector; the key ``"path"`` names the item's image file, relative to
                :attr:`image_root`.
            crops: one image (BGR array, path or PIL image) or None per vector, stored with the item (PNG) for
                :meth:`image`, explanations and ``rebuild``.

        Returns:
            The ids of the added items.
        """
        with self._mutex:
            v = _unit_rows(vectors, self.dim, "vectors")
            n = len(v)
            if ids is not None and (isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence)):
                raise InputError(f"ids must be a list of {n} ids; got {type(ids).__name__}")
            if labels is not None and (isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence)):
                raise InputError(f"labels must be a list of {n} labels; got {type(labels).__name__}")
            new_ids = [str(i) for i in ids] if ids is not None else None
            labs = [str(x) for x in labels] if labels is not None else [""] * n
            meta = _check_metadata(metadata, n)
            if crops is not None and (isinstance(crops, np.ndarray) or not isinstance(crops, Sequence)):
                raise InputError(f"crops must be a list of {n} images or None; got {type(crops).__name__}")
            crop_list = list(crops) if crops is not None else [None] * n
            counts = (n if new_ids is None else len(new_ids), len(labs), len(meta), len(crop_list))
            if counts != (n, n, n, n):
                raise InputError(
                    f"got {n} vectors but {counts[0]} ids, {counts[1]} labels, {counts[2]} metadata, {counts[3]} crops"
                )
            for lab in labs:
                items.check_text(lab, "label")
            if new_ids is not None:
                for i in new_ids:
                    items.check_text(i, "id")
                self._check_new_ids(new_ids)
            encoded = {i: _encode_crop(c, i) for i, c in enumerate(crop_list) if c is not None}
            if new_ids is None:
                new_ids = self._auto_ids(n)
            else:
                self._next += n  # automatic ids count every item ever added, as they always did
            self._pending.add(v.astype(self.dtype), new_ids, labs, meta, encoded)
            self._changed()
            return new_ids

    def _check_new_ids(self, new_ids: list[str]) -> None:
        if len(set(new_ids)) != len(new_ids):
            raise InputError("the new ids repeat (ids are unique); pick other ids")
        dup = list(items.rows_of_ids(self._pending.db, new_ids))
        if self._saved is not None:
            dup += [i for i in items.rows_of_ids(self._saved.conn, new_ids) if i not in self._pending.removed]
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
            if self._saved is not None:
                first, end = self._reserved
                if first >= end:
                    block = max(ID_BLOCK, need)
                    with store.GalleryLock(self._saved.root).hold(True):
                        first = self._saved.ver.reserve_ids(block, self._next)
                    end = first + block
                take = min(need, end - first)
                self._reserved = (first + take, end)
            else:
                first, take = self._next, need
            self._next = max(self._next, first + take)
            cand = [str(i) for i in range(first, first + take)]
            used = set(items.rows_of_ids(self._pending.db, cand)) | set(self._pending.removed)
            if self._saved is not None:
                used |= set(items.rows_of_ids(self._saved.conn, cand))
            out += [c for c in cand if c not in used]
        return out

    def remove(self, ids: Sequence[Any] | str) -> int:
        """Remove items by id; returns how many were removed. Unknown ids raise :class:`InputError` (and nothing
        is removed). On a saved gallery the removal is pending until :meth:`commit`."""
        with self._mutex:
            wanted = [ids] if isinstance(ids, str) else [str(i) for i in ids]
            slots = {i: self._slot_of(i) for i in dict.fromkeys(wanted)}
            unknown = [i for i, s in slots.items() if s is None]
            if unknown:
                raise InputError(f"ids {unknown[:5]} are not in the gallery of {len(self)} items")
            for i, s in slots.items():
                assert s is not None
                if s >= self._c_count:
                    self._pending.drop(s - self._c_count)
                else:
                    self._pending.removed[i] = s
            self._changed()
            return len(slots)

    # -- quality-gated enrolment ------------------------------------------------------------------------------------

    def enroll(
        self,
        embedder: Any,
        image: Any,
        label: str = "",
        id: str | None = None,
        metadata: dict[str, Any] | None = None,
        quality: str = "warn",
        max_spread: float = MAX_SPREAD,
        keep_image: bool = True,
        color: str = "bgr",
    ) -> Enrolment:
        """Embed one image and add it (pending until :meth:`commit`), checking its attention first.

        For LCR models an image whose attention is diffuse (:func:`~lcr_sdk.gallery.explain.check_quality`) is
        refused with ``quality="refuse"`` (:class:`InputError` with the reason) and added with a warning in the
        returned :class:`Enrolment` with ``"warn"``; MoCo models skip the check (the quality says so).

        Args:
            embedder: the :class:`~lcr_sdk.embedder.Embedder` of the gallery's model.
            image: a BGR array (e.g. a camera crop), path or PIL image.
            keep_image: store the image with the item (PNG), so it can be explained and re-embedded later.
        """
        from lcr_sdk.images import to_bgr

        if quality not in ("warn", "refuse", "off"):
            raise InputError(f"quality={quality!r} is not valid; use 'warn', 'refuse' or 'off'")
        self.check_model(embedder)
        img = to_bgr(image, color)
        att = embedder.attend(img)
        method = embedder.manifest.method
        q = check_quality(att.part_grid, method, max_spread)
        if quality == "off":
            q = Quality(True, False, q.spread, "not checked (quality='off')")
        if not q.ok and quality == "refuse":
            raise InputError(f"not enrolled: {q.reason}")
        meta = dict(metadata or {})
        if q.spread is not None:
            meta.setdefault("attention_spread", round(q.spread, 4))
        new = self.add(
            att.embedding,
            ids=None if id is None else [id],
            labels=[label],
            metadata=[meta],
            crops=[img] if keep_image else None,
        )
        return Enrolment(new[0], q)

    # -- search ---------------------------------------------------------------------------------------------------

    def check_model(self, model: Any, force: bool = False) -> None:
        """Refuse a query model (an Embedder or a sha256) other than the gallery's, unless ``force``."""
        sha = model if isinstance(model, str) else getattr(model, "model_id", "")
        if force or not sha or not self.model_sha256 or sha == self.model_sha256:
            return
        raise ModelError(
            f"this gallery was built with model {self.model_sha256[:12]}... but the query model is {sha[:12]}...: "
            "their embeddings are not comparable. Rebuild the gallery with this model (lcr-sdk gallery rebuild "
            "GALLERY --model MODEL), or pass force=True (--force) if you know they match"
        )

    def search(
        self,
        queries: Any,
        k: int = 5,
        model: Any = None,
        force: bool = False,
        threshold: float | str | None = None,
        label: str | Sequence[str] | None = None,
        where: dict[str, Any] | None = None,
    ) -> Any:
        """Nearest items by cosine similarity.

        Args:
            queries: one vector (D,) -> ``list[Hit]``; or (N, D) -> ``list[list[Hit]]``.
            k: hits per query (fewer if the gallery, or the filter, has fewer items).
            model: the Embedder (or its ``model_id``) that made the queries; checked against the gallery's.
            force: search even when ``model`` differs from the gallery's model.
            threshold: drop hits scoring below it: a cosine, ``"auto"`` (the gallery's calibrated
                :attr:`threshold`; none if it has none) or None (keep all). An empty result means "unknown".
            label: only items with this label (or one of these labels).
            where: only items whose metadata has these top-level key/value pairs (scalar values, matched by
                their JSON text: ``3`` and ``"3"`` differ).
        """
        with self._mutex:
            if model is not None:
                self.check_model(model, force)
            if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                raise InputError(f"k must be a positive int; got {k!r}")
            single = np.asarray(queries).ndim == 1
            q = _unit_rows(queries, self.dim, "queries")
            cut = self._resolve_threshold(threshold)
            cand = self._filter(label, where)
            if len(self) == 0 or (cand is not None and len(cand) == 0):
                return [] if single else [[] for _ in q]
            slots, scores = self._search(q, k, cand)
            info = self._fetch(np.unique(slots[slots >= 0]))
            hits = []
            for rs, rc in zip(slots, scores, strict=True):
                row = []
                for s, sc in zip(rs, rc, strict=True):
                    if s < 0 or int(s) not in info or (cut is not None and sc < cut):
                        continue
                    i, lab, meta = info[int(s)]
                    row.append(Hit(i, lab, float(sc), dict(meta), self))
                hits.append(row)
            return hits[0] if single else hits

    def _resolve_threshold(self, threshold: float | str | None) -> float | None:
        if threshold is None or threshold == "none":
            return None
        if threshold == "auto":
            return self.threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise InputError(f"threshold={threshold!r} is not valid; pass a cosine in [-1, 1], 'auto' or None")
        if not -1.0 <= threshold <= 1.0:
            raise InputError(f"threshold={threshold!r} is outside [-1, 1], the range of cosine scores")
        return float(threshold)

    def _filter(self, label: str | Sequence[str] | None, where: dict[str, Any] | None) -> np.ndarray | None:
        if label is None and not where:
            return None
        labels = [label] if isinstance(label, str) else (None if label is None else [str(x) for x in label])
        if labels is not None and not labels:
            raise InputError("label=[] selects nothing; pass a label, a list of labels or None")
        if where is not None:
            if not isinstance(where, dict):
                raise InputError(f"where must be a dict of metadata key -> value; got {type(where).__name__}")
            for key, value in where.items():
                if not isinstance(key, str) or not items.is_scalar(value):
                    raise InputError(
                        f"where={{{key!r}: {value!r:.40}}}: keys must be strings and values str, int, float, bool "
                        "or None (top-level metadata values are indexed; nested ones are not)"
                    )
        found = [items.filter_rows(self._pending.db, labels, where) + self._c_count]
        if self._saved is not None:
            rows = items.filter_rows(self._saved.conn, labels, where)
            found.insert(0, rows[rows < self._c_count])
        cand = np.concatenate(found)
        return np.asarray(cand[self._alive()[cand]], np.int64)

    def _search(self, q: np.ndarray, k: int, cand: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        blocks, alive = self._blocks(), self._alive()
        index = self._ensure_index() if self._spec.kind == "faiss" else None
        if cand is not None:
            if index is None or len(cand) <= SMALL_FILTER:
                return exact_subset(q, blocks, k, cand)
            allowed = np.zeros(len(alive), bool)
            allowed[cand] = True
            return search_with_index(q, blocks, k, index, alive, allowed)
        if index is None:
            return exact(q, blocks, k, alive)
        if "all_alive" not in self._cache:
            self._cache["all_alive"] = bool(alive.all())
        return search_with_index(q, blocks, k, index, alive, None, self._cache["all_alive"])

    def _ensure_index(self) -> FaissIndex | None:
        """The FAISS index (loaded, built or extended as needed), or None while the gallery is too small for it.

        A saved gallery's index covers its committed slots (pending ones are searched exactly)."""
        saved = self._saved
        upto = saved.count if saved is not None else self._pending.n
        if self._faiss is None and saved is not None and saved.meta.index_file:
            path = saved.ver.folder / saved.meta.index_file
            loaded = FaissIndex.load(path, self._spec, self.dim) if path.is_file() else None
            if loaded is not None and loaded.count == saved.meta.index_count <= upto:
                self._faiss = loaded
        if self._faiss is None:
            fresh = FaissIndex(self._spec, self.dim)
            if upto == 0 or upto < fresh.min_train:
                return None
            fresh.build(self._blocks(), upto)
            self._faiss = fresh
            self._persist_index(force=True)
        elif upto - self._faiss.count >= INDEX_EXTEND:
            self._faiss.extend(self._blocks(), upto)
            self._persist_index()
        return self._faiss

    def _persist_index(self, force: bool = False, locked: bool = False) -> None:
        """Save the in-memory index into the version folder if it covers enough more slots than the saved one."""
        saved, idx = self._saved, self._faiss
        if saved is None or idx is None or saved.ver.immutable or idx.count > saved.count:
            return
        done = saved.meta.index_count
        if not force and idx.count - done < max(INDEX_EXTEND, INDEX_PERSIST * done):
            return
        try:
            with contextlib.nullcontext() if locked else store.GalleryLock(saved.root).hold(True, timeout=0.0):
                if legacy.current_version(saved.root).name != saved.ver.name:
                    return  # rewritten meanwhile: this index is for an old version
                name = f"index-{idx.count}.faiss"
                idx.save(saved.ver.folder / name)
                old = saved.ver.reload_meta().index_file
                saved.record(index_file=name, index_count=idx.count)
                if old and old != name:
                    (saved.ver.folder / old).unlink(missing_ok=True)
        except (LcrError, OSError, sqlite3.Error) as e:  # busy or read-only: searching still works
            log.info("gallery index not saved (%s)", e)

    def set_index(self, index: str) -> None:
        """Change the search index (see :class:`Gallery`); a saved gallery records it at once, and the new index is
        built at the next search (then saved with the gallery)."""
        with self._mutex:
            spec = parse_index(index, self.dim)
            self.index, self._spec, self._faiss = index, spec, None
            if self._saved is not None and self._root is not None:
                with store.GalleryLock(self._root).hold(True):
                    saved = self._refresh_locked()
                    old = saved.meta.index_file
                    saved.record(index=index, index_file="", index_count=0)
                    if old:
                        (saved.ver.folder / old).unlink(missing_ok=True)

    # -- open set ---------------------------------------------------------------------------------------------

    @property
    def threshold(self) -> float | None:
        """The calibrated open-set threshold (see :mod:`lcr_sdk.gallery.calibrate`); None if not calibratable.

        Stored with the gallery; recomputed only when the gallery has changed by a fifth since."""
        with self._mutex:
            cal = self.calibration
            return cal.threshold if cal is not None else None

    @property
    def calibration(self) -> Calibration | None:
        """The stored (or, for a gallery changed enough since, a fresh) :class:`Calibration`."""
        with self._mutex:
            if self._calibration is None or self._calibration.stale(len(self)):
                self._calibration = self.calibrate()
            return self._calibration

    def calibrate(self, seed: int = 0) -> Calibration:
        """Compute the open-set threshold now, on a bounded sample (stored with the gallery at the next commit)."""
        with self._mutex:
            c = self._c_count
            alive, blocks = self._alive(), self._blocks()

            def labels_at(slots: np.ndarray) -> dict[int, str]:
                out: dict[int, str] = {}
                for conn, rows, off in self._slot_db(slots[alive[slots]]):
                    out.update({r + off: lab for r, lab in items.labels_of(conn, rows.tolist()).items()})
                return out

            def partners(label: str, start: int, limit: int) -> list[int]:
                found: list[int] = []
                if self._saved is not None:
                    found += [r for r in items.same_label(self._saved.conn, label, start, limit) if alive[r]]
                pend = items.same_label(self._pending.db, label, max(0, start - c), limit)
                return (found + [r + c for r in pend])[:limit]

            cal = calibrate(c + self._pending.n, labels_at, partners, blocks.take, len(self), seed)
            self._calibration = cal
            return cal

    # -- persistence ------------------------------------------------------------------------------------------

    def _meta(self) -> store.Meta:
        cal = self._calibration
        return store.Meta(
            dim=self.dim,
            dtype=self.dtype,
            model_sha256=self.model_sha256,
            index=self.index,
            next_id=self._next,
            image_root=self.image_root,
            calibration=cal.to_dict() if cal is not None else None,
        )

    def _chunks(self, batch: int = 8192) -> Iterator[store.Chunk]:
        blocks = self._blocks()
        rows: list[tuple[int, str, str, str, bytes | None]] = []
        for r in self._iter_rows(with_crops=True):
            rows.append(r)
            if len(rows) == batch:
                yield self._chunk(blocks, rows)
                rows = []
        if rows:
            yield self._chunk(blocks, rows)

    def _chunk(self, blocks: Blocks, rows: list[tuple[int, str, str, str, bytes | None]]) -> store.Chunk:
        slots = np.array([r[0] for r in rows], np.int64)
        return store.Chunk(
            blocks.take(slots).astype(self.dtype),
            [r[1] for r in rows],
            [r[2] for r in rows],
            [json.loads(r[3]) for r in rows],
            {i: r[4] for i, r in enumerate(rows) if r[4] is not None},
        )

    def _index_writer(self, progress: bool) -> Callable[[Path, int], tuple[str, int] | None] | None:
        if self._spec.kind != "faiss":
            return None

        def write(folder: Path, n: int) -> tuple[str, int] | None:
            idx = FaissIndex(self._spec, self.dim)
            if n == 0 or n < idx.min_train:
                return None
            vec = np.memmap(folder / store.vector_file(self.dtype), dtype=self.dtype, mode="r", shape=(n, self.dim))
            idx.build(Blocks([(0, vec)]), n, progress)
            name = f"index-{n}.faiss"
            idx.save(folder / name)
            return name, n

        return write

    def save(self, directory: str | os.PathLike[str], replace: bool = True, progress: bool = False) -> Path:
        """Save to ``directory``; returns the version folder.

        - The folder this gallery is attached to (it was loaded from or saved there): :meth:`commit` (O(changes)).
        - A new or empty folder: the whole gallery is written; this gallery is then attached to it.
        - Another gallery's folder: it is replaced crash-safely (``replace=False`` refuses instead).

        A process killed at any point leaves the previous gallery or the new one, never a mix.
        """
        root = Path(directory)
        with self._mutex:
            same = self._root is not None and root.resolve() == self._root.resolve()
            if same and not self._legacy:
                self.commit()
                assert self._saved is not None
                return self._saved.ver.folder
            store.check_target(root)
            if store.is_gallery(root) and not replace and not same:
                raise InputError(f"{root} already holds a gallery; pass replace=True (--replace) to replace it")
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise InputError(f"cannot create gallery folder {root} ({e.strerror}); choose another path") from e
            with store.GalleryLock(root).hold(True):
                return self._write_all(root, progress)

    def _write_all(self, root: Path, progress: bool = False, index: bool = True) -> Path:
        """Write the whole gallery as a new version of ``root`` and attach to it (caller holds the lock)."""
        if self._calibration is None or self._calibration.stale(len(self)):
            self.calibrate()
        writer = self._index_writer(progress) if index else None
        folder: Path = _write_or_explain(root, lambda: store.write_version(root, self._meta(), self._chunks(), writer))
        self._attach(store.Saved(root, store.Version(root, folder)))
        return folder

    def commit(self) -> None:
        """Write pending changes into the folder this gallery is attached to: one transaction, O(changes) I/O.

        Changes committed by other processes since this gallery was loaded are kept (and become visible here).
        Afterwards a full tail is appended to the vector file, a gallery with a quarter of its slots removed is
        compacted, and the index and the open-set calibration are saved when they are due.

        Raises:
            InputError: the gallery was never saved (use :meth:`save`), a pending id was added by another process
                meanwhile (nothing is written; remove or rename it and commit again), or the disk is full.
        """
        with self._mutex:
            if self._root is None:
                raise InputError("this gallery is not saved anywhere yet; call save(folder) first")
            root = self._root
            with store.GalleryLock(root).hold(True):
                if self._legacy:  # format 1: the first commit rewrites it in format 2
                    self._write_all(root)
                    return
                saved = self._refresh_locked()
                if self.pending or saved.meta.image_root != self.image_root or saved.meta.next_id < self._next:
                    p = self._pending
                    new = [(r[1], r[2], json.loads(r[3]), r[4]) for r in p.live_rows(with_crops=True)]
                    vecs = p.vectors()[p.alive] if p.n else p.vectors()
                    _write_or_explain(root, lambda: saved.commit(new, vecs, p.removed, self._next, self.image_root))
                    p.clear()
                    self._changed()
                self._maintain_locked()

    def _maintain_locked(self) -> None:
        """After a commit: move a full tail into the vector file, compact, save the index and calibration."""
        saved = self._saved
        assert saved is not None and self._root is not None
        saved.checkpoint_if_full()
        self._changed()
        if saved.compaction_due:
            self._write_all(self._root, index=False)
            saved = self._saved
            assert saved is not None
        self._persist_index(locked=True)
        cal = self._calibration
        if cal is None or cal.stale(len(self)):
            cal = self.calibrate()
        if cal.to_dict() != saved.meta.calibration:
            saved.record(calibration=cal.to_dict())

    def compact(self) -> Path:
        """Rewrite the saved gallery without its removed slots (a new version folder); O(N).

        Commits do this by themselves once removed slots are a quarter of the gallery."""
        with self._mutex:
            if self._root is None or self._saved is None:
                raise InputError("only a saved gallery can be compacted; call save(folder) first")
            if self.pending:
                raise InputError(f"{self.pending} changes are pending; commit() them before compacting")
            with store.GalleryLock(self._root).hold(True):
                self._refresh_locked()
                return self._write_all(self._root, index=False)

    def refresh(self) -> bool:
        """Bring in changes other processes committed since this gallery was loaded; returns whether any were."""
        with self._mutex:
            if self._root is None or self._saved is None:
                return False
            before = (self._saved.ver.name, self._saved.gen, self._saved.meta.synced)
            with store.GalleryLock(self._root).hold(False):
                saved = self._refresh_locked()
            return (saved.ver.name, saved.gen, saved.meta.synced) != before

    def _refresh_locked(self) -> store.Saved:
        """The saved view brought up to date (the caller holds a lock)."""
        assert self._saved is not None
        saved = self._saved.current()
        if saved is not self._saved:
            self._attach(saved, keep_pending=True)
        else:
            self._adopt(saved)
        return saved

    def _adopt(self, saved: store.Saved) -> None:
        """Take the saved gallery's fields that others may have changed."""
        meta = saved.meta
        self._next = max(self._next, meta.next_id)
        if meta.calibration is not None:
            self._calibration = Calibration.from_dict(meta.calibration)
        self._changed()

    def _attach(self, saved: store.Saved, keep_pending: bool = False) -> None:
        """Attach to a saved version: adopt its meta and its committed view (pending changes kept if asked)."""
        meta = saved.meta
        if (meta.dim, meta.dtype) != (self.dim, self.dtype):
            raise InputError(
                f"gallery {saved.root} holds {meta.dim}-d {meta.dtype} vectors, not {self.dim}-d {self.dtype}"
            )
        if self._saved is not None and self._saved is not saved:
            self._saved.close()
        removed = dict(self._pending.removed) if keep_pending else {}
        if not keep_pending:
            self._pending.clear()
        self._pending.removed = {}
        if removed:  # removals pending against a rewritten version: find those items again by id
            for i, s in items.rows_of_ids(saved.conn, list(removed)).items():
                if saved.alive[s]:
                    self._pending.removed[i] = s
        self._root, self._saved, self._legacy = saved.root, saved, False
        self.model_sha256, self.index, self.image_root = meta.model_sha256, meta.index, meta.image_root
        self._spec = parse_index(meta.index, self.dim)
        self._faiss, self._reserved = None, (0, 0)
        self._adopt(saved)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], mmap: bool = True) -> Gallery:
        """Open a saved gallery (vectors memory-mapped unless ``mmap=False``).

        Format-1 galleries (lcr-sdk 0.1) are read as they are and rewritten in the current format at the first
        :meth:`commit`. Everything is checked as it is read: the folder ``CURRENT`` names, every field of the
        header, the model identity, the index spec and a sample of the vectors (finite, unit length).
        """
        root = Path(directory)
        if not root.is_dir():
            raise InputError(f"{root} is not a saved gallery (no such folder); build one with `lcr-sdk gallery build`")
        with store.GalleryLock(root).hold(False):
            ver = store.open_version(root)
            if ver is None:
                return cls._load_v1(root, legacy.read_v1(legacy.current_version(root), mmap))
            meta = ver.meta
            try:
                g = cls(meta.dim, meta.model_sha256, meta.index, meta.dtype)
            except InputError as e:
                ver.close()
                raise store.damaged(ver.folder, f"its index spec {meta.index!r} is not valid: {e}") from None
            try:
                g._attach(store.Saved(root, ver))
            except BaseException:
                ver.close()
                raise
        if not mmap and g._saved is not None:
            g._saved.raw = np.array(g._saved.raw)
            g._changed()
        return g

    @classmethod
    def _load_v1(cls, root: Path, old: legacy.V1Gallery) -> Gallery:
        h = old.header
        try:
            g = cls(h["dim"], h["model_sha256"], str(h.get("index", "exact")))
        except InputError as e:
            raise store.damaged(old.folder, f"its index spec {h.get('index')!r} is not valid: {e}") from None
        for i, lab in zip(old.ids, old.labels, strict=True):
            items.check_text(i, "id")
            items.check_text(lab, "label")
        store.check_vectors(old.folder, old.vectors, "float32")
        g._pending.add(old.vectors, old.ids, old.labels, old.metadata, {})
        next_id = h.get("next_id", len(old.ids))
        g._next = next_id if isinstance(next_id, int) else len(old.ids)
        root_str = h.get("image_root", "")
        g.image_root = root_str if isinstance(root_str, str) else ""
        g._root, g._legacy = root, True
        g._changed()
        return g

    def rebuild(
        self,
        embedder: Any,
        out: str | os.PathLike[str] | None = None,
        batch: int = 32,
        progress: bool = True,
        skip_missing: bool = False,
    ) -> tuple[Gallery, list[str]]:
        """Re-embed every item from its stored image (crop, or file under :attr:`image_root`) with ``embedder``.

        Ids, labels, metadata and crops are kept; the model identity, dimension and vectors are the new model's.
        Every image is located before any is embedded. The result replaces this gallery's folder (refused if
        another process committed to it meanwhile), is written to ``out``, or (unsaved galleries) returned only.
        See :func:`lcr_sdk.gallery.build.rebuild`.

        Returns:
            The new gallery and the ids left out (``skip_missing``).

        Raises:
            InputError: items without a findable image (unless ``skip_missing``), or a bad option.
        """
        from lcr_sdk.gallery.build import rebuild

        return rebuild(self, embedder, out, batch, progress, skip_missing)

    def info(self) -> dict[str, Any]:
        """A summary: size, labels, storage, index, open-set threshold, where it is saved."""
        with self._mutex:
            cal = self.calibration
            ver = self._saved.ver if self._saved is not None else None
            return {
                "path": str(self._root) if self._root else None,
                "format": 1 if self._legacy else (store.FORMAT_VERSION if ver else None),
                "version": ver.name if ver else None,
                "items": len(self),
                "labels": len(set(self.labels)),
                "dim": self.dim,
                "dtype": self.dtype,
                "model_sha256": self.model_sha256,
                "index": self.index,
                "index_file": ver.meta.index_file if ver else "",
                "index_saved_over": ver.meta.index_count if ver else 0,
                "threshold": cal.threshold if cal else None,
                "threshold_far": cal.far if cal else None,
                "threshold_frr": cal.frr if cal else None,
                "threshold_note": cal.reason if cal else None,
                "image_root": self.image_root,
                "pending": self.pending,
                "removed_slots": self._saved.dead if self._saved is not None else 0,
            }

    def verify(self) -> None:
        """Check every stored vector (finite, unit length) and the item count; O(N).

        Raises:
            InputError: naming the first bad item.
        """
        with self._mutex:
            where = self._saved.ver.folder if self._saved is not None else Path(str(self._root or "memory"))
            blocks, alive = self._blocks(), self._alive()
            for first, chunk in blocks.chunks(65536):
                store.check_vectors(where, chunk, self.dtype, alive[first : first + len(chunk)], sample=False)
            n = sum(1 for _ in self._iter_rows())
            if n != len(self):
                raise store.damaged(where, f"{n} items in its tables but {len(self)} live slots")

    def close(self) -> None:
        """Release the saved gallery's files (the object stays usable in memory only after this)."""
        with self._mutex:
            if self._saved is not None:
                self._saved.close()

    def __repr__(self) -> str:
        where = f", path={str(self._root)!r}" if self._root is not None else ""
        return (
            f"Gallery({len(self)} x {self.dim} {self.dtype}, index={self.index!r}, "
            f"model={self.model_sha256[:12]!r}{where})"
        )


def _write_or_explain(root: Path, write: Callable[[], Any]) -> Any:
    """Run a write; turn a full disk or a refused write into one :class:`InputError` (nothing committed)."""
    import shutil

    def disk_full() -> InputError:
        return InputError(
            f"cannot write gallery {root}: the disk is full ({mib(shutil.disk_usage(root).free)} free); free space "
            "and try again (the saved gallery is unchanged; pending changes are kept)"
        )

    try:
        return write()
    except sqlite3.Error as e:
        if "full" in str(e).lower():
            raise disk_full() from None
        raise InputError(f"cannot write gallery {root} ({e}); the saved gallery is unchanged") from None
    except OSError as e:
        if e.errno == 28:  # ENOSPC
            raise disk_full() from None
        raise InputError(f"cannot write gallery {root} ({e.strerror or e}); the saved gallery is unchanged") from None
