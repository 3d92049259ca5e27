"""The verification report's Rank-1 figures: agreement, the swaps behind a miss, and the advice a miss gets."""

import numpy as np

from lcr_sdk.export.verify import THRESHOLDS, format_report, miss_advice, rank1_agreement, rank1_swaps


def _unit(degrees):
    a = np.radians(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def _cos(a, b):
    return float(np.cos(np.radians(a - b)))


# Points on a circle: q (0 deg) has a near tie between a (10) and b (10.2); c and d (60, 62) are each other's
# neighbours. The model moves b to 9.9 deg, so q's top-1 becomes b and nothing else changes.
REFERENCE = [0.0, 10.0, 10.2, 60.0, 62.0]
MODEL = [0.0, 10.0, 9.9, 60.0, 62.0]


def test_rank1_swaps_measures_the_gap_the_reference_saw():
    got = rank1_swaps(_unit(MODEL), _unit(REFERENCE))
    assert got["swaps"] == 1 and got["rank1_agreement"] == 0.8 == rank1_agreement(_unit(MODEL), _unit(REFERENCE))
    gap = _cos(0, 10) - _cos(0, 10.2)  # q's own top-1 (a) over the model's choice (b), in the reference
    assert np.isclose(got["gap_median"], gap) and np.isclose(got["gap_max"], gap)
    margins = [  # each query's top-1 minus top-2 in the reference
        _cos(0, 10) - _cos(0, 10.2),  # q: a, then b
        _cos(10, 10.2) - _cos(10, 0),  # a: b, then q
        _cos(10.2, 10) - _cos(10.2, 0),  # b: a, then q
        _cos(60, 62) - _cos(60, 10.2),  # c: d, then b
        _cos(62, 60) - _cos(62, 10.2),  # d: c, then b
    ]
    assert np.isclose(got["margin_median"], np.median(margins))


def test_rank1_swaps_without_disagreement():
    same = rank1_swaps(_unit(REFERENCE), _unit(REFERENCE))
    assert (same["rank1_agreement"], same["swaps"], same["gap_median"], same["gap_max"]) == (1.0, 0, 0.0, 0.0)
    two = rank1_swaps(_unit([0, 5]), _unit([0, 5]))  # one neighbour each: no top-2 margin
    assert two["rank1_agreement"] == 1.0 and two["margin_median"] is None  # None, not NaN: --json stays JSON


def _report(cosine_min, gap, margin, swaps=20):
    min_cos, min_rank1 = THRESHOLDS["int8"]
    return {
        "precision": "int8",
        "images": 200,
        "cosine_min": cosine_min,
        "cosine_median": 0.999,
        "attention_max_abs_err": 0.3,
        "rank1_agreement": 1 - swaps / 200,
        "rank1_swaps": swaps,
        "swap_gap_median": gap,
        "swap_gap_max": 3 * gap,
        "reference_margin_median": margin,
        "thresholds": {"cosine_min": min_cos, "rank1_agreement": min_rank1},
        "passed": False,
    }


def test_a_ranking_miss_on_near_ties_says_so_and_offers_both_ways_out():
    advice = miss_advice("int8", "resnet18", _report(cosine_min=0.996, gap=0.0006, margin=0.006))
    assert "nearly tied" in advice and "0.0006 apart" in advice and "20 queries" in advice
    assert "--no-verify" in advice and "--precision fp16" in advice
    assert "calibrate on more real images" not in advice


def test_other_int8_misses_point_at_calibration():
    far_embeddings = _report(cosine_min=0.95, gap=0.0006, margin=0.006)
    wide_swaps = _report(cosine_min=0.996, gap=0.01, margin=0.006)  # swaps wider than the usual margin
    for report in (far_embeddings, wide_swaps, None):
        advice = miss_advice("int8", "resnet18", report)
        assert "calibrate on more real images" in advice and "nearly tied" not in advice
    assert "fp16 instead" in miss_advice("int8", "efficientnet_lite0", _report(0.996, 0.0006, 0.006))


def test_the_report_names_the_swaps_only_when_there_are_some():
    text = format_report(_report(cosine_min=0.996, gap=0.0006, margin=0.006))
    assert "20 queries differ; they swap neighbours 0.0006 apart" in text and "0.0060" in text
    assert "queries differ" not in format_report(_report(0.996, 0.0, 0.006, swaps=0))
