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


def test_evaluation_embeds_images_as_the_runtime_does(lcr_checkpoint):
    """Wide, tall and square images: evaluation's embeddings are the deployed model's (manifest resize rule)."""
    from lcr_sdk import Embedder
    from lcr_sdk.train.checkpoint import load_net
    from lcr_sdk.train.data import Split
    from lcr_sdk.train.evaluate import embed_split

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(48, 100, 3), (100, 48, 3), (64, 64, 3)]]
    split = Split(None, [None] * 3, [0, 1, 2], ["a", "b", "c"], images=images)
    net, _ = load_net(lcr_checkpoint)
    ours = embed_split(net, split, 64)
    with Embedder(lcr_checkpoint, device="cpu") as emb:
        runtime = emb.embed(images)
    np.testing.assert_allclose(ours, runtime, rtol=0, atol=1e-5)
    assert np.abs(ours[0] - ours[1]).max() > 1e-3  # different images, different embeddings
