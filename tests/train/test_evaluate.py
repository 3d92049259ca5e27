"""How much attention lands on the object: the measure behind the 'common rationale' claim."""

import numpy as np
import pytest

pytestmark = pytest.mark.torch


def test_attention_on_object_baseline_and_focus():
    from lcr_sdk.train.evaluate import attention_on_object

    box = (0, 0, 32, 64)  # the left half of a 64 x 64 image
    uniform = np.ones((2, 4, 4), np.float32)
    assert attention_on_object(uniform, [box, box], 64) == pytest.approx(0.5, abs=0.01)
    left = np.zeros((1, 4, 4), np.float32)
    left[:, :, :1] = 1.0  # all mass in the left quarter of the feature grid
    assert attention_on_object(left, [box], 64) > 0.95


def test_eval_reports_it_on_synthetic_data(lcr_checkpoint, synth_root):
    from lcr_sdk.train.evaluate import evaluate

    m = evaluate(lcr_checkpoint, synth_root, device="cpu")
    assert 0 < m["attention_on_object"] < 1
