"""MoCo v2 + LCR training step: the pieces a user relies on (real forward/backward on small tensors)."""

import pytest

pytestmark = pytest.mark.torch


def _cfg(**kw):
    from lcr_sdk.train.config import TrainConfig

    return TrainConfig(arch="resnet18", image_size=64, batch_size=8, moco_k=32, **kw)


def _moco(method="lcr", **kw):
    import torch

    from lcr_sdk.train.moco import MoCo
    from lcr_sdk.train.model import LCRNet

    torch.manual_seed(0)
    return MoCo(LCRNet("resnet18", method, num_parts=4), dim=16, queue_size=32, **kw)


def test_lcr_step_trains_gfb_and_backbone_not_key_encoder():
    import torch

    model = _moco("lcr")
    x_q, x_k = torch.randn(8, 3, 64, 64), torch.randn(8, 3, 64, 64)
    out = model(x_q, x_k, _cfg())
    assert out["loss_fit"] > 0
    torch.testing.assert_close(out["loss"].detach(), out["loss_nce"] + out["loss_fit"])
    out["loss"].backward()
    assert model.encoder_q.gfb.conv.weight.grad.abs().sum() > 0
    assert model.encoder_q.backbone.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.encoder_k.parameters())
    assert model.encoder_k.gfb is None


def test_moco_step_has_no_fitting_loss():
    import torch

    model = _moco("moco")
    out = model(torch.randn(8, 3, 64, 64), torch.randn(8, 3, 64, 64), _cfg())
    assert "loss_fit" not in out and model.encoder_q.gfb is None


def test_queue_receives_the_keys_and_wraps():
    import torch

    model = _moco("moco")
    before = model.queue.clone()
    for _ in range(5):  # 5 x 8 keys into a queue of 32: wraps around
        model(torch.randn(8, 3, 64, 64), torch.randn(8, 3, 64, 64), _cfg())
    assert int(model.queue_ptr) == (5 * 8) % 32
    assert not torch.equal(before, model.queue)
    torch.testing.assert_close(model.queue.norm(dim=0), torch.ones(32))


def test_gradcam_sign_and_scale():
    """'score' keeps regions whose features raise the positive score; each CAM is scaled to max 1."""
    import torch

    from lcr_sdk.train.moco import contrastive_gradcam

    feats = torch.rand(2, 4, 3, 3, requires_grad=True)
    w = torch.randn(4)
    loss = -(feats * w.view(1, 4, 1, 1)).sum()  # dL/dF = -w: the score grows along w
    score = contrastive_gradcam(loss, feats, sign="score")
    torch.testing.assert_close(score, _expected(feats.detach(), w))
    assert torch.allclose(score.flatten(1).amax(1), torch.ones(2))
    loss_sign = contrastive_gradcam(loss, feats, sign="loss")
    torch.testing.assert_close(loss_sign, _expected(feats.detach(), -w))
    assert not score.requires_grad
    assert contrastive_gradcam(loss, feats, detach=False).requires_grad


def _expected(f, w):
    import torch

    cam = torch.relu((f * w.view(1, 4, 1, 1)).sum(1))
    return cam / cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)


def test_fitting_loss_is_zero_when_attention_matches():
    import torch

    from lcr_sdk.train.moco import fitting_loss

    cam = torch.rand(3, 4, 4)
    assert float(fitting_loss(cam, cam.clone())) == pytest.approx(0.0, abs=1e-6)
    assert float(fitting_loss(cam, torch.rand(3, 4, 4))) > 0


def test_split_bn_keeps_state_dict_keys_and_eval_behaviour():
    import torch

    from lcr_sdk.train.moco import use_split_bn
    from lcr_sdk.train.model import LCRNet

    torch.manual_seed(0)
    a = LCRNet("resnet18", "moco")
    keys = set(a.state_dict())
    use_split_bn(a.backbone, 4)
    assert set(a.state_dict()) == keys
    a.train()
    a.features(torch.randn(8, 3, 64, 64))  # split statistics update the running stats
    assert not torch.equal(a.backbone.bn1.running_mean, torch.zeros(64))
