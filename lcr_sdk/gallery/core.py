"""Gallery: unit embeddings with ids, labels and free metadata, searched by cosine similarity.

    g = Gallery(emb.manifest.embedding_dim, model_sha256=emb.model_id)
    g.add(emb.embed(images), ids=names, labels=classes, metadata=[{"file": n} for n in names])
    hits = g.search(emb.embed(query), k=5, model=emb)   # [Hit(id, label, score, metadata), ...]
    g.save("gallery/"); g = Gallery.load("gallery/")

Search is exact (numpy matrix product) by default, ties broken by insertion order (lower index first, the rule of
:func:`lcr_sdk.metrics.ranking`). ``index="faiss"`` (or a FAISS factory string such as ``"faiss:HNSW32"``) uses a
FAISS inner-product index behind the same API for large galleries (extra ``faiss``; the index is rebuilt after
changes and on load, not stored).

On disk (``save``): ``DIR/CURRENT`` names a version folder ``DIR/v000007/`` holding ``header.json`` (dim, model
sha256, count, index), ``vectors.npy`` (float32 N x D, memory-mapped on load) and ``items.sqlite`` (id, label,
JSON metadata per row). A save writes a new version folder, fsyncs it, then atomically replaces ``CURRENT``: a
process killed at any point leaves either the previous gallery or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lcr_sdk.errors import DataError, InputError, ModelError, require
from lcr_sdk.fileio import atomic_write_text, fsync_dir, fsync_file, staging_dir

FORMAT = "lcr-sdk-gallery"
FORMAT_VERSION = 1
_VERSION_DIR = re.compile(r"^v(\d{6})$")
_SCORE_BLOCK = 1 << 24  # floats per block of the query x gallery score matrix (64 MB)


@dataclass
class Hit:
    """One search result: the item's id, label, cosine score and metadata."""

    id: str
    label: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)


def _unit_rows(x: Any, dim: int, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != dim:
        raise InputError(f"{what} must be ({dim},) or (N, {dim}) for this gallery of dim {dim}; got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise InputError(f"{what} contain zero, NaN or infinite vectors; pass embeddings from Embedder.embed")
    return x / norms


def topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores of each row, by descending score, ties by ascending index.

    Same order as ``lcr_sdk.metrics.ranking(scores)[:, :k]``, without sorting whole rows.
    """
    n = scores.shape[1]
    k = min(k, n)
    if k == n:
        return np.argsort(-scores, axis=1, kind="stable")
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]  # k-th largest score of each row
    out = np.empty((len(scores), k), dtype=np.int64)
    for r, row in enumerate(scores):
        cand = np.flatnonzero(row >= kth[r])  # includes every tie at the boundary, in index order
        out[r] = cand[np.argsort(-row[cand], kind="stable")[:k]]
    return out


class Gallery:
    """Unit vectors with ids, labels and metadata; exact cosine search (or FAISS).

    Args:
        dim: embedding dimension D.
        model_sha256: identity of the model that made the vectors (``Embedder.model_id``); searching with another
            model is refused unless forced.
        index: ``"exact"`` (numpy), ``"faiss"`` (flat inner product) or ``"faiss:<factory string>"``.
    """

    def __init__(self, dim: int, model_sha256: str = "", index: str = "exact"):
        if not isinstance(dim, int) or dim < 1:
            raise InputError(f"dim must be a positive int (the model's embedding_dim); got {dim!r}")
        if index != "exact" and not index.startswith("faiss"):
            raise InputError(f"index={index!r} is not valid; use 'exact', 'faiss' or 'faiss:<factory>' (e.g. HNSW32)")
        self.dim, self.model_sha256, self.index = dim, model_sha256, index
        self.image_root = ""  # folder the items' relative "path" metadata points into (build_from_folder), if any
        self._vectors = np.zeros((0, dim), np.float32)
        self._pending: list[np.ndarray] = []
        self._ids: list[str] = []
        self._labels: list[str] = []
        self._meta: list[dict[str, Any]] = []
        self._pos: dict[str, int] = {}
        self._faiss = None
        self._next = 0

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def vectors(self) -> np.ndarray:
        """float32 N x D unit vectors in insertion order (read-only view)."""
        if self._pending:
            self._vectors = np.concatenate([np.asarray(self._vectors), *self._pending])
            self._pending = []
        return self._vectors

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    @property
    def labels(self) -> list[str]:
        return list(self._labels)

    def add(
        self,
        vectors: Any,
        ids: list | None = None,
        labels: list | None = None,
        metadata: list[dict[str, Any]] | None = None,
    ) -> list[str]:
        """Add vectors (normalised to unit length) with optional ids, labels and JSON-able metadata dicts.

        Returns:
            The ids of the added items (generated ``"0"``, ``"1"``... when not given).
        """
        v = _unit_rows(vectors, self.dim, "vectors")
        n = len(v)
        ids = [str(i) for i in ids] if ids is not None else [str(self._next + i) for i in range(n)]
        labels = [str(x) for x in labels] if labels is not None else [""] * n
        metadata = list(metadata) if metadata is not None else [{} for _ in range(n)]
        if not len(ids) == len(labels) == len(metadata) == n:
            raise InputError(f"got {n} vectors but {len(ids)} ids, {len(labels)} labels, {len(metadata)} metadata")
        dup = [i for i in ids if i in self._pos]
        if dup or len(set(ids)) != n:
            what = f"id {dup[0]!r} is already in the gallery" if dup else "the new ids repeat"
            raise InputError(f"{what} (ids are unique); remove the old item first or pick other ids")
        for m in metadata:
            try:
                json.dumps(m)
            except TypeError as e:
                raise InputError(f"metadata must be JSON-serialisable dicts; got {m!r} ({e})") from e
        for i in ids:
            self._pos[i] = len(self._ids)
            self._ids.append(i)
        self._labels += labels
        self._meta += [dict(m) for m in metadata]
        self._pending.append(v)
        self._next += n
        self._faiss = None
        return ids

    def remove(self, ids: list | str) -> int:
        """Remove items by id; returns how many were removed. Unknown ids raise :class:`InputError`."""
        ids = [ids] if isinstance(ids, str) else [str(i) for i in ids]
        unknown = [i for i in ids if i not in self._pos]
        if unknown:
            raise InputError(f"ids {unknown[:5]} are not in the gallery of {len(self)} items")
        drop = {self._pos[i] for i in ids}
        keep = np.array([r for r in range(len(self)) if r not in drop], dtype=np.int64)
        self._vectors = np.asarray(self.vectors)[keep]
        self._ids = [self._ids[r] for r in keep]
        self._labels = [self._labels[r] for r in keep]
        self._meta = [self._meta[r] for r in keep]
        self._pos = {i: r for r, i in enumerate(self._ids)}
        self._faiss = None
        return len(drop)

    def check_model(self, model: Any, force: bool = False) -> None:
        """Refuse a query model (an Embedder or a sha256) other than the gallery's, unless ``force``."""
        sha = model if isinstance(model, str) else getattr(model, "model_id", "")
        if force or not sha or not self.model_sha256 or sha == self.model_sha256:
            return
        raise ModelError(
            f"this gallery was built with model {self.model_sha256[:12]}... but the query model is {sha[:12]}...: "
            "their embeddings are not comparable. Rebuild the gallery with this model (lcr-sdk gallery build), "
            "or pass force=True (--force) if you know they match"
        )

    def search(self, queries: Any, k: int = 5, model: Any = None, force: bool = False) -> list:
        """Nearest items by cosine similarity.

        Args:
            queries: one vector (D,) -> ``list[Hit]``; or (N, D) -> ``list[list[Hit]]``.
            k: hits per query (fewer if the gallery is smaller).
            model: the Embedder (or its ``model_id``) that made the queries; checked against the gallery's.
            force: search even when ``model`` differs from the gallery's model.
        """
        if model is not None:
            self.check_model(model, force)
        if not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive int; got {k!r}")
        single = np.asarray(queries).ndim == 1
        q = _unit_rows(queries, self.dim, "queries")
        if len(self) == 0:
            return [] if single else [[] for _ in q]
        idx, scores = self._search_faiss(q, k) if self.index != "exact" else self._search_exact(q, k)
        hits = [
            [
                Hit(self._ids[i], self._labels[i], float(s), dict(self._meta[i]))
                for i, s in zip(ri, rs, strict=True)
                if i >= 0
            ]
            for ri, rs in zip(idx, scores, strict=True)
        ]
        return hits[0] if single else hits

    def _search_exact(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        v = self.vectors
        step = max(1, _SCORE_BLOCK // len(v))
        idx, sc = [], []
        for i in range(0, len(q), step):
            s = q[i : i + step] @ v.T  # n x N
            top = topk(s, k)
            idx.append(top)
            sc.append(np.take_along_axis(s, top, axis=1))
        return np.concatenate(idx), np.concatenate(sc)

    def _search_faiss(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        faiss = require("faiss", "faiss", "Gallery search with index='faiss'")
        if self._faiss is None:
            spec = self.index.partition(":")[2] or "Flat"
            index = faiss.index_factory(self.dim, spec, faiss.METRIC_INNER_PRODUCT)
            v = np.ascontiguousarray(self.vectors)
            if not index.is_trained:
                index.train(v)
            index.add(v)
            self._faiss = index
        scores, idx = self._faiss.search(np.ascontiguousarray(q), min(k, len(self)))
        return idx, scores

    # -- persistence ----------------------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> Path:
        """Save crash-safely to ``directory`` (created if needed); returns the version folder written."""
        root = Path(directory)
        if root.exists() and not root.is_dir():
            raise InputError(f"gallery path {root} is a file; pass a folder")
        if root.is_dir() and any(root.iterdir()) and not (root / "CURRENT").exists():
            raise InputError(f"{root} is a non-empty folder that is not a gallery; pick a new or empty folder")
        root.mkdir(parents=True, exist_ok=True)
        versions = [int(m.group(1)) for p in root.iterdir() if (m := _VERSION_DIR.match(p.name))]
        name = f"v{max(versions, default=0) + 1:06d}"
        with staging_dir(root, ".tmp-") as tmp:  # renamed to the version folder once complete
            np.save(tmp / "vectors.npy", np.ascontiguousarray(self.vectors, dtype=np.float32))
            with sqlite3.connect(tmp / "items.sqlite") as db:
                db.execute(
                    "CREATE TABLE items (row INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, label TEXT, metadata TEXT)"
                )
                db.executemany(
                    "INSERT INTO items VALUES (?, ?, ?, ?)",
                    (
                        (r, i, lab, json.dumps(m))
                        for r, (i, lab, m) in enumerate(zip(self._ids, self._labels, self._meta, strict=True))
                    ),
                )
            db.close()
            header = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "dim": self.dim,
                "count": len(self),
                "model_sha256": self.model_sha256,
                "index": self.index,
                "next_id": self._next,
                "image_root": self.image_root,
            }
            (tmp / "header.json").write_text(json.dumps(header, indent=2) + "\n", encoding="utf-8")
            for f in tmp.iterdir():
                fsync_file(f)
            fsync_dir(tmp)
            os.rename(tmp, root / name)
            fsync_dir(root)
        atomic_write_text(root / "CURRENT", name + "\n")  # the commit point
        fsync_dir(root)
        for p in root.iterdir():  # older versions and leftovers of interrupted saves
            if p.name != name and (_VERSION_DIR.match(p.name) or p.name.startswith(".tmp-")):
                shutil.rmtree(p, ignore_errors=True)
        return root / name

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True) -> Gallery:
        """Load the gallery a :meth:`save` wrote (vectors memory-mapped unless ``mmap=False``)."""
        root = Path(directory)
        current = root / "CURRENT"
        if not current.is_file():
            raise InputError(f"{root} is not a saved gallery (no CURRENT file); build one with `lcr-sdk gallery build`")
        folder = root / current.read_text(encoding="utf-8").strip()
        try:
            header = json.loads((folder / "header.json").read_text(encoding="utf-8"))
            if header.get("format") != FORMAT or header.get("format_version") != FORMAT_VERSION:
                raise InputError(
                    f"{folder} holds gallery format {header.get('format')!r} version "
                    f"{header.get('format_version')!r}; this lcr-sdk reads {FORMAT} v{FORMAT_VERSION}"
                )
            vectors = np.load(folder / "vectors.npy", mmap_mode="r" if mmap else None)
            with sqlite3.connect(f"file:{folder / 'items.sqlite'}?mode=ro", uri=True) as db:
                rows = db.execute("SELECT row, id, label, metadata FROM items ORDER BY row").fetchall()
            db.close()
        except (OSError, ValueError, sqlite3.Error) as e:
            raise InputError(f"gallery {folder} is damaged ({e}); rebuild it with `lcr-sdk gallery build`") from e
        if vectors.shape != (header["count"], header["dim"]) or len(rows) != header["count"]:
            raise InputError(
                f"gallery {folder} is inconsistent: header says {header['count']} x {header['dim']}, "
                f"vectors are {vectors.shape}, {len(rows)} items; rebuild it"
            )
        g = cls(header["dim"], header.get("model_sha256", ""), header.get("index", "exact"))
        g._vectors = vectors
        g._ids = [r[1] for r in rows]
        g._labels = [r[2] for r in rows]
        g._meta = [json.loads(r[3]) for r in rows]
        g._pos = {i: r for r, i in enumerate(g._ids)}
        g._next = header.get("next_id", len(rows))
        g.image_root = header.get("image_root", "")
        return g

    def __repr__(self) -> str:
        return f"Gallery({len(self)} x {self.dim}, index={self.index!r}, model={self.model_sha256[:12]!r})"


def build_from_folder(
    embedder: Any,
    folder: str | os.PathLike[str],
    index: str = "exact",
    batch: int = 32,
    progress: bool = True,
    require_labels: bool = False,
) -> Gallery:
    """Embed every image of a labelled folder (``folder/<label>/*.jpg``, see :func:`lcr_sdk.images.labelled_images`)
    into a new gallery: the one way the CLI, the examples and the quickstart build galleries.

    Each item's id is its path relative to ``folder`` (POSIX form), its label the sub-folder name, and its metadata
    ``{"path": <that relative path>}``; ``folder`` itself is kept as :attr:`Gallery.image_root`.

    Args:
        embedder: an :class:`~lcr_sdk.embedder.Embedder`.
        folder: the labelled image folder.
        index: the gallery's search index (see :class:`Gallery`).
        batch: images per embed call.
        progress: show a progress bar.
        require_labels: refuse images directly in ``folder`` (no label sub-folder), for apps that show labels.

    Raises:
        InputError: ``batch`` < 1. DataError: no images in ``folder``, or unlabelled ones with ``require_labels``.
    """
    from tqdm import tqdm

    from lcr_sdk.images import labelled_images

    if not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch={batch!r} is not valid; pass a positive number of images per embed call, e.g. 32")
    folder = Path(folder)
    paths, labels = labelled_images(folder)
    if require_labels and "" in labels:
        raise DataError(
            f"{folder} holds {labels.count('')} image(s) outside a label sub-folder (e.g. {paths[labels.index('')]}); "
            f"expected {folder}/<label>/<image>.jpg: move each image into the folder named after its label"
        )
    gallery = Gallery(embedder.manifest.embedding_dim, model_sha256=embedder.model_id, index=index)
    gallery.image_root = str(folder.resolve())
    with tqdm(total=len(paths), desc="embedding", unit="img", disable=not progress) as bar:
        for i in range(0, len(paths), batch):
            chunk = paths[i : i + batch]
            rel = [p.relative_to(folder).as_posix() for p in chunk]
            gallery.add(
                embedder.embed([str(p) for p in chunk]),
                ids=rel,
                labels=labels[i : i + batch],
                metadata=[{"path": r} for r in rel],
            )
            bar.update(len(chunk))
    return gallery
