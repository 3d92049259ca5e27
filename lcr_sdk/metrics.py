"""Retrieval and classification metrics (numpy only), as docs/DESIGN.md section 1 defines them.

Leave-one-out retrieval: each test image queries all *other* test images by cosine similarity of unit embeddings.
Ties in score are broken by gallery order (lower index first), the same rule ``Gallery.search`` uses, so both
give the same Rank-1. A query whose class has no other member cannot be answered and is left out of Rank-k and
mAP (counted in ``unanswerable``).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt


def ranking(scores: np.ndarray, k: int | None = None) -> np.ndarray:
    """Indices that sort each row of ``scores`` by descending score, ties by ascending index (stable).

    The one ranking rule of the SDK: evaluation, verification and gallery search all order by it. With ``k``,
    only the k best of each row, without sorting whole rows (a partial sort, then the candidates in order).
    """
    n = scores.shape[1]
    if k is not None and k < 1:
        return np.zeros((len(scores), 0), np.int64)
    if k is None or k >= n:
        return np.argsort(-scores, axis=1, kind="stable")
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]  # k-th largest score of each row
    out = np.empty((len(scores), k), dtype=np.int64)
    for r, row in enumerate(scores):
        cand = np.flatnonzero(row >= kth[r])  # includes every tie at the boundary, in index order
        out[r] = cand[np.argsort(-row[cand], kind="stable")[:k]]
    return out


def average_precision(relevant_in_rank_order: np.ndarray) -> float:
    """AP of one ranked list given as booleans (True = same class), over all relevant items."""
    rel = np.asarray(relevant_in_rank_order, dtype=bool)
    n_rel = int(rel.sum())
    if n_rel == 0:
        return float("nan")
    hits = np.cumsum(rel)
    precision_at_hits = hits[rel] / (np.flatnonzero(rel) + 1)
    return float(precision_at_hits.sum() / n_rel)


def retrieval_metrics(
    embeddings: npt.ArrayLike, labels: npt.ArrayLike, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Leave-one-out Rank-k and mAP of unit embeddings (N x D) with class labels (N,).

    Returns:
        ``{"rank1": .., "rank5": .., "mAP": .., "queries": n_answerable, "unanswerable": n}``; ranks and mAP
        are fractions in [0, 1].
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    labels = np.asarray(labels)
    n = len(emb)
    if emb.ndim != 2 or n != len(labels):
        raise ValueError(f"need N x D embeddings and N labels, got {emb.shape} and {labels.shape}")
    scores = emb @ emb.T
    np.fill_diagonal(scores, -np.inf)  # never retrieve yourself
    order = ranking(scores)[:, : n - 1]  # the query itself is last
    relevant = labels[order] == labels[:, None]  # N x (N-1), in rank order
    answerable = relevant.any(axis=1)
    out: dict[str, float] = {}
    for k in ks:
        hit = relevant[:, :k].any(axis=1)
        out[f"rank{k}"] = float(hit[answerable].mean()) if answerable.any() else float("nan")
    aps = [average_precision(r) for r in relevant[answerable]]
    out["mAP"] = float(np.mean(aps)) if aps else float("nan")
    out["queries"] = int(answerable.sum())
    out["unanswerable"] = int((~answerable).sum())
    return out


def chance_retrieval(labels: npt.ArrayLike, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """What :func:`retrieval_metrics` scores, on average, for a ranking drawn uniformly at random: the chance level
    of Rank-k and mAP for these labels (exact expectations, not 1 / classes).

    For a query with R items of its class among the M others: Rank-k = 1 - C(M-R, k) / C(M, k), and
    E[AP] = (H_M + (R-1)/(M-1) * (M - H_M)) / M, H_M the M-th harmonic number (the expected precision at each
    position, weighted by the chance that a relevant item sits there). Averaged over the answerable queries (R > 0).
    """
    labels = np.asarray(labels)
    n = len(labels)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    r = (counts[inverse] - 1).astype(np.float64)  # items of the query's class among the others
    r = r[r > 0]
    m = n - 1
    out: dict[str, float] = {}
    for k in ks:
        miss = np.array([math.comb(m - int(x), k) / math.comb(m, k) if m >= k else 0.0 for x in r])
        out[f"rank{k}"] = float(np.mean(1 - miss)) if len(r) else float("nan")
    harmonic = float(np.sum(1.0 / np.arange(1, m + 1))) if m > 0 else 0.0
    ap = (harmonic + (r - 1) / max(m - 1, 1) * (m - harmonic)) / max(m, 1)
    out["mAP"] = float(np.mean(ap)) if len(r) else float("nan")
    return out


def knn_top1(
    train_emb: npt.ArrayLike,
    train_labels: npt.ArrayLike,
    test_emb: npt.ArrayLike,
    test_labels: npt.ArrayLike,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Weighted kNN classification top-1 (Wu et al. 2018): vote of the k nearest train items, weight exp(s/T)."""
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    train_emb, test_emb = np.asarray(train_emb, np.float32), np.asarray(test_emb, np.float32)
    classes, train_idx = np.unique(train_labels, return_inverse=True)
    k = min(k, len(train_emb))
    scores = test_emb @ train_emb.T
    top = ranking(scores)[:, :k]
    weights = np.exp(np.take_along_axis(scores, top, axis=1) / temperature)
    votes = np.zeros((len(test_emb), len(classes)))
    np.add.at(votes, (np.arange(len(test_emb))[:, None], train_idx[top]), weights)
    pred = classes[votes.argmax(axis=1)]
    return float((pred == test_labels).mean())
