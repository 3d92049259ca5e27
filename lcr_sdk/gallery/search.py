"""How a gallery searches: exact cosine top-k over its vector blocks, or a FAISS index behind the same result rule.

Results are slots (positions in the gallery's vector array) and cosine scores, best first; equal scores go to the
lower slot: the one ranking rule, :func:`lcr_sdk.metrics.ranking`, which every ordering here goes through. Dead slots
(removed items) and slots outside a filter are masked, never returned.

An index spec is ``"exact"`` (numpy), ``"faiss"`` (FAISS flat inner product: exact) or ``"faiss:<factory>"`` with
optional search parameters after ``;``, e.g. ``"faiss:HNSW32;efSearch=64"`` or ``"faiss:IVF1024,SQ8;nprobe=16"``.
Approximate indexes return candidates whose exact scores are then computed from the stored vectors (re-ranking),
so scores are always exact cosines, whatever the index stores. A :class:`Searcher` keeps a gallery's index: loaded
from its version folder, built at the first search, extended and saved again as the gallery grows.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lcr_sdk.errors import InputError, LcrError, MissingDependencyError, require
from lcr_sdk.fileio import atomic_path
from lcr_sdk.gallery import calibrate, store
from lcr_sdk.gallery.contents import Blocks, Contents
from lcr_sdk.metrics import ranking

log = logging.getLogger(__name__)

SCORE_BLOCK = 1 << 23  # floats in one query x gallery score block (32 MB)
# Rows of a float16 gallery cast to float32 at a time: one query's score block would otherwise cast the whole
# gallery per call (1M x 512: a 2 GB temporary and 2.6 s a query, measured).
CAST_ROWS = 1 << 15
RERANK = 4  # an approximate index returns RERANK * k candidates (at least k + 16) for exact re-ranking
EXAMPLES = "'exact', 'faiss', 'faiss:HNSW32;efSearch=64', 'faiss:IVF1024,SQ8;nprobe=16'"
SMALL_FILTER = 20_000  # a filter with at most this many candidates is searched exactly, even with an index
INDEX_EXTEND = 1024  # slots past the index before it is extended in memory ...
INDEX_PERSIST = 0.01  # ... and share of its size past the saved index before the index file is rewritten
Found = tuple[str, str, float, dict[str, Any]]  # id, label, score, metadata of one hit


def topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores of each row: ``lcr_sdk.metrics.ranking(scores, k)``."""
    return ranking(scores, k)


def merge(results: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-block (slots, scores) arrays of shape (nq, *) into the k best per row (score desc, slot asc).

    Entries with slot -1 or score -inf are padding; they sort last and stay -1 / -inf. The columns are put in slot
    order, then ranked by :func:`lcr_sdk.metrics.ranking`, so ties go to the lower slot as everywhere else.
    """
    slots = np.concatenate([r[0] for r in results], axis=1)
    scores = np.concatenate([r[1] for r in results], axis=1)
    scores = np.where(slots < 0, -np.inf, scores)
    by_slot = np.argsort(np.where(slots < 0, np.iinfo(np.int64).max, slots), axis=1, kind="stable")
    slots = np.take_along_axis(slots, by_slot, axis=1)
    scores = np.take_along_axis(scores, by_slot, axis=1)
    order = ranking(scores, min(k, scores.shape[1]))
    out_slots = np.take_along_axis(slots, order, axis=1)
    out_scores = np.take_along_axis(scores, order, axis=1)
    out_slots[~np.isfinite(out_scores)] = -1
    return out_slots, out_scores


def _empty(nq: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((nq, 0), -1, np.int64), np.full((nq, 0), -np.inf, np.float32)


def _scores(q: np.ndarray, block: np.ndarray) -> np.ndarray:
    s = q @ np.asarray(block, dtype=np.float32).T
    return np.where(np.isfinite(s), s, -np.inf)  # a corrupt (NaN) vector never wins


def rows_per_chunk(blocks: Blocks, nq: int) -> int:
    """Gallery rows scored per step for ``nq`` queries: a bounded score block, and a bounded cast for float16."""
    rows = max(1024, SCORE_BLOCK // max(nq, 1))
    if blocks.dtype != np.float32:
        rows = min(rows, CAST_ROWS)
    return rows


def exact(q: np.ndarray, blocks: Blocks, k: int, alive: np.ndarray, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over slots >= ``start`` whose ``alive`` flag is set."""
    nq = len(q)
    best = _empty(nq)
    for first, chunk in blocks.chunks(rows_per_chunk(blocks, nq), start):
        s = _scores(q, chunk)
        dead = ~alive[first : first + len(chunk)]
        if dead.any():
            s[:, dead] = -np.inf
        top = ranking(s, k)
        best = merge([best, (top + first, np.take_along_axis(s, top, axis=1))], k)
    return best


def exact_subset(q: np.ndarray, blocks: Blocks, k: int, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over the given sorted slots only (a filter's candidates)."""
    nq = len(q)
    if len(slots) == 0:
        return _empty(nq)
    best = _empty(nq)
    rows = rows_per_chunk(blocks, nq)
    for i in range(0, len(slots), rows):
        part = slots[i : i + rows]
        s = _scores(q, blocks.take(part))
        top = ranking(s, k)
        best = merge([best, (part[top], np.take_along_axis(s, top, axis=1))], k)
    return best


def rerank(q: np.ndarray, blocks: Blocks, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores for candidate slots (nq x c, -1 = none) and the k best of them."""
    flat = cand.reshape(-1)
    vecs = blocks.take(np.where(flat < 0, 0, flat)).reshape(*cand.shape, -1)
    s = np.einsum("qd,qcd->qc", q, vecs)
    s = np.where((cand >= 0) & np.isfinite(s), s, -np.inf).astype(np.float32)
    return merge([(cand, s)], k)


# -- FAISS --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexSpec:
    """A parsed index spec: ``exact``, or a FAISS factory string with optional search parameters."""

    kind: str
    factory: str = ""
    params: str = ""

    @property
    def text(self) -> str:
        if self.kind == "exact":
            return "exact"
        return f"faiss:{self.factory}" + (f";{self.params}" if self.params else "")


def parse_index(spec: Any, dim: int | None = None) -> IndexSpec:
    """Parse and (where FAISS is installed and ``dim`` given) validate an index spec.

    Raises:
        InputError: not a valid spec; the message lists valid ones.
    """
    if not isinstance(spec, str):
        raise InputError(f"index={spec!r} is not valid; use one of {EXAMPLES}")
    if spec == "exact":
        return IndexSpec("exact")
    if spec == "faiss":
        parsed = IndexSpec("faiss", "Flat")
    elif spec.startswith("faiss:"):
        factory, _, params = spec[len("faiss:") :].partition(";")
        parsed = IndexSpec("faiss", factory.strip(), params.strip())
        if not parsed.factory:
            raise InputError(f"index={spec!r} names no FAISS factory string; use one of {EXAMPLES}")
    else:
        raise InputError(f"index={spec!r} is not valid; use one of {EXAMPLES}")
    if dim is not None:
        try:
            faiss = require("faiss", "faiss", "a FAISS gallery index")
        except MissingDependencyError:
            return parsed  # validated when FAISS is installed (search needs it anyway)
        make(parsed, dim, faiss)
    return parsed


def require_index(index: str, option: str | None = "index") -> None:
    """Refuse an index spec whose library is not installed: a FAISS spec without FAISS. A build calls it before it
    embeds anything, since the index is built when the gallery is saved (:func:`parse_index` leaves a FAISS spec
    unchecked without FAISS, so a saved FAISS gallery still loads, and searches exactly, where FAISS is missing).

    Args:
        index: the spec (checked by :func:`parse_index` first).
        option: how the caller names the spec in the message (``"--index"``); None: the gallery's own index, with
            no other choice to offer.

    Raises:
        InputError: not a valid spec.
        MissingDependencyError: FAISS is not installed; the message names the pip extra.
    """
    spec = parse_index(index)
    if spec.kind != "faiss":
        return
    try:
        require("faiss", "faiss", "a FAISS gallery index")
    except MissingDependencyError as e:
        what = f"{option} {index!r}" if option else f"the gallery's index {index!r}"
        instead = f", or use {option} exact (numpy, exact search; nothing to install)" if option else ""
        raise MissingDependencyError(
            f"{what} needs 'faiss', which is not installed ({e.__cause__ or e}); install it with "
            f"pip install 'lcr-sdk[faiss]'{instead}"
        ) from None


def make(spec: IndexSpec, dim: int, faiss: Any = None) -> Any:
    """A new, empty FAISS inner-product index for ``spec`` with its search parameters applied."""
    faiss = faiss or require("faiss", "faiss", "Gallery search with a FAISS index")
    try:
        index = faiss.index_factory(dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        why = str(e).strip().splitlines()[-1][:200]
        raise InputError(
            f"FAISS factory string {spec.factory!r} is not valid for dimension {dim} ({why}); valid examples: "
            f"{EXAMPLES} (see the FAISS wiki 'The index factory')"
        ) from None
    if spec.params:
        try:
            faiss.ParameterSpace().set_index_parameters(index, spec.params)
        except RuntimeError as e:
            why = str(e).strip().splitlines()[-1][:200]
            raise InputError(
                f"FAISS search parameters {spec.params!r} do not apply to {spec.factory!r} ({why}); use e.g. "
                "nprobe=16 for IVF indexes or efSearch=64 for HNSW"
            ) from None
    return index


def min_train(index: Any) -> int:
    """Vectors an index needs before it is worth training (FAISS's 39 per centroid); 0 if it needs no training."""
    if index.is_trained:
        return 0
    faiss: Any = require("faiss", "faiss", "a FAISS gallery index")

    try:
        return 39 * int(faiss.extract_index_ivf(index).nlist)
    except RuntimeError:
        return 39 * 256  # product / scalar quantisers: 256 centroids per sub-quantiser


def _selector_params(index: Any, allowed: np.ndarray) -> tuple[Any, Any]:
    """FAISS search parameters restricting results to the slots set in the boolean ``allowed`` mask."""
    faiss: Any = require("faiss", "faiss", "a filtered FAISS search")
    bits = np.packbits(allowed.astype(bool), bitorder="little")
    sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
    base = faiss.downcast_index(index)
    if isinstance(base, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(sel=sel, nprobe=base.nprobe)
    elif isinstance(base, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(sel=sel, efSearch=base.hnsw.efSearch)
    else:
        params = faiss.SearchParameters(sel=sel)
    return params, (bits, sel)  # keep the bitmap alive while FAISS reads it


class FaissIndex:
    """A FAISS index over the gallery's first :attr:`count` slots (ids = slots)."""

    def __init__(self, spec: IndexSpec, dim: int, index: Any = None):
        self.spec, self.dim = spec, dim
        self.index = index if index is not None else make(spec, dim)

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    @property
    def min_train(self) -> int:
        return min_train(self.index)

    def build(self, blocks: Blocks, n: int, progress: bool = False, seed: int = 0) -> None:
        """Train (on a sample) and add slots 0..n-1.

        An HNSW graph is built with efConstruction >= 4 x M (FAISS's default is 40 whatever M; a wider construction
        search links the graph better: HNSW32 built so reaches recall@5 0.975 at 1M items, docs/BENCHMARKS.md)."""
        faiss: Any = require("faiss", "faiss", "a FAISS gallery index")
        base = faiss.downcast_index(self.index)
        if isinstance(base, faiss.IndexHNSW):
            base.hnsw.efConstruction = max(base.hnsw.efConstruction, 4 * base.hnsw.nb_neighbors(1))
        if not self.index.is_trained:
            want = 40 * self.min_train // 39  # FAISS warns below 39 training vectors per centroid
            rng = np.random.default_rng(seed)
            sample = np.sort(rng.choice(n, size=min(n, want), replace=False))
            self.index.train(np.ascontiguousarray(blocks.take(sample)))
        self.extend(blocks, n, progress)

    def extend(self, blocks: Blocks, n: int, progress: bool = False) -> None:
        """Add slots count..n-1."""
        from tqdm import tqdm  # type: ignore[import-untyped]

        start = self.count
        with tqdm(total=n - start, desc="indexing", unit="vec", disable=not progress) as bar:
            for first, chunk in blocks.chunks(65536, start):
                part = chunk[: max(0, n - first)]
                if len(part) == 0:
                    break
                self.index.add(np.ascontiguousarray(part, dtype=np.float32))
                bar.update(len(part))

    def search(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> np.ndarray:
        """Candidate slots (nq x k, -1 = none) among slots whose ``allowed`` flag is set (None: all)."""
        k = min(k, self.count)
        if k == 0:
            return np.full((len(q), 0), -1, np.int64)
        q = np.ascontiguousarray(q, dtype=np.float32)
        if allowed is None:
            _, idx = self.index.search(q, k)
        else:
            params, keep = _selector_params(self.index, allowed[: self.count])
            _, idx = self.index.search(q, k, params=params)
            del keep
        return np.asarray(idx, dtype=np.int64)

    def save(self, path: Path) -> None:
        faiss: Any = require("faiss", "faiss", "saving a FAISS gallery index")

        with atomic_path(path) as tmp:
            faiss.write_index(self.index, str(tmp))

    @classmethod
    def load(cls, path: Path, spec: IndexSpec, dim: int) -> FaissIndex | None:
        """The index saved at ``path``, or None (with a warning) if it is unreadable or not for this spec/dim."""
        faiss: Any = require("faiss", "faiss", "Gallery search with a FAISS index")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as e:
            log.warning("gallery index %s is unreadable (%s); rebuilding it", path, str(e).splitlines()[-1][:120])
            return None
        if index.d != dim or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            log.warning("gallery index %s does not match the gallery (dim %d); rebuilding it", path, index.d)
            return None
        if spec.params:
            faiss.ParameterSpace().set_index_parameters(index, spec.params)
        return cls(spec, dim, index)


def search_with_index(
    q: np.ndarray,
    blocks: Blocks,
    k: int,
    index: FaissIndex,
    alive: np.ndarray,
    allowed_mask: np.ndarray | None,
    all_alive: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Index candidates over slots < index.count (re-ranked exactly) merged with an exact search of the rest.

    ``alive`` marks live slots (``all_alive``: every one is, so the index needs no selector); ``allowed_mask``
    (optional) further restricts them (a filter).
    """
    m = index.count
    ok = alive if allowed_mask is None else alive & allowed_mask
    selector = None if allowed_mask is None and all_alive else ok[:m]
    fetch = max(RERANK * k, k + 16)
    try:
        cand = index.search(q, fetch, selector)
    except RuntimeError as e:  # an index type FAISS cannot filter: exact over the allowed slots instead
        log.warning("FAISS index %s cannot filter (%s); searching exactly", index.spec.text, e)
        return exact(q, blocks, k, ok)
    head = rerank(q, blocks, cand, k)
    if m < blocks.total:
        head = merge([head, exact(q, blocks, k, ok, start=m)], k)
    # An approximate index may return fewer candidates than asked (HNSW with a selector, a large k): a row short of
    # min(k, live allowed items) is answered exactly, so "k hits" holds whenever the gallery has k.
    found = (head[0] >= 0).sum(axis=1)
    short = np.flatnonzero(found < min(k, int(ok.sum()))) if (found < k).any() else found[:0]  # counted only then
    if len(short):
        slots, scores = _widen(head, k)
        slots[short], scores[short] = _widen(exact(q[short], blocks, k, ok), k)
        head = slots, scores
    return head


def _widen(result: tuple[np.ndarray, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(slots, scores) padded to k columns with -1 / -inf (copies, so rows can be replaced)."""
    slots, scores = result
    pad = k - slots.shape[1]
    return (
        np.pad(slots, ((0, 0), (0, pad)), constant_values=-1),
        np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf),
    )


# -- a gallery's search -------------------------------------------------------------------------------------------


class Searcher:
    """How one gallery searches: the threshold and filters applied to an exact or FAISS top-k over its contents.

    A FAISS index covers the committed slots (pending ones are searched exactly); it is loaded from the version
    folder, built at the first search, extended in memory as the gallery grows and saved again when it covers
    enough more slots (:data:`INDEX_EXTEND`, :data:`INDEX_PERSIST`).
    """

    def __init__(self, spec: IndexSpec, dim: int):
        self.spec, self.dim = spec, dim
        self.index: FaissIndex | None = None

    def use(self, spec: IndexSpec) -> bool:
        """Search with ``spec`` from now on; returns whether the index (built, or saved with the gallery) stays
        valid: the same FAISS factory, with the new search parameters applied."""
        keep = spec.kind == "faiss" and self.spec.kind == "faiss" and spec.factory == self.spec.factory
        if keep and self.index is not None and spec.params:
            faiss: Any = require("faiss", "faiss", "Gallery search with a FAISS index")
            make(spec, self.dim, faiss)  # refuses parameters that do not apply, before the index is touched
            faiss.ParameterSpace().set_index_parameters(self.index.index, spec.params)
            self.index.spec = spec
        elif not keep or spec.params != self.spec.params:
            self.index = None  # reloaded (with the new parameters) or rebuilt at the next search
        self.spec = spec
        return keep

    def search(
        self,
        c: Contents,
        q: np.ndarray,
        k: int,
        threshold: float | str | None = None,
        label: str | Sequence[str] | None = None,
        where: dict[str, Any] | None = None,
        exact: bool = False,
    ) -> list[list[Found]]:
        """The k best live items for each unit query row, as (id, label, score, metadata), best first.

        ``exact``: score every candidate with numpy, leaving the FAISS index (built or saved) untouched.
        """
        cut = resolve_threshold(threshold, c)
        cand = _filter(c, label, where)
        if len(c) == 0 or (cand is not None and len(cand) == 0):
            return [[] for _ in q]
        slots, scores = self._top(c, q, k, cand, exact)
        info = c.fetch(np.unique(slots[slots >= 0]))
        found = []
        for rs, rc in zip(slots, scores, strict=True):
            row = []
            for s, sc in zip(rs, rc, strict=True):
                if s < 0 or int(s) not in info or (cut is not None and sc < cut):
                    continue
                i, lab, meta = info[int(s)]
                row.append((i, lab, float(sc), dict(meta)))
            found.append(row)
        return found

    def _top(
        self, c: Contents, q: np.ndarray, k: int, cand: np.ndarray | None, exact_only: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        blocks, alive = c.blocks(), c.alive()
        index = self.ensure_index(c) if self.spec.kind == "faiss" and not exact_only else None
        if cand is not None:
            if index is None or len(cand) <= SMALL_FILTER:
                return exact_subset(q, blocks, k, cand)
            allowed = np.zeros(len(alive), bool)
            allowed[cand] = True
            return search_with_index(q, blocks, k, index, alive, allowed)
        if index is None:
            return exact(q, blocks, k, alive)
        return search_with_index(q, blocks, k, index, alive, None, c.all_alive())

    def ensure_index(self, c: Contents) -> FaissIndex | None:
        """The FAISS index (loaded, built or extended as needed), or None while the gallery is too small for it."""
        saved = c.saved
        upto = saved.count if saved is not None else c.pending.n
        if self.index is None and saved is not None and saved.meta.index_file:
            path = saved.ver.folder / saved.meta.index_file
            loaded = FaissIndex.load(path, self.spec, self.dim) if store.plain_file(path) else None
            if loaded is not None and loaded.count == saved.meta.index_count <= upto:
                self.index = loaded
        if self.index is None:
            fresh = FaissIndex(self.spec, self.dim)
            if upto == 0 or upto < fresh.min_train:
                return None
            fresh.build(c.blocks(), upto)
            self.index = fresh
            self.persist(c, force=True)
        elif upto - self.index.count >= INDEX_EXTEND:
            self.index.extend(c.blocks(), upto)
            self.persist(c)
        return self.index

    def persist(self, c: Contents, force: bool = False, locked: bool = False) -> None:
        """Save the in-memory index into the version folder if it covers enough more slots than the saved one."""
        saved, idx = c.saved, self.index
        if saved is None or idx is None or saved.ver.immutable or idx.count > saved.count:
            return
        done = saved.meta.index_count
        if not force and idx.count - done < max(INDEX_EXTEND, INDEX_PERSIST * done):
            return
        try:
            with contextlib.nullcontext() if locked else store.GalleryLock(saved.root).hold(True, timeout=0.0):
                if store.current_version(saved.root).name != saved.ver.name:
                    return  # rewritten meanwhile: this index is for an old version
                name = f"index-{idx.count}.faiss"
                idx.save(saved.ver.folder / name)
                old = saved.ver.reload_meta().index_file
                saved.record(index_file=name, index_count=idx.count)
                if old and old != name:
                    (saved.ver.folder / old).unlink(missing_ok=True)
        except (LcrError, OSError, sqlite3.Error) as e:  # busy or read-only: searching still works
            log.info("gallery index not saved (%s)", e)

    def writer(self, dtype: str, progress: bool) -> Callable[[Path, int], tuple[str, int] | None] | None:
        """What :func:`store.write_version` calls to build and save the index inside a new version folder."""
        if self.spec.kind != "faiss":
            return None

        def write(folder: Path, n: int) -> tuple[str, int] | None:
            idx = FaissIndex(self.spec, self.dim)
            if n == 0 or n < idx.min_train:
                return None
            vec = np.memmap(folder / store.vector_file(dtype), dtype=dtype, mode="r", shape=(n, self.dim))
            idx.build(Blocks([(0, vec)]), n, progress)
            name = f"index-{n}.faiss"
            idx.save(folder / name)
            return name, n

        return write


def parse_threshold(threshold: float | str | None, option: str = "threshold") -> float | str | None:
    """The one check of a search's ``threshold``: a cosine in [-1, 1] (a number or its text), ``"auto"`` or None
    (also ``"none"``); returns the cosine as a float, ``"auto"`` or None. The CLI and the examples pass its error
    through (``option``: how the caller spells it, e.g. ``--threshold``).

    Raises:
        InputError: anything else.
    """
    if threshold is None or threshold == "none":
        return None
    if threshold == "auto":
        return "auto"
    value = threshold
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            value = math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(
            f"{option}={threshold!r} is not valid; use 'auto' (the gallery's calibrated one), 'none' or a cosine "
            "in [-1, 1] such as 0.6"
        )
    if not -1.0 <= value <= 1.0:
        raise InputError(f"{option}={threshold!r} is outside [-1, 1], the range of cosine scores; use e.g. 0.6")
    return float(value)


def resolve_threshold(threshold: float | str | None, c: Contents) -> float | None:
    """The cosine cut of a search's ``threshold`` (:func:`parse_threshold`; ``"auto"``: the calibrated one)."""
    cut = parse_threshold(threshold)
    if isinstance(cut, str):  # "auto"
        return calibrate.auto_threshold(calibrate.current(c), stacklevel=5)  # <- Searcher.search <- Gallery.search
    return cut


def _filter(c: Contents, label: str | Sequence[str] | None, where: dict[str, Any] | None) -> np.ndarray | None:
    """The live slots a ``label`` / ``where`` filter selects (None: no filter)."""
    if label is None and not where:
        return None
    return c.filter(check_filter(label, where), where)


def check_filter(label: str | Sequence[str] | None, where: dict[str, Any] | None) -> list[str] | None:
    """A search filter checked as every gallery backend takes it: the labels as a list (None: any label).

    Raises:
        InputError: an empty label list, a ``where`` that is not a dict of strings to top-level scalar values.
    """
    labels = [label] if isinstance(label, str) else (None if label is None else [str(x) for x in label])
    if labels is not None and not labels:
        raise InputError("label=[] selects nothing; pass a label, a list of labels or None")
    if where is not None:
        if not isinstance(where, dict):
            raise InputError(f"where must be a dict of metadata key -> value; got {type(where).__name__}")
        for key, value in where.items():
            if not isinstance(key, str) or not store.is_scalar(value):
                raise InputError(
                    f"where={{{key!r}: {value!r:.40}}}: keys must be strings and values str, int, float, bool "
                    "or None (top-level metadata values are indexed; nested ones are not)"
                )
    return labels
