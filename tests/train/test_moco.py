"""MoCo v2 + LCR training step: the pieces a user relies on (real forward/backward on small tensors)."""

import pytest

pytestmark = pytest.mark.torch


def _moco(method="lcr", **kw):
    import torch

    from lcr_sdk.train.moco import MoCo
    from lcr_sdk.train.model import LCRNet

    torch.manual_seed(0)
    kw.setdefault("queue_size", 32)
    return MoCo(LCRNet("resnet18", method, num_parts=4), dim=16, **kw)


def test_lcr_step_trains_gfb_and_backbone_not_key_encoder():
    import torch

    model = _moco("lcr")
    x_q, x_k = torch.randn(8, 3, 64, 64), torch.randn(8, 3, 64, 64)
    out = model(x_q, x_k)
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
    out = model(torch.randn(8, 3, 64, 64), torch.randn(8, 3, 64, 64))
    assert "loss_fit" not in out and model.encoder_q.gfb is None


def test_queue_receives_the_keys_and_wraps():
    import torch

    model = _moco("moco")
    before = model.queue.clone()
    for step in range(5):  # 5 x 8 keys into a queue of 32: wraps around
        model(torch.randn(8, 3, 64, 64), torch.randn(8, 3, 64, 64), torch.arange(8) + 8 * step)
    assert int(model.queue_ptr) == (5 * 8) % 32
    assert model.queue_ids.tolist() == [*range(32, 40), *range(8, 32)]  # each key kept its image index
    assert not torch.equal(before, model.queue)
    torch.testing.assert_close(model.queue.norm(dim=0), torch.ones(32))


def test_gradcam_sign_and_scale():
    """'score' keeps regions whose features raise the positive score; each CAM is scaled to max 1."""
    import torch

    from lcr_sdk.train.moco import contrastive_gradcam

    feats = torch.rand(2, 4, 3, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    w = torch.randn(4, generator=torch.Generator().manual_seed(1))
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

    cam = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert float(fitting_loss(cam, cam.clone())) == pytest.approx(0.0, abs=1e-6)
    assert float(fitting_loss(cam, torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(1)))) > 0


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


def test_own_older_key_is_masked_out_of_the_negatives():
    """Epoch 2 sees image 3 again while its key from epoch 1 is still queued: that key is no negative of it."""
    import torch
    import torch.nn.functional as F

    model = _moco("moco")
    x = torch.randn(8, 3, 64, 64)
    model(x, x.clone(), torch.arange(8))  # "epoch 1": keys of images 0-7 enter the queue at slots 0-7
    assert model.queue_ids[:8].tolist() == list(range(8)) and (model.queue_ids[8:] == -1).all()
    ids = torch.tensor([3, 20, 21, 22, 23, 24, 25, 26])  # "epoch 2": image 3 comes back in a new batch
    batch = x[[3, 0, 1, 2, 4, 5, 6, 7]]
    with torch.no_grad():
        out = model(batch, batch.clone(), ids)
    logits = out["logits"]  # B x (1 + 32)
    assert torch.isneginf(logits[0, 1 + 3])  # image 3's own older key (slot 3) is excluded
    assert torch.isfinite(logits[0, 1:]).sum() == 31 and torch.isfinite(logits[1:]).all()
    assert float(out["own_key"]) == 1 / 8
    # the excluded key would have been the hardest negative: the same image as the query, one step older
    older = model.queue[:, 3]
    others = torch.cat([model.queue[:, :3], model.queue[:, 4:8]], dim=1)
    with torch.no_grad():
        q = F.normalize(model.head_q(model.encoder_q.features(batch).mean(dim=(2, 3))), dim=1)[0]
    assert float(q @ older) > float((q @ others).max())
    # the loss is InfoNCE over each query's remaining negatives
    per_query = [torch.logsumexp(row[torch.isfinite(row)], 0) - row[0] for row in logits]
    torch.testing.assert_close(out["loss_nce"], torch.stack(per_query).mean())


def test_masked_step_trains_and_stays_finite():
    import torch

    model = _moco("lcr")
    x = torch.randn(8, 3, 64, 64)
    model(x, x.clone(), torch.arange(8))
    out = model(x, x.clone(), torch.arange(8))  # every query has its own key queued
    assert float(out["own_key"]) == 1.0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    grads = [p.grad for p in model.encoder_q.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_queue_shorter_than_the_batch_keeps_the_newest_keys():
    import torch

    model = _moco("moco", queue_size=4)
    model(torch.randn(8, 3, 64, 64), torch.randn(8, 3, 64, 64), torch.arange(8))
    assert model.queue_ids.tolist() == [4, 5, 6, 7] and int(model.queue_ptr) == 0


def test_gradcam_under_fp16_scales_the_loss_so_the_gradient_does_not_underflow():
    """dL/dF below fp16's smallest subnormal (6e-8) is flushed to zero by an fp16 backward; the loss scale keeps it.

    The loss here is made that small on purpose (real ResNet-50/224/batch-256 steps reach ~5e-7, where fp16 keeps
    only one or two significant bits); the CAM, being max-normalised, must not depend on the scale.
    """
    import torch

    from lcr_sdk.train.moco import contrastive_gradcam

    torch.manual_seed(0)
    base = torch.rand(2, 4, 3, 3) * 2
    w = torch.tensor([1.0, -0.6, 0.8, -0.3]).view(1, 4, 1, 1)
    f32 = base.clone().requires_grad_()
    reference = contrastive_gradcam((f32 * w).sum() * 1e-9, f32, sign="loss")
    f16 = base.half().requires_grad_()  # what the backbone hands over under fp16 autocast
    loss16 = (f16.float() * w).sum() * 1e-9
    flushed = contrastive_gradcam(loss16, f16, sign="loss")
    assert torch.count_nonzero(flushed) == 0  # the unscaled gradient underflowed: an empty target
    scaled = contrastive_gradcam(loss16, f16, sign="loss", loss_scale=2.0**16)
    assert scaled.dtype == torch.float32 and (reference > 0).sum() > 4 and (reference < 0.9).sum() > 4
    torch.testing.assert_close(scaled, reference, rtol=0, atol=2e-2)


def test_fp16_autocast_cam_matches_fp32():
    """A real LCR step under CPU fp16 autocast gives the fp32 step's Grad-CAM target (also when the scale overflows).

    At this toy size dL/dF is ~1e-3, inside fp16's normal range, so this comparison also holds without the scale;
    the underflow itself is exercised by the test above.
    """
    import torch

    def cam(dtype, scale=2.0**16):
        model = _moco("lcr", cam_loss_scale=scale)
        x = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(5)  # the same key shuffle in every run
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            return model(x, x.clone(), torch.arange(8))["cam"]

    fp32, fp16 = cam(None), cam(torch.float16)
    assert fp16.dtype == torch.float32 and torch.isfinite(fp16).all()
    cos = torch.nn.functional.cosine_similarity(fp32.flatten(1), fp16.flatten(1))
    assert cos.min() > 0.98, cos
    torch.testing.assert_close(fp16.flatten(1).amax(1), torch.ones(8))
    overflow = cam(torch.float16, scale=2.0**40)  # the scaled gradient overflows fp16: retried with a lower scale
    assert torch.isfinite(overflow).all()
    torch.testing.assert_close(overflow, fp16, rtol=0, atol=1e-3)


# -- how far the fitting loss reaches, and the gradient log -----------------------------------------------------------


def _one_step(method: str, measure: bool = False, **kw):
    """One SGD step of a model made from seed 0, on one seeded batch; returns (the backbone's weights, the step's
    output). Both methods build the backbone and projection head from the same weights (an LCR model draws its
    GFB's weights after them) and draw the key shuffle from the same seed."""
    import torch

    model = _moco(method, **kw)
    heads = _moco("moco")  # the same backbone and projection head for both methods
    model.encoder_q.backbone.load_state_dict(heads.encoder_q.backbone.state_dict())
    model.head_q.load_state_dict(heads.head_q.state_dict())
    model.encoder_k.backbone.load_state_dict(heads.encoder_k.backbone.state_dict())
    model.head_k.load_state_dict(heads.head_k.state_dict())
    model.queue.copy_(heads.queue)
    g = torch.Generator().manual_seed(7)
    x_q, x_k = torch.randn(8, 3, 64, 64, generator=g), torch.randn(8, 3, 64, 64, generator=g)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=1e-4)
    torch.manual_seed(3)  # the key shuffle
    out = model(x_q, x_k, torch.arange(8), measure_grads=measure)
    out["loss"].backward()
    opt.step()
    return {k: v.detach().clone() for k, v in model.encoder_q.backbone.state_dict().items()}, out


def test_with_the_fitting_gradient_stopped_at_the_gfb_the_backbone_steps_exactly_as_moco_v2():
    import torch

    moco, _ = _one_step("moco")
    gfb, out = _one_step("lcr", fit_grad="gfb")
    assert out["loss_fit"] > 0  # the GFB is trained ...
    assert all(torch.equal(gfb[k], moco[k]) for k in moco), [k for k in moco if not torch.equal(gfb[k], moco[k])]
    reach, _ = _one_step("lcr", fit_grad="backbone")  # ... and only with 'backbone' does its loss move the backbone
    assert not torch.equal(reach["conv1.weight"], moco["conv1.weight"])


@pytest.mark.parametrize(
    "fit_grad, fit_form", [("gfb", "ours"), ("backbone", "ours"), ("backbone", "released"), ("backbone", "per_image")]
)
def test_gradient_log_measures_both_terms_without_changing_the_update(fit_grad, fit_form):
    import torch

    plain, _ = _one_step("lcr", fit_grad=fit_grad, fit_form=fit_form)
    measured, out = _one_step("lcr", measure=True, fit_grad=fit_grad, fit_form=fit_form)
    assert all(torch.equal(plain[k], measured[k]) for k in plain)
    assert out["grad_nce"] > 0
    if fit_grad == "gfb":
        assert out["grad_fit"] == 0  # its gradient stops at the GFB's input
    else:
        assert out["grad_fit"] > 0


def test_released_form_softmax_runs_within_each_row_and_min_max_over_the_batch():
    """The authors' loss: a constant added to one row of the CAM changes nothing (a softmax per row), nor does an
    affine change of the whole batch's attention (min-max over the batch); changing one image's attention changes
    the others' terms (the batch dependence this SDK's default form does not have)."""
    import torch

    from lcr_sdk.train.moco import fitting_loss, released_fitting_loss

    g = torch.Generator().manual_seed(0)
    cam, attn = torch.rand(3, 4, 5, generator=g), torch.rand(3, 4, 5, generator=g)
    base = released_fitting_loss(cam, attn)
    shifted = cam.clone()
    shifted[1, 2] += 5.0
    torch.testing.assert_close(released_fitting_loss(shifted, attn), base)
    torch.testing.assert_close(released_fitting_loss(cam, 3.0 * attn + 2.0), base)
    assert not torch.allclose(fitting_loss(shifted, attn), fitting_loss(cam, attn))  # ours: one softmax per map
    # image 0's gradient moves when image 2 sets a new batch maximum; with this SDK's form it does not
    other = attn.clone()
    other[2] *= 4.0
    for loss, batch_dependent in ((released_fitting_loss, True), (fitting_loss, False)):
        grads = [torch.autograd.grad(loss(cam, a.requires_grad_()), a)[0][0] for a in (attn.clone(), other.clone())]
        assert torch.allclose(*grads) is not batch_dependent


def test_per_image_form_is_the_released_loss_taken_per_image():
    """Form 'per_image': each image's term depends on that image alone (its own min-max, one softmax over its whole
    map), so the batch's loss is the sum of the images' losses taken one at a time; a constant added to one row of
    the CAM now changes the target; with one image it equals the released loss over the flattened map."""
    import torch

    from lcr_sdk.train.moco import released_fitting_loss

    g = torch.Generator().manual_seed(1)
    cam, attn = torch.rand(3, 4, 5, generator=g), torch.rand(3, 4, 5, generator=g)
    whole = released_fitting_loss(cam, attn, per_image=True)
    alone = sum(released_fitting_loss(cam[i : i + 1], attn[i : i + 1], per_image=True) for i in range(3))
    torch.testing.assert_close(whole, alone)
    other = attn.clone()
    other[2] *= 4.0  # image 2 sets a new batch maximum: image 0's gradient does not move
    grads = [torch.autograd.grad(released_fitting_loss(cam, a.requires_grad_(), per_image=True), a)[0][0]
             for a in (attn.clone(), other.clone())]  # fmt: skip
    torch.testing.assert_close(*grads)
    shifted = cam.clone()
    shifted[1, 2] += 5.0
    assert not torch.allclose(released_fitting_loss(shifted, attn, per_image=True), whole)
    flat = (cam[:1].reshape(1, 1, 20), attn[:1].reshape(1, 1, 20))
    torch.testing.assert_close(released_fitting_loss(*flat), released_fitting_loss(cam[:1], attn[:1], per_image=True))


@pytest.mark.parametrize("fit_form, cam_norm", [("per_image", "max"), ("released", "max"), ("ours", "none")])
def test_a_process_of_a_two_process_run_computes_what_one_process_does_with_the_whole_batch(
    fit_form, cam_norm, monkeypatch
):
    """Under DistributedDataParallel each of N processes holds 1/N of the batch and the gradients are averaged:
    the fitting term must come out as one process's with the whole batch. A batch of two identical halves makes the
    check exact without launching processes: one process with [A; A] against a process of a 2-process run with [A]
    (its InfoNCE is a mean, the same on [A] and [A; A]; its batch-norm statistics too)."""
    import torch

    from lcr_sdk.train import moco as moco_mod

    g = torch.Generator().manual_seed(5)
    x_q, x_k = torch.randn(4, 3, 64, 64, generator=g), torch.randn(4, 3, 64, 64, generator=g)

    def run(x_q, x_k, world):
        monkeypatch.setattr(moco_mod, "world_size", lambda: world)
        model = _moco("lcr", fit_form=fit_form, cam_norm=cam_norm, fit_grad="backbone", nu=0.5)
        model.train()
        torch.manual_seed(3)
        return model(x_q, x_k, None)

    whole = run(torch.cat([x_q, x_q]), torch.cat([x_k, x_k]), 1)
    half = run(x_q, x_k, 2)
    torch.testing.assert_close(half["loss_fit"], whole["loss_fit"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(half["cam"], whole["cam"][:4], rtol=1e-4, atol=1e-6)


def test_a_raw_cam_target_is_near_uniform_and_the_scaled_form_keeps_the_grad_cam_shape():
    """The released forms take the CAM raw: its values are a batch-mean loss's gradient (tiny), so the softmax target
    barely differs from uniform (cam_contrast near 1) and the GFB is fitted to a flat map; 'per_image_max' scales
    each image's CAM to max 1 first, so the target keeps the CAM's shape (and the same one at any batch size)."""
    import torch

    torch.manual_seed(0)
    x_q, x_k = torch.randn(8, 3, 64, 64), torch.randn(8, 3, 64, 64)
    raw, scaled = _moco("lcr", fit_form="per_image"), _moco("lcr", fit_form="per_image_max")
    out_raw, out_scaled = raw(x_q, x_k), scaled(x_q, x_k)
    assert float(out_raw["cam"].amax()) < 0.05 and float(out_raw["cam_contrast"]) < 1.05
    peaks = out_scaled["cam"].flatten(1).amax(dim=1)
    torch.testing.assert_close(peaks, torch.ones_like(peaks))
    assert float(out_scaled["cam_contrast"]) > 1.2
    # the same images: the scaled target is the raw one divided by each image's maximum
    ratio = out_raw["cam"].flatten(1).amax(dim=1).view(-1, 1, 1)
    torch.testing.assert_close(out_scaled["cam"], out_raw["cam"] / ratio, atol=1e-5, rtol=1e-4)
