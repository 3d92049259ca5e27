"""Search: exact cosine top-k over vector blocks, and FAISS indexes behind the same result rule.

Results are slots (positions in the gallery's vector array) and cosine scores, best first; equal scores go to the
lower slot, the rule of :func:`lcr_sdk.metrics.ranking`. Dead slots (removed items) and slots outside a filter are
masked, never returned.

An index spec is ``"exact"`` (numpy), ``"faiss"`` (FAISS flat inner product: exact) or ``"faiss:<factory>"`` with
optional search parameters after ``;``, e.g. ``"faiss:HNSW32;efSearch=64"`` or ``"faiss:IVF1024,SQ8;nprobe=16"``.
Approximate indexes return candidates whose exact scores are then computed from the stored vectors (re-ranking),
so scores are always exact cosines, whatever the index stores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lcr_sdk.errors import InputError, MissingDependencyError, require
from lcr_sdk.fileio import atomic_path

log = logging.getLogger(__name__)

SCORE_BLOCK = 1 << 23  # floats in one query x gallery score block (32 MB)
# Rows of a float16 gallery cast to float32 at a time: one query's score block would otherwise cast the whole
# gallery per call (1M x 512: a 2 GB temporary and 2.6 s a query, measured).
CAST_ROWS = 1 << 15
RERANK = 4  # an approximate index returns RERANK * k candidates (at least k + 16) for exact re-ranking
EXAMPLES = "'exact', 'faiss', 'faiss:HNSW32;efSearch=64', 'faiss:IVF1024,SQ8;nprobe=16'"


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


def merge(results: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-block (slots, scores) arrays of shape (nq, *) into the k best per row (score desc, slot asc).

    Entries with slot -1 or score -inf are padding; they sort last and stay -1 / -inf.
    """
    slots = np.concatenate([r[0] for r in results], axis=1)
    scores = np.concatenate([r[1] for r in results], axis=1)
    scores = np.where(slots < 0, -np.inf, scores)
    key_slot = np.where(slots < 0, np.iinfo(np.int64).max, slots)
    order = np.lexsort((key_slot, -scores), axis=-1)[:, :k]
    out_slots = np.take_along_axis(slots, order, axis=1)
    out_scores = np.take_along_axis(scores, order, axis=1)
    out_slots[~np.isfinite(out_scores)] = -1
    return out_slots, out_scores


def _empty(nq: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((nq, 0), -1, np.int64), np.full((nq, 0), -np.inf, np.float32)


def _scores(q: np.ndarray, block: np.ndarray) -> np.ndarray:
    s = q @ np.asarray(block, dtype=np.float32).T
    return np.where(np.isfinite(s), s, -np.inf)  # a corrupt (NaN) vector never wins


@dataclass
class Blocks:
    """The gallery's vectors as consecutive blocks: ``(first_slot, array)``; together they cover slots 0..total-1."""

    parts: list[tuple[int, np.ndarray]]

    @property
    def total(self) -> int:
        return sum(len(a) for _, a in self.parts)

    def rows_per_chunk(self, nq: int) -> int:
        """Gallery rows scored per step for ``nq`` queries: a bounded score block, and a bounded cast for float16."""
        rows = max(1024, SCORE_BLOCK // max(nq, 1))
        if self.parts and self.parts[0][1].dtype != np.float32:
            rows = min(rows, CAST_ROWS)
        return rows

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


def exact(q: np.ndarray, blocks: Blocks, k: int, alive: np.ndarray, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over slots >= ``start`` whose ``alive`` flag is set."""
    nq = len(q)
    best = _empty(nq)
    rows = blocks.rows_per_chunk(nq)
    for first, chunk in blocks.chunks(rows, start):
        s = _scores(q, chunk)
        dead = ~alive[first : first + len(chunk)]
        if dead.any():
            s[:, dead] = -np.inf
        top = topk(s, k)
        best = merge([best, (top + first, np.take_along_axis(s, top, axis=1))], k)
    return best


def exact_subset(q: np.ndarray, blocks: Blocks, k: int, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over the given sorted slots only (a filter's candidates)."""
    nq = len(q)
    if len(slots) == 0:
        return _empty(nq)
    best = _empty(nq)
    rows = blocks.rows_per_chunk(nq)
    for i in range(0, len(slots), rows):
        part = slots[i : i + rows]
        s = _scores(q, blocks.take(part))
        top = topk(s, k)
        best = merge([best, (part[top], np.take_along_axis(s, top, axis=1))], k)
    return best


def rerank(q: np.ndarray, blocks: Blocks, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores for candidate slots (nq x c, -1 = none) and the k best of them."""
    flat = cand.reshape(-1)
    vecs = blocks.take(np.where(flat < 0, 0, flat)).reshape(*cand.shape, -1)
    s = np.einsum("qd,qcd->qc", q, vecs)
    s = np.where((cand >= 0) & np.isfinite(s), s, -np.inf).astype(np.float32)
    if len(q) == 1:  # one query (a camera frame): the same order as merge(), with fewer array passes
        row, c = s[0], cand[0]
        order = np.lexsort((np.where(c < 0, np.iinfo(np.int64).max, c), -row))[:k]
        out_s, out_c = row[order][None], c[order][None].copy()
        out_c[~np.isfinite(out_s)] = -1
        return out_c, out_s
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
    if m >= blocks.total:
        return head
    return merge([head, exact(q, blocks, k, ok, start=m)], k)


def recall_at(k: int, approx: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the exact top-k slots that the approximate top-k found."""
    hits = [
        len(set(a[:k].tolist()) & set(t[:k].tolist())) / max(1, min(k, (t >= 0).sum())) for a, t in zip(approx, truth)
    ]
    return float(np.mean(hits)) if hits else 1.0


VectorsAt = Callable[[np.ndarray], np.ndarray]
