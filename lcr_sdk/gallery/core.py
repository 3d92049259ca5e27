"""The Gallery: unit embeddings with ids, labels, metadata and (optionally) their images; search, save, explain.

A Gallery is either in memory (``Gallery(dim, ...)``) or attached to a folder (``Gallery.load(folder)`` or after
``save(folder)``). Changes (:meth:`Gallery.add`, :meth:`Gallery.remove`) are pending until :meth:`Gallery.commit`
(or ``save`` to the same folder) writes them as one transaction: O(1) I/O per item, whatever the gallery's size,
and never a lost update when several processes commit to one gallery (see :mod:`lcr_sdk.gallery.store`).

:class:`Gallery` checks its arguments and hands each job to one module: what it holds to
:mod:`~lcr_sdk.gallery.contents`, how it commits to :mod:`~lcr_sdk.gallery.persist`, how it searches to
:mod:`~lcr_sdk.gallery.search`, how it is rebuilt to :mod:`~lcr_sdk.gallery.rebuild`.
"""

from __future__ import annotations

import json
import operator
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lcr_sdk.errors import InputError, ModelError, import_platform
from lcr_sdk.gallery import calibrate, persist, rebuild, store
from lcr_sdk.gallery.calibrate import Calibration
from lcr_sdk.gallery.contents import Contents
from lcr_sdk.gallery.explain import (
    MAX_SPREAD,
    Explanation,
    Quality,
    compare_parts,
    draw,
    prepare_enrolment,
)
from lcr_sdk.gallery.search import Searcher, parse_index
from lcr_sdk.redact import redact


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


def unit_rows(x: Any, dim: int, what: str) -> np.ndarray:
    """``x`` as unit-length float32 rows of width ``dim``; one :class:`InputError` naming ``what`` otherwise."""
    try:
        x = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise InputError(f"{what} must be a float array of shape ({dim},) or (N, {dim}); got {type(x).__name__}") from e
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != dim or len(x) == 0:
        raise InputError(
            f"{what} must be ({dim},) or (N, {dim}) for this gallery of dim {dim}; got shape {x.shape}"
            + (
                f": vectors of {x.shape[-1]} dimensions come from another model; embed with the gallery's model, or "
                "re-embed the gallery with this one (`lcr-sdk gallery rebuild GALLERY --model MODEL`)"
                if x.ndim in (1, 2) and x.shape[-1] != dim and x.shape[-1] > 0
                else ""
            )
        )
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise InputError(f"{what} contain zero, NaN or infinite vectors; pass embeddings from Embedder.embed")
    return np.asarray(x / norms, dtype=np.float32)


def _encode_crop(image: Any, i: int) -> bytes:
    from lcr_sdk.images import to_bgr

    img = to_bgr(image)
    ok, data = import_platform("cv2").imencode(".png", img)
    if not ok:
        raise InputError(f"crops[{i}] of shape {img.shape} could not be encoded as PNG")
    return bytes(data.tobytes())


def item_ids(ids: Any, n: int) -> list[str] | None:
    """The ids given to ``add`` as strings (None: ids are made); a list, tuple or 1-D array of them.

    Raises:
        InputError: not a sequence of ids, or an id that is None or blank (``str(None)`` would store the id 'None').
    """
    if ids is None:
        return None
    ids = _as_list(ids, n, "ids")
    bad = next((i for i in ids if i is None or (isinstance(i, str) and not i.strip())), "ok")
    if bad != "ok":
        raise InputError(
            f"id {bad!r} is not valid: an id names one item, so it must be a non-empty string (or a number); pass "
            "ids=None to have ids made"
        )
    return [str(i) for i in ids]


def item_labels(labels: Any, n: int) -> list[str]:
    """The labels given to ``add`` as strings; None (for all, or for one item) is no label, ``""``."""
    if labels is None:
        return [""] * n
    return ["" if x is None else str(x) for x in _as_list(labels, n, "labels")]


def _as_list(values: Any, n: int, name: str) -> list[Any]:
    if isinstance(values, np.ndarray) and values.ndim == 1:
        return list(values.tolist())
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise InputError(f"{name} must be a list of {n} {name}; got {type(values).__name__}")
    return list(values)


def id_list(ids: Any) -> list[str]:
    """The ids given to ``remove``: one id (a string or a number) or a list of them."""
    if isinstance(ids, (str, int, np.integer)) and not isinstance(ids, bool):
        return [str(ids)]
    if isinstance(ids, np.ndarray) and ids.ndim == 1:
        ids = ids.tolist()
    if isinstance(ids, bytes) or not isinstance(ids, (Sequence, set, frozenset)):
        raise InputError(f"ids must be an id or a list of ids; got {type(ids).__name__}")
    return [str(i) for i in ids]


def check_k(k: Any, most: int | None = None, why: str = "") -> int:
    """``k`` as an int (any integer type: a numpy int too) in [1, most]; InputError otherwise."""
    try:
        value = operator.index(k) if not isinstance(k, bool) else None
    except TypeError:
        value = None
    if value is None or value < 1 or (most is not None and value > most):
        span = f"an int in [1, {most}]{why}" if most is not None else "a positive int"
        raise InputError(f"k must be {span}; got {k!r}")
    return value


def check_metadata(metadata: Any, n: int) -> list[dict[str, Any]]:
    """``n`` items' metadata checked as a gallery stores it: JSON-able dicts with string keys, credentials masked."""
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
            store.check_text(key, f"metadata[{i}] key")
        try:
            json.dumps(m, allow_nan=False)
            out.append(store.redact_values(m))  # a source URI's password is never stored
        except RecursionError:
            raise InputError(f"metadata[{i}] is nested too deeply to store as JSON; flatten it") from None
        except (TypeError, ValueError) as e:
            raise InputError(
                f"metadata must be JSON-serialisable dicts; metadata[{i}] = {redact(repr(m)):.80} ({e})"
            ) from e
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
        store.check_dtype(dtype)
        spec = parse_index(index, dim)
        self._mutex = threading.RLock()
        self._held: Contents | None = Contents(dim, dtype, model_sha256, index)
        self._searcher = Searcher(spec, dim)

    @classmethod
    def _of(cls, contents: Contents, searcher: Searcher) -> Gallery:
        g = cls.__new__(cls)
        g._mutex, g._held, g._searcher = threading.RLock(), contents, searcher
        return g

    @property
    def _contents(self) -> Contents:
        if self._held is None:
            raise InputError("this gallery was closed; load it again (Gallery.load(folder)) to use it")
        return self._held

    # -- what it is -------------------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        """Embedding dimension D."""
        return self._contents.dim

    @property
    def dtype(self) -> str:
        """Vector storage: ``"float32"`` or ``"float16"``."""
        return self._contents.dtype

    @property
    def model_sha256(self) -> str:
        """Identity of the model that made the vectors."""
        return self._contents.model_sha256

    @property
    def index(self) -> str:
        """The search index spec (change it with :meth:`set_index`)."""
        return self._contents.index

    @property
    def image_root(self) -> str:
        """The folder the items' relative ``path`` metadata points into (:func:`build_from_folder` sets it)."""
        return self._contents.image_root

    @image_root.setter
    def image_root(self, value: str) -> None:
        if not isinstance(value, str):
            raise InputError(f"image_root must be a folder path as str; got {value!r}")
        self._contents.image_root = value

    def __len__(self) -> int:
        with self._mutex:  # another thread's commit may be replacing the store under it
            return len(self._contents)

    @property
    def path(self) -> Path | None:
        """The folder this gallery is saved in (None for an unsaved gallery)."""
        return self._contents.root

    @property
    def pending(self) -> int:
        """Changes (added or removed items) not yet committed."""
        with self._mutex:
            return self._contents.pending.changes

    # -- reading ----------------------------------------------------------------------------------------------

    @property
    def ids(self) -> list[str]:
        """Ids of all items in slot (insertion) order; O(N): reads the item table."""
        with self._mutex:
            return [r[1] for r in self._contents.rows()]

    @property
    def labels(self) -> list[str]:
        """Labels of all items in slot order; O(N)."""
        with self._mutex:
            return [r[2] for r in self._contents.rows()]

    @property
    def metadata(self) -> list[dict[str, Any]]:
        """Metadata of all items in slot order; O(N)."""
        with self._mutex:
            return [store.parse_metadata(r[1], r[3]) for r in self._contents.rows()]

    @property
    def vectors(self) -> np.ndarray:
        """N x D unit vectors of the live items in slot order, in the storage dtype (memory-mapped when the
        gallery is saved with no removed or pending items; otherwise a copy)."""
        with self._mutex:
            return self._contents.live_vectors()

    def vector(self, item_id: str) -> np.ndarray | None:
        """The stored unit vector of an item (float32), or None if there is no such item."""
        with self._mutex:
            slot = self._contents.slot_of(str(item_id))
            return None if slot is None else self._contents.take(np.array([slot]))[0]

    def __contains__(self, item_id: object) -> bool:
        with self._mutex:
            return isinstance(item_id, str) and self._contents.slot_of(item_id) is not None

    def image_path(self, item_id: str) -> Path | None:
        """Where an item's image file is: its ``path`` metadata, relative to :attr:`image_root` (None if none).

        Raises:
            InputError: no such item, or a stored path that leaves the image root (absolute, or with ``..``).
        """
        with self._mutex:
            c = self._contents
            slot = c.existing_slot(str(item_id))
            return c.image_path(str(item_id), c.fetch(np.array([slot]))[slot][2])

    def image(self, item_id: str) -> np.ndarray:
        """An item's image (BGR uint8): its stored crop (live enrolments), else the file of its ``path``.

        Raises:
            InputError: the item has neither, or its file is gone.
        """
        from lcr_sdk.images import read_image

        with self._mutex:
            data = self._contents.crop(self._contents.existing_slot(str(item_id)))
        if data is not None:
            return store.decode_crop(str(item_id), data)
        path = self.image_path(item_id)
        if path is None:
            raise InputError(
                f"item {item_id!r} has no stored image: it was added without a 'path' in its metadata or a crop; "
                "add items with build_from_folder, enroll(), or metadata={'path': ...}"
            )
        if not path.exists() and not path.is_symlink():
            raise InputError(
                f"gallery item {item_id!r}: its image {path} does not exist (the gallery records its images under "
                f"{self.image_root or self.path}); if the images were moved or the gallery copied elsewhere, set "
                "gallery.image_root to the folder that now holds them (commit() keeps it), or pass --image-root DIR "
                "to lcr-sdk gallery"
            )
        return read_image(path)

    # -- changing ---------------------------------------------------------------------------------------------

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
                :attr:`image_root`. Credentials in its strings (the password of a source URI such as
                ``rtsp://user:pw@cam/stream``) are stored as ``***`` (:func:`lcr_sdk.redact.redact`).
            crops: one image (BGR array, path or PIL image) or None per vector, stored with the item (PNG) for
                :meth:`image`, explanations and ``rebuild``.

        Returns:
            The ids of the added items.
        """
        with self._mutex:
            v = unit_rows(vectors, self.dim, "vectors")
            n = len(v)
            new_ids, labs = item_ids(ids, n), item_labels(labels, n)
            meta = check_metadata(metadata, n)
            if crops is not None and (isinstance(crops, np.ndarray) or not isinstance(crops, Sequence)):
                raise InputError(f"crops must be a list of {n} images or None; got {type(crops).__name__}")
            crop_list = list(crops) if crops is not None else [None] * n
            counts = (n if new_ids is None else len(new_ids), len(labs), len(meta), len(crop_list))
            if counts != (n, n, n, n):
                raise InputError(
                    f"got {n} vectors but {counts[0]} ids, {counts[1]} labels, {counts[2]} metadata, {counts[3]} crops"
                )
            for lab in labs:
                store.check_text(lab, "label")
            for i in new_ids or []:
                store.check_text(i, "id")
            encoded = {i: _encode_crop(c, i) for i, c in enumerate(crop_list) if c is not None}
            return self._contents.add(v, new_ids, labs, meta, encoded)

    def remove(self, ids: Sequence[Any] | str) -> int:
        """Remove items by id; returns how many were removed. Unknown ids raise :class:`InputError` (and nothing
        is removed). On a saved gallery the removal is pending until :meth:`commit`."""
        with self._mutex:
            return self._contents.remove(id_list(ids))

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
        self.check_model(embedder)
        emb, img, meta, q = prepare_enrolment(embedder, image, metadata, quality, max_spread, color)
        new = self.add(
            emb, ids=None if id is None else [id], labels=[label], metadata=[meta], crops=[img] if keep_image else None
        )
        return Enrolment(new[0], q)

    # -- search -----------------------------------------------------------------------------------------------

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
        exact: bool = False,
    ) -> Any:
        """Nearest items by cosine similarity.

        Args:
            queries: one vector (D,) -> ``list[Hit]``; or (N, D) -> ``list[list[Hit]]``.
            k: hits per query (fewer if the gallery, or the filter, has fewer items).
            model: the Embedder (or its ``model_id``) that made the queries; checked against the gallery's.
            force: search even when ``model`` differs from the gallery's model.
            threshold: drop hits scoring below it: a cosine (a number, or its text such as ``"0.6"``), ``"auto"``
                (the gallery's calibrated :attr:`threshold`; none if it has none) or None / ``"none"`` (keep all).
                An empty result means "unknown".
            label: only items with this label (or one of these labels).
            where: only items whose metadata has these top-level key/value pairs (scalar values, matched by
                their JSON text: ``3`` and ``"3"`` differ).
            exact: score every item exactly (numpy) even if the gallery has a FAISS index, which is kept as it is:
                the reference an approximate index is measured against.
        """
        with self._mutex:
            if model is not None:
                self.check_model(model, force)
            k = check_k(k)
            single = np.asarray(queries).ndim == 1
            q = unit_rows(queries, self.dim, "queries")
            found = self._searcher.search(self._contents, q, k, threshold, label, where, exact)
            hits = [[Hit(*f, gallery=self) for f in row] for row in found]
            return hits[0] if single else hits

    def set_index(self, index: str) -> None:
        """Change the search index (see :class:`Gallery`); a saved gallery records it at once. A new index is built
        at the next search (then saved with the gallery); the same FAISS index with other search parameters (e.g.
        ``nprobe``, ``efSearch``) is kept, with the new parameters."""
        with self._mutex:
            persist.set_index(self._contents, self._searcher, index)

    def prepare_index(self) -> bool:
        """Load, build or extend the FAISS index now, rather than at the first search (a service warming up);
        returns whether the gallery has an index ready (False for exact search, or while too small for one)."""
        with self._mutex:
            if self._searcher.spec.kind != "faiss":
                return False
            return self._searcher.ensure_index(self._contents) is not None

    # -- open set ---------------------------------------------------------------------------------------------

    @property
    def threshold(self) -> float | None:
        """The calibrated open-set threshold (see :mod:`lcr_sdk.gallery.calibrate`); None if not calibratable.

        Stored with the gallery; recomputed when the gallery has changed by a fifth (and by 10 items) since, or at
        any change while there is no threshold."""
        with self._mutex:
            return calibrate.current(self._contents).threshold

    @property
    def calibration(self) -> Calibration | None:
        """The stored (or, for a gallery changed enough since, a fresh) :class:`Calibration`."""
        with self._mutex:
            return calibrate.current(self._contents)

    def calibrate(self, seed: int = 0) -> Calibration:
        """Compute the open-set threshold now, on a bounded sample (stored with the gallery at the next commit)."""
        with self._mutex:
            return calibrate.recalibrate(self._contents, seed)

    # -- persistence ------------------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str], replace: bool = True, progress: bool = False) -> Path:
        """Save to ``directory``; returns the version folder.

        - The folder this gallery is attached to (it was loaded from or saved there): :meth:`commit` (O(changes)).
        - A new or empty folder: the whole gallery is written; this gallery is then attached to it.
        - Another gallery's folder: it is replaced crash-safely (``replace=False`` refuses instead).

        A process killed at any point leaves the previous gallery or the new one, never a mix.
        """
        with self._mutex:
            return persist.save(self._contents, self._searcher, directory, replace, progress)

    def commit(self) -> None:
        """Write pending changes into the folder this gallery is attached to: one transaction, O(changes) I/O.

        Changes committed by other processes since this gallery was loaded are kept (and become visible here).
        Afterwards a full tail is appended to the vector file, a gallery with at least
        :data:`~lcr_sdk.gallery.store.COMPACT_MIN_DEAD` removed slots that are also a quarter of its slots is
        compacted, and the index and the open-set calibration are saved when they are due.

        Raises:
            InputError: the gallery was never saved (use :meth:`save`), a pending id was added by another process
                meanwhile (nothing is written; remove or rename it and commit again), a format-1 gallery was changed
                by another process since it was loaded (nothing is written), or the disk is full.
        """
        with self._mutex:
            persist.commit(self._contents, self._searcher)

    def compact(self) -> Path:
        """Rewrite the saved gallery without its removed slots (a new version folder); O(N).

        Commits do this by themselves once removed slots are at least
        :data:`~lcr_sdk.gallery.store.COMPACT_MIN_DEAD` and a quarter of the gallery."""
        with self._mutex:
            return persist.compact(self._contents, self._searcher)

    def refresh(self) -> bool:
        """Bring in changes other processes committed since this gallery was loaded; returns whether any were."""
        with self._mutex:
            return persist.refresh(self._contents, self._searcher)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], mmap: bool = True) -> Gallery:
        """Open a saved gallery (vectors memory-mapped unless ``mmap=False``).

        Format-1 galleries (lcr-sdk 0.1) are read as they are and rewritten in the current format at the first
        :meth:`commit`. Everything is checked as it is read: the folder ``CURRENT`` names, every field of the
        header, the model identity, the index spec, the item table against the slots, and a sample of the vectors
        (finite, unit length).
        """
        return cls._of(*persist.load(Path(directory), mmap))

    @classmethod
    def connect(cls, uri: str, collection: str = "lcr_gallery", **kw: Any) -> Any:
        """A fleet gallery in a Milvus collection (the `fleet` extra): an http(s)/tcp URI of a Milvus server, or a
        path ending in .db for an embedded milvus-lite database; see docs/FLEET.md.

        The keyword arguments go to :func:`lcr_sdk.gallery.fleet.connect` (``model``, ``dim``, ``index``,
        ``timeout``, ``device``, ``create``, ``token``); pymilvus is imported only here.
        """
        from lcr_sdk.gallery.fleet import connect

        return connect(uri, collection, **kw)

    def sync(self, fleet: Any, collection: str = "lcr_gallery", **kw: Any) -> Any:
        """Exchange this saved gallery's enrolments and removals with a fleet gallery (a URI, a path ending in .db,
        or an open fleet gallery); safe to repeat after a failure. Returns the sync's report; the rules are in
        :mod:`lcr_sdk.gallery.sync` and docs/FLEET.md."""
        from lcr_sdk.gallery.sync import sync

        return sync(self, fleet, collection, **kw)

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

        Returns:
            The new gallery and the ids left out (``skip_missing``).

        Raises:
            InputError: items without a findable image (unless ``skip_missing``), a stored path that leaves the
                image root, or a bad option.
        """
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise InputError(f"batch={batch!r} is not valid; pass a positive number of images per embed call")
        with self._mutex:
            c = self._contents
            seen = persist.version_seen(c)
            found, missing = rebuild.locate(c, skip_missing)
            new = Gallery(embedder.manifest.embedding_dim, embedder.model_id, self.index, self.dtype)
            new.image_root = c.image_root
            rebuild.reembed(new.add, found, embedder, batch, progress)
            target = Path(out) if out is not None else c.root
            if target is None:
                return new, missing
            if c.root is not None and target.resolve() == c.root.resolve():
                persist.replace(new._contents, new._searcher, target, seen, progress)
            else:
                new.save(target, replace=True, progress=progress)
            return new, missing

    def info(self) -> dict[str, Any]:
        """A summary: size, labels, storage, index, open-set threshold, where it is saved."""
        with self._mutex:
            c = self._contents
            cal = calibrate.current(c)
            ver = c.saved.ver if c.saved is not None else None
            return {
                "path": str(c.root) if c.root else None,
                "format": 1 if c.legacy else (store.FORMAT_VERSION if ver else None),
                "version": ver.name if ver else None,
                "items": len(c),
                "labels": len({lab for lab in self.labels if lab}),  # "" is no label
                "dim": c.dim,
                "dtype": c.dtype,
                "model_sha256": c.model_sha256,
                "index": c.index,
                "index_file": ver.meta.index_file if ver else "",
                "index_saved_over": ver.meta.index_count if ver else 0,
                "threshold": cal.threshold,
                "threshold_far": cal.far,
                "threshold_frr": cal.frr,
                "threshold_weak": cal.weak,
                "threshold_note": cal.reason,
                "image_root": c.image_root,
                "pending": c.pending.changes,
                "removed_slots": c.saved.dead if c.saved is not None else 0,
            }

    def verify(self) -> None:
        """Check every stored vector (finite, unit length), every item's fields and the item count; O(N).

        Raises:
            InputError: naming the first bad item.
        """
        with self._mutex:
            c = self._contents
            where = c.saved.ver.folder if c.saved is not None else Path(str(c.root or "memory"))
            blocks, alive = c.blocks(), c.alive()
            for first, chunk in blocks.chunks(65536):
                store.check_vectors(where, chunk, c.dtype, alive[first : first + len(chunk)], sample=False)
            n = 0
            for r in c.rows():  # ids and labels stored as text, metadata a JSON object
                store.parse_metadata(r[1], r[3])
                n += 1
            if n != len(c):
                raise store.damaged(where, f"{n} items in its tables but {len(c)} live slots")

    def close(self) -> None:
        """Release the gallery's files and memory; any later use raises :class:`InputError` (load it again).
        Pending changes are dropped: commit first. Closing twice is harmless."""
        with self._mutex:
            if self._held is not None:
                self._held.close()
                self._held = None
                self._searcher.index = None

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._held is None:
            return "Gallery(closed)"
        where = f", path={str(self.path)!r}" if self.path is not None else ""
        return (
            f"Gallery({len(self)} x {self.dim} {self.dtype}, index={self.index!r}, "
            f"model={self.model_sha256[:12]!r}{where})"
        )
