"""The deployable network: shapes, per-image mask normalisation, pooling, weight conversion."""

import pytest

pytestmark = pytest.mark.torch


def test_shapes_and_unit_embeddings():
    import torch

    from lcr_sdk.manifest import feature_size
    from lcr_sdk.train.model import DeployModel, LCRNet

    net = LCRNet("resnet18", "lcr", num_parts=8).eval()
    images = torch.randint(0, 256, (3, 64, 96, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    e, m, p = DeployModel(net)(images)
    h, w = feature_size(64, 96)
    assert e.shape == (3, 512) and m.shape == (3, h, w) and p.shape == (3, 8, h, w)
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    assert m.min() >= 0 and m.max() <= 1


def test_mask_is_per_image_not_per_batch():
    """The released code normalised over the batch; ours must not depend on the other images."""
    import torch

    from lcr_sdk.train.model import DeployModel, LCRNet

    torch.manual_seed(0)
    model = DeployModel(LCRNet("resnet18", "lcr", num_parts=8))
    images = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        e_batch, m_batch, _ = model(images)
        e_one, m_one, _ = model(images[2:3])
    torch.testing.assert_close(m_batch[2:3], m_one, atol=1e-5, rtol=0)
    torch.testing.assert_close(e_batch[2:3], e_one, atol=1e-5, rtol=0)


def test_moco_pools_uniformly():
    import torch
    import torch.nn.functional as F

    from lcr_sdk.train.model import LCRNet

    net = LCRNet("resnet18", "moco").eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f = net.features(x)
        assert net.parts(f) is None
        assert torch.equal(net.attention(f), torch.ones(2, 2, 2))
        torch.testing.assert_close(net.embed(x), F.normalize(f.mean(dim=(2, 3)), dim=1))


def test_flat_attention_becomes_all_ones():
    import torch

    from lcr_sdk.train.model import minmax_mask

    a = torch.stack([torch.zeros(3, 3), torch.arange(9.0).view(3, 3)])
    m = minmax_mask(a)
    assert torch.equal(m[0], torch.ones(3, 3))
    assert m[1].min() == 0 and m[1].max() == 1


def test_torchvision_weights_map_onto_the_backbone():
    import torchvision

    from lcr_sdk.train.model import LCRNet, backbone_state_dict

    tv = torchvision.models.resnet18(weights=None)
    mapped = backbone_state_dict(tv.state_dict())
    assert "backbone.conv1.weight" in mapped and not any(k.startswith(("fc.", "backbone.fc.")) for k in mapped)
    net = LCRNet("resnet18", "lcr", num_parts=4)
    missing, unexpected = net.load_state_dict(mapped, strict=False)
    assert unexpected == [] and all(k.startswith("gfb.") for k in missing)
    ddp = backbone_state_dict({f"module.{k}": v for k, v in tv.state_dict().items()})
    assert ddp.keys() == mapped.keys()  # saved from DistributedDataParallel: same result
    own = backbone_state_dict(net.state_dict())  # an lcr-sdk checkpoint's model: backbone kept, GFB dropped
    assert own.keys() == mapped.keys()


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101"])
def test_guess_arch_from_the_weights(arch):
    import torchvision

    from lcr_sdk.train.model import backbone_state_dict, guess_arch

    state = getattr(torchvision.models, arch)(weights=None).state_dict()
    assert guess_arch(backbone_state_dict(state)) == arch


def test_load_backbone_is_exact_or_refused_with_the_fix():
    import torch
    import torchvision

    from lcr_sdk.errors import ModelError
    from lcr_sdk.train.model import LCRNet, load_backbone

    torch.manual_seed(1)
    tv = torchvision.models.resnet18(weights=None).state_dict()
    net = LCRNet("resnet18", "lcr", num_parts=4)
    load_backbone(net, tv)
    for k, v in tv.items():
        if not k.startswith("fc."):
            assert torch.equal(net.state_dict()[f"backbone.{k}"], v), k
    with pytest.raises(ModelError, match="holds a resnet18 backbone but this run trains resnet50: use --arch resnet18"):
        load_backbone(LCRNet("resnet50", "moco"), tv)
    cut = {k: v for k, v in tv.items() if not k.startswith("layer4.")}
    with pytest.raises(ModelError, match=r"holds no resnet18 backbone: 30 of its 120 keys missing.*layer4"):
        load_backbone(net, cut)
    with pytest.raises(ModelError, match=r"120 of its 120 keys missing.*2 unexpected \(e.g. \['classifier.0.weight"):
        load_backbone(net, {"classifier.0.weight": torch.zeros(3, 3), "features.0.weight": torch.zeros(3)})
    before = {k: v.clone() for k, v in net.state_dict().items()}
    wide = dict(tv, **{"layer2.0.conv1.weight": torch.zeros(96, 64, 3, 3)})
    with pytest.raises(ModelError, match=r"layer2.0.conv1.weight has shape \[96, 64, 3, 3\]"):
        load_backbone(net, wide)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # nothing was copied


def test_unknown_arch_or_method_is_refused():
    from lcr_sdk.train.model import LCRNet

    with pytest.raises(ValueError, match="resnet50"):
        LCRNet("vgg16")
    with pytest.raises(ValueError, match="lcr"):
        LCRNet("resnet18", "simclr")
