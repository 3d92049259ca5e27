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


def test_eval_reports_it_on_synthetic_data(moco_checkpoint, lcr_checkpoint, synth_root):
    """Uniform pooling (MoCo v2) puts exactly the box's share of the image on the object; LCR's mask does not."""
    import json

    from lcr_sdk.train.evaluate import evaluate

    info = json.loads((synth_root / "synth.json").read_text())
    assert info["config"]["image_size"] == 64  # the checkpoints' input size: boxes need no scaling
    tests = [b for rel, b in info["boxes"].items() if rel.startswith("test/")]
    box_share = np.mean([(x1 - x0) * (y1 - y0) / 64**2 for x0, y0, x1, y1 in tests])
    moco = evaluate(moco_checkpoint, synth_root, device="cpu")
    assert moco["attention_on_object"] == pytest.approx(box_share, rel=1e-6)
    lcr = evaluate(lcr_checkpoint, synth_root, device="cpu")
    assert abs(lcr["attention_on_object"] - box_share) > 1e-3  # a non-uniform mask moves it


def _copies(root, pictures, swap_test=False):
    """An ImageFolder whose class c is 3 train + 3 test copies of pictures[c] (test pictures of classes 0 and 1
    swapped with ``swap_test``): the answers of every metric are known whatever the network."""
    import cv2

    for split in ("train", "test"):
        for c in range(len(pictures)):
            src = c if split == "train" or not swap_test or c > 1 else 1 - c
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(3):
                cv2.imwrite(str(folder / f"{i}.png"), pictures[src])
    return root


def _pictures():
    rng = np.random.default_rng(3)
    pics = []
    for c in range(4):
        img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        img[:, : 16 * (c + 1)] //= 3  # different structure per class, not only different noise
        pics.append(img)
    return pics


def test_metrics_on_a_set_with_known_answers(lcr_checkpoint, tmp_path):
    """Identical images within a class: every query's nearest neighbours are its class, so every metric is 1;
    with two classes' test pictures swapped, retrieval (test against test) stays 1 while kNN and the linear probe
    (train bank, test queries) get exactly those two classes wrong."""
    from lcr_sdk.train.evaluate import evaluate

    same = evaluate(lcr_checkpoint, _copies(tmp_path / "same", _pictures()), linear=True, device="cpu")
    assert (same["queries"], same["test_images"], same["chance"]) == (12, 12, 0.25)
    for key in ("rank1", "rank5", "mAP", "knn_top1", "linear_top1"):
        assert same[key] == pytest.approx(1.0), key
    swapped = evaluate(lcr_checkpoint, _copies(tmp_path / "swap", _pictures(), True), linear=True, device="cpu")
    assert swapped["rank1"] == pytest.approx(1.0) and swapped["mAP"] == pytest.approx(1.0)
    assert swapped["knn_top1"] == pytest.approx(0.5) and swapped["linear_top1"] == pytest.approx(0.5)
    val = evaluate(lcr_checkpoint, tmp_path / "swap", linear=True, device="cpu", split="val", val_fraction=0.34)
    assert val["val_images"] == 4 and val["knn_top1"] == pytest.approx(1.0)  # val comes from train: not swapped
    assert val["queries"] == 0 and np.isnan(val["rank1"])  # one val image per class: nothing to retrieve


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


def test_eval_json_stays_valid_json_when_no_query_is_answerable(lcr_checkpoint, synth_root):
    import json

    from typer.testing import CliRunner

    from lcr_sdk.cli import app

    args = ["eval", str(lcr_checkpoint), str(synth_root), "--split", "val", "--val-fraction", "0.1", "--json"]
    r = CliRunner().invoke(app, args)  # one validation image per class: no query has a match
    assert r.exit_code == 0, r.output

    def not_json(token):
        raise AssertionError(f"{token} is not JSON")

    m = json.loads(r.output, parse_constant=not_json)
    assert m["rank1"] is None and m["mAP"] is None and m["queries"] == 0 and m["knn_top1"] is not None


def test_uniform_pooling_evaluates_the_lcr_backbone_as_moco_v2_would(lcr_checkpoint, synth_root, tmp_path):
    """The collapse diagnostic: an LCR checkpoint with pooling='uniform' scores exactly as the same backbone saved as
    a MoCo v2 model (GFB dropped), and its attention share falls to the box's share of the image."""
    import torch

    from lcr_sdk.errors import InputError
    from lcr_sdk.train.evaluate import evaluate

    ckpt = torch.load(lcr_checkpoint, weights_only=False)
    ckpt["config"] = {**ckpt["config"], "method": "moco"}
    ckpt["model"] = {k: v for k, v in ckpt["model"].items() if not k.startswith("gfb.")}
    torch.save(ckpt, tmp_path / "as_moco.pt")
    uniform = evaluate(lcr_checkpoint, synth_root, device="cpu", pooling="uniform")
    as_moco = evaluate(tmp_path / "as_moco.pt", synth_root, device="cpu")
    masked = evaluate(lcr_checkpoint, synth_root, device="cpu")
    keys = ("rank1", "rank5", "mAP", "knn_top1", "attention_on_object")
    assert {k: uniform[k] for k in keys} == pytest.approx({k: as_moco[k] for k in keys}, abs=1e-6)
    assert uniform["pooling"] == "uniform" and masked["pooling"] == "mask"
    assert abs(masked["attention_on_object"] - uniform["attention_on_object"]) > 1e-3
    with pytest.raises(InputError, match="pooling 'none' is not valid; choose mask or uniform"):
        evaluate(lcr_checkpoint, synth_root, device="cpu", pooling="none")
