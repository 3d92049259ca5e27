"""Retrieval metrics against hand-computed cases."""

import numpy as np
import pytest

from lcr_sdk.metrics import average_precision, knn_top1, retrieval_metrics


def _unit(*vecs):
    v = np.array(vecs, np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_perfect_and_wrong_neighbours():
    # classes a, a, b, b: a's are close together, b's are close together
    emb = _unit([1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9])
    m = retrieval_metrics(emb, ["a", "a", "b", "b"])
    assert m["rank1"] == 1.0 and m["mAP"] == 1.0 and m["queries"] == 4
    # swap labels so every nearest neighbour is wrong; the only relevant item is ranked 2nd of 3 or 3rd
    m = retrieval_metrics(emb, ["a", "b", "a", "b"])
    assert m["rank1"] == 0.0


def test_average_precision_by_hand():
    # relevant at ranks 1 and 3: AP = (1/1 + 2/3) / 2
    assert average_precision([True, False, True, False]) == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(average_precision([False, False]))


def test_ties_are_broken_by_gallery_order():
    # query 0 ties with items 1 and 2 (identical vectors); item 1 (lower index) ranks first
    emb = _unit([1, 0], [1, 0], [1, 0], [0, 1])
    m = retrieval_metrics(emb, ["q", "x", "q", "x"])
    # query 0: ranking 1 (x), 2 (q), 3 -> rank1 miss, AP 1/2
    # query 2: ties 0 and 1 -> 0 (q) first -> hit, AP 1
    # query 1 (x): ties 0, 2 before 3 (x) -> AP 1/3 ; query 3 (x): 0,1,2 all score 0 -> 1 is x at rank 2 -> AP 1/2
    assert m["rank1"] == pytest.approx(1 / 4)
    assert m["mAP"] == pytest.approx((0.5 + 1 / 3 + 1 + 0.5) / 4)


def test_class_with_one_image_is_unanswerable():
    emb = _unit([1, 0], [0.9, 0.1], [0, 1])
    m = retrieval_metrics(emb, ["a", "a", "lonely"])
    assert m["queries"] == 2 and m["unanswerable"] == 1
    assert m["rank1"] == 1.0 and m["mAP"] == 1.0


def test_rank5_counts_a_hit_anywhere_in_the_top5():
    emb = _unit(*[[1, 0.01 * i] for i in range(7)])
    labels = ["a", "b", "c", "d", "e", "a", "f"]
    m = retrieval_metrics(emb, labels, ks=(1, 5))
    # query 0: neighbours 1, 2, 3, 4, 5 -> the other 'a' is 5th: a rank-5 hit, a rank-1 miss
    # query 5: neighbours 4, 6, 3, 2, 1, 0 -> the other 'a' is 6th: a miss at both
    assert m["queries"] == 2 and m["rank1"] == 0.0 and m["rank5"] == 0.5


def test_knn_majority():
    train = _unit([1, 0], [0.95, 0.05], [0, 1])
    test = _unit([0.9, 0.1], [0.1, 0.9])
    assert knn_top1(train, ["a", "a", "b"], test, ["a", "b"], k=1) == 1.0
    assert knn_top1(train, ["a", "a", "b"], test, ["b", "b"], k=1) == 0.5


def test_chance_levels_are_what_random_rankings_score_on_average():
    from lcr_sdk.metrics import chance_retrieval, retrieval_metrics

    labels = np.repeat(np.arange(4), [3, 5, 6, 1])  # uneven classes, one query that cannot be answered
    rng = np.random.default_rng(0)
    runs = [retrieval_metrics(_random_unit(rng, len(labels), 64), labels) for _ in range(4000)]
    chance = chance_retrieval(labels)
    for key in ("rank1", "rank5", "mAP"):
        seen = np.array([r[key] for r in runs])
        assert abs(seen.mean() - chance[key]) < 4 * seen.std() / np.sqrt(len(seen)), key
    assert chance["mAP"] > 0.3  # not 1 / classes (0.25): a random ranking finds relevant items early now and then
    # the quickstart's test split: 8 classes of 40 images
    assert chance_retrieval(np.repeat(np.arange(8), 40))["mAP"] == pytest.approx(0.137, abs=5e-4)


def _random_unit(rng, n, d):
    v = rng.standard_normal((n, d))
    return v / np.linalg.norm(v, axis=1, keepdims=True)
