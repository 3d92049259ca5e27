"""MoCo v2 with the LCR GradCAM fitting loss (docs/DESIGN.md section 1).

MoCo v2: He et al. 2020 / Chen et al. 2020 (facebookresearch/moco builder.py). LCR: Shu et al., CVPR 2023.

Hyper-parameters (defaults in TrainConfig): d=128 projection, queue K=65536, momentum m=0.999, temperature
T=0.2; LCR adds K_parts=32 part maps, fitting weight nu, softmax temperature tau=0.4.

Per step (query batch x_q, key batch x_k, both B x 3 x S x S):
    F_q = f(x_q)                                  B x C x h x w
    q   = normalize(g(avgpool(F_q)))              B x d
    k   = normalize(g_k(avgpool(f_k(x_k))))       B x d   (no grad, shuffle-BN)
    L   = InfoNCE(q, k, queue) / T                queue keys of the query's own image masked out
  LCR:
    G   = dL/dF_q (autograd.grad, graph kept)     B x C x h x w
    CAM = ReLU(sum_c F_q * G')  G' = -G ('score') or +G ('loss', released code)    B x h x w
    F'  = F_q detached (fit_grad 'gfb', default) or F_q ('backbone': the fitting term trains the backbone too)
    A   = max_k GFB(F')                           B x h x w
  form 'ours' (default):
    CAM = CAM / max(CAM) per image, detached      (scale-free target; CAM from F' with 'gfb')
    L  += nu * KL(softmax(CAM/tau) || softmax(A/tau))   softmax over all h*w positions of each image, batch mean
  form 'released' (the authors' released code):
    P   = (A - min A) / (max A - min A)           min and max over the whole batch, no temperature
    L  += nu * KL(softmax(CAM) || softmax(P))     raw CAM (not detached), softmax over each row of the map, sum
  form 'per_image': as 'released', with min and max over each image's map and both softmaxes over its whole map

The backbone gradient norms of InfoNCE and of the nu-weighted fitting term can be measured on a step
(``measure_grads``): autograd.grad of each term w.r.t. the query backbone's parameters with the graph kept, so the
update is the same as without the measurement.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lcr_sdk.train.model import LCRNet

RELEASED_FORMS = ("released", "per_image", "per_image_max")  # fitting forms with the released loss's KL
RAW_CAM_FORMS = ("released", "per_image")  # ... of them, those taking the CAM raw (near-uniform after the softmax)


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm over ``num_splits`` sub-batches in training (emulates per-GPU BN in one process).

    With one process there is no other GPU to shuffle keys to; as in MoCo's official single-GPU demo, BN statistics
    are computed over sub-batches and keys are shuffled across them, so a query and its key never share BN
    statistics. In eval mode, or with one split, it is a plain BatchNorm2d (same state-dict keys).
    """

    num_splits: int = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        s = self.num_splits
        if not self.training or s <= 1 or n % s:
            return super().forward(x)
        assert self.running_mean is not None and self.running_var is not None  # track_running_stats, as in ResNets
        mean_in = self.running_mean.repeat(s)
        var_in = self.running_var.repeat(s)
        out = F.batch_norm(
            x.reshape(n // s, c * s, h, w),
            mean_in,
            var_in,
            self.weight.repeat(s),
            self.bias.repeat(s),
            True,
            0.1 if self.momentum is None else self.momentum,
            self.eps,
        ).reshape(n, c, h, w)
        self.running_mean.copy_(mean_in.view(s, c).mean(0))
        self.running_var.copy_(var_in.view(s, c).mean(0))
        return out


def use_split_bn(module: nn.Module, num_splits: int) -> None:
    """Turn every BatchNorm2d of ``module`` into a SplitBatchNorm with ``num_splits`` (in place, same weights)."""
    for m in module.modules():
        if type(m) in (nn.BatchNorm2d, SplitBatchNorm):
            m.__class__ = SplitBatchNorm
            setattr(m, "num_splits", num_splits)  # noqa: B010 (the class was just swapped)


def mlp_head(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    """MoCo v2 projection head C -> hidden -> d."""
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim_out))


def contrastive_gradcam(
    loss: torch.Tensor,
    feats: torch.Tensor,
    sign: str = "loss",
    detach: bool = True,
    norm: str = "max",
    loss_scale: float = 1.0,
) -> torch.Tensor:
    """Grad-CAM of the InfoNCE loss w.r.t. the feature map: B x h x w float32, each image scaled to max 1
    (norm='max').

    Args:
        loss: scalar InfoNCE loss.
        feats: F, B x C x h x w, part of ``loss``'s graph.
        sign: 'score' uses -dL/dF (what raises the positive-pair score); 'loss' uses +dL/dF (released code).
        detach: return a constant target (no gradient through F); False lets the target's F factor get gradient.
        norm: 'max' divides each image's CAM by its maximum; 'none' keeps raw values.
        loss_scale: the gradient is taken of ``loss * loss_scale`` and divided back in float32. Under fp16
            autocast dL/dF is often below fp16's normal range (~1e-5 at ResNet-18/112 px/batch 32, ~5e-7 at
            ResNet-50/224/256) and the backward flushes it to zero; a scale of 2**16 keeps it representable
            (the same trick as AMP's loss scaling). With norm='max' the scale cancels exactly.
    """
    grad = torch.autograd.grad(loss * loss_scale, feats, retain_graph=True)[0]  # B x C x h x w, no double backward
    grad = grad.float() / loss_scale
    weights = -grad if sign == "score" else grad
    cam = F.relu((feats.float() * weights).sum(dim=1))  # B x h x w
    if norm == "max":
        cam = cam / cam.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    return cam.detach() if detach else cam


def fitting_loss(cam: torch.Tensor, attn: torch.Tensor, tau: float = 0.4) -> torch.Tensor:
    """KL(softmax(CAM/tau) || softmax(A/tau)) over all h*w positions of each image, averaged over the batch."""
    target = F.log_softmax(cam.flatten(1).float() / tau, dim=1)  # B x hw
    pred = F.log_softmax(attn.flatten(1).float() / tau, dim=1)  # B x hw
    return F.kl_div(pred, target, reduction="batchmean", log_target=True)


def released_fitting_loss(cam: torch.Tensor, attn: torch.Tensor, per_image: bool = False) -> torch.Tensor:
    """The authors' released fitting loss (without its weight): KL(softmax(CAM) || softmax(P)), reduction 'sum'.

    P is the raw attention min-max normalised to [0, 1] over the whole batch (so an image's loss depends on the
    other images of its batch), with no temperature; the target is the raw CAM as given (the caller leaves it
    unnormalised and attached to the graph, as the released code does); each softmax runs over one row of the
    h x w map (the last axis), not over the whole map. Both are defects of the released form, reproduced here
    only to compare with it.

    ``per_image=True`` is the same loss without the two defects (form 'per_image'): each image's A is min-max
    normalised on its own and both softmaxes run over the image's whole h*w map, so an image's term depends on that
    image alone; weight, target and reduction are the released ones.
    """
    a = attn.float()
    if per_image:
        flat = a.flatten(1)  # B x hw
        lo, hi = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
        p = (flat - lo) / (hi - lo).clamp_min(1e-12)
        target = F.log_softmax(cam.float().flatten(1), dim=1)
        return F.kl_div(F.log_softmax(p, dim=1), target, reduction="sum", log_target=True)
    p = (a - a.min()) / (a.max() - a.min()).clamp_min(1e-12)  # B x h x w, batch min-max
    target = F.log_softmax(cam.float(), dim=-1)  # B x h x w, softmax within each row
    pred = F.log_softmax(p, dim=-1)
    return F.kl_div(pred, target, reduction="sum", log_target=True)


def world_size() -> int:
    """Processes training together (DistributedDataParallel), 1 without it."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def grad_norm(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """L2 norm of d loss / d params (all of them together), the graph kept; 0 where ``loss`` does not reach."""
    if not loss.requires_grad:
        return torch.zeros((), device=loss.device)
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    norms = [g.float().norm() for g in grads if g is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros((), device=loss.device)


@torch.no_grad()
def _gather(x: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 across DDP ranks (no gradient); identity without DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


class MoCo(nn.Module):
    """MoCo v2 (+ LCR fitting loss when ``net.method == 'lcr'``) around a deployable :class:`LCRNet`.

    The queue keeps, beside each key, the index of the training image it came from. A query's own image can be in
    the queue as a key from an earlier epoch (the queue outlives an epoch's reshuffle); such keys are masked out of
    that query's negatives (logit -inf), so an image is never pushed away from itself.

    Args:
        net: the query encoder (its GFB, if any, gets the fitting loss). Keep a reference: it is what gets deployed.
        dim: projection dimension d.
        hidden: MLP hidden width (0 = C).
        queue_size: number of negative keys.
        momentum: key-encoder momentum m.
        temperature: InfoNCE temperature T.
        bn_splits: BN sub-batches for single-process shuffle-BN (1 = plain BN, e.g. under DDP or SyncBN).
        nu: weight of the fitting loss (LCR).
        tau: temperature of the fitting loss's softmaxes (LCR, form 'ours').
        cam_sign, cam_detach, cam_norm: the Grad-CAM target (see :func:`contrastive_gradcam`; form 'ours').
        fit_grad: 'gfb' (the fitting term's gradient stops at the GFB's input) or 'backbone' (it reaches the
            backbone).
        fit_form: 'ours' (:func:`fitting_loss`), 'released' or 'per_image' (:func:`released_fitting_loss`).
        cam_loss_scale: loss scale of the Grad-CAM gradient under fp16 autocast (lowered for a step if the
            scaled gradient overflows); 1 is used in float32 and bfloat16.
    """

    queue: torch.Tensor
    queue_ids: torch.Tensor
    queue_ptr: torch.Tensor

    def __init__(
        self,
        net: LCRNet,
        dim: int = 128,
        hidden: int = 0,
        queue_size: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.2,
        bn_splits: int = 1,
        nu: float = 1.0,
        tau: float = 0.4,
        cam_sign: str = "loss",
        cam_detach: bool = True,
        cam_norm: str = "max",
        cam_loss_scale: float = 2.0**16,
        fit_grad: str = "gfb",
        fit_form: str = "ours",
    ):
        super().__init__()
        if queue_size < 1:
            raise ValueError(f"queue_size {queue_size} must be >= 1")
        self.m, self.T = momentum, temperature
        self.nu, self.tau = nu, tau
        self.cam_sign, self.cam_detach, self.cam_norm, self.cam_loss_scale = (
            cam_sign,
            cam_detach,
            cam_norm,
            cam_loss_scale,
        )
        self.fit_grad, self.fit_form = fit_grad, fit_form
        self.encoder_q = net
        self.head_q = mlp_head(net.dim, hidden or net.dim, dim)
        self.encoder_k = copy.deepcopy(net)
        self.head_k = copy.deepcopy(self.head_q)
        self.encoder_k.gfb = None  # keys need only the backbone
        for p in [*self.encoder_k.parameters(), *self.head_k.parameters()]:
            p.requires_grad = False
        self.bn_splits = bn_splits
        if bn_splits > 1:
            use_split_bn(self.encoder_q.backbone, bn_splits)
            use_split_bn(self.encoder_k.backbone, bn_splits)
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))  # d x K
        self.register_buffer("queue_ids", torch.full((queue_size,), -1, dtype=torch.long))  # K, -1 = random init
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _momentum_update(self) -> None:
        pairs = [(self.encoder_q.backbone, self.encoder_k.backbone), (self.head_q, self.head_k)]
        for q_mod, k_mod in pairs:
            for pq, pk in zip(q_mod.parameters(), k_mod.parameters()):
                pk.mul_(self.m).add_(pq.detach(), alpha=1.0 - self.m)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor, ids: torch.Tensor | None) -> None:
        """Put this step's keys (all ranks') and their image indices into the ring buffer."""
        keys = _gather(keys)  # B_total x d
        ids = _gather(ids) if ids is not None else torch.full((keys.shape[0],), -1, device=keys.device)
        k_size = self.queue.shape[1]
        if keys.shape[0] > k_size:  # a queue shorter than the batch keeps the newest keys
            keys, ids = keys[-k_size:], ids[-k_size:]
        idx = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % k_size
        self.queue[:, idx] = keys.T.to(self.queue.dtype)
        self.queue_ids[idx] = ids.to(self.queue_ids.dtype)
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % k_size)

    @torch.no_grad()
    def _keys(self, x_k: torch.Tensor) -> torch.Tensor:
        """Key embeddings with shuffle-BN: across GPUs under DDP, across BN splits in one process."""
        ddp = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if ddp:  # MoCo's batch shuffle across GPUs
            x_all = _gather(x_k)
            perm = torch.randperm(x_all.shape[0], device=x_k.device)
            dist.broadcast(perm, src=0)
            unperm = torch.argsort(perm)
            b, rank = x_k.shape[0], dist.get_rank()
            x = x_all[perm[rank * b : (rank + 1) * b]]
        else:
            perm = torch.randperm(x_k.shape[0], device=x_k.device)
            x = x_k[perm]
        feats = self.encoder_k.features(x)
        k = F.normalize(self.head_k(feats.mean(dim=(2, 3))), dim=1)
        if ddp:
            return _gather(k)[unperm[rank * b : (rank + 1) * b]]
        return k[torch.argsort(perm)]

    def _cam(self, loss: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """The Grad-CAM target; under fp16 the gradient is taken of a scaled loss (see :func:`contrastive_gradcam`).

        The released form takes the raw CAM, attached to the graph; with fit_grad 'gfb' the target is always
        detached (the fitting term never reaches the backbone).
        """
        released = self.fit_form in RELEASED_FORMS
        detach = self.fit_grad == "gfb" or (self.cam_detach and not released)
        norm = "none" if self.fit_form in RAW_CAM_FORMS else "max" if released else self.cam_norm
        scale = self.cam_loss_scale if feats.dtype == torch.float16 else 1.0
        while True:
            cam = contrastive_gradcam(loss, feats, self.cam_sign, detach, norm, scale)
            if scale <= 1.0 or bool(torch.isfinite(cam).all()):
                return cam
            scale = max(1.0, scale / 2**8)  # the scaled gradient overflowed fp16: retry lower

    def _fit(self, loss_nce: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fitting loss, CAM target) of a step (LCR).

        Under DistributedDataParallel each process holds 1/world of the batch, so both are made what one process
        with the whole batch computes: the CAM is the gradient of the whole batch's mean InfoNCE (the local mean /
        world), and a fitting loss summed over images (the released forms) is the local sum x world (the gradients
        are then averaged over processes). One process or several, the same global batch trains alike.
        """
        world = world_size()
        cam = self._cam(loss_nce / world if world > 1 else loss_nce, feats)  # B x h x w
        attn = self.encoder_q.raw_attention(feats.detach() if self.fit_grad == "gfb" else feats)  # B x h x w
        if self.fit_form in RELEASED_FORMS:
            summed = released_fitting_loss(cam, attn, per_image=self.fit_form != "released")
            return summed * world if world > 1 else summed, cam
        return fitting_loss(cam, attn, self.tau), cam  # a batch mean: the same on every process

    @torch.no_grad()
    def cam_contrast(self, cam: torch.Tensor) -> torch.Tensor:
        """How far the fitting target is from uniform: its largest softmax weight over the uniform weight, as the
        form's softmax spreads it (the whole map, or one row for 'released'), averaged over the batch. 1 means the
        GFB is fitted to a uniform map whatever the Grad-CAM shows."""
        if self.fit_form == "released":
            return (F.softmax(cam.float(), dim=-1).amax(dim=-1) * cam.shape[-1]).mean()
        flat = cam.float().flatten(1)
        tau = 1.0 if self.fit_form in RELEASED_FORMS else self.tau
        return (F.softmax(flat / tau, dim=1).amax(dim=1) * flat.shape[1]).mean()

    def forward(
        self, x_q: torch.Tensor, x_k: torch.Tensor, ids: torch.Tensor | None = None, measure_grads: bool = False
    ) -> dict[str, torch.Tensor]:
        """One training forward.

        Args:
            x_q, x_k: two augmented views of the same images, B x 3 x S x S.
            ids: B indices of the images in the training set (their keys enter the queue with them); None
                disables the own-key mask.
            measure_grads: also return ``grad_nce`` and ``grad_fit`` (LCR), the L2 norms of the gradients of
                InfoNCE and of the weighted fitting term w.r.t. the query backbone's parameters (about two extra
                backward passes; the loss and the update are unchanged).

        Returns:
            ``loss`` (with graph) and, detached: ``loss_nce``, ``loss_fit`` (LCR), ``acc`` (positive ranked first),
            ``own_key`` (share of queries whose own older key was in the queue and masked), ``logits``
            (B x (1 + K), /T, masked entries -inf), ``cam`` (LCR, B x h x w) and the gradient norms if asked.
        """
        feats = self.encoder_q.features(x_q)  # B x C x h x w
        q = F.normalize(self.head_q(feats.mean(dim=(2, 3))), dim=1)  # B x d
        with torch.no_grad():
            self._momentum_update()
            k = self._keys(x_k)  # B x d
        l_pos = (q * k).sum(dim=1, keepdim=True)  # B x 1
        l_neg = q @ self.queue.clone().detach().to(q.dtype)  # B x K
        own = torch.zeros_like(l_neg, dtype=torch.bool)
        if ids is not None:
            own = self.queue_ids.unsqueeze(0) == ids.to(self.queue_ids.device).unsqueeze(1)  # B x K
            l_neg = l_neg.masked_fill(own, float("-inf"))  # an image is never its own negative
        logits = torch.cat([l_pos, l_neg], dim=1).float() / self.T
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        loss_nce = F.cross_entropy(logits, labels)
        out = {
            "loss_nce": loss_nce.detach(),
            "acc": (logits.argmax(1) == 0).float().mean(),
            "own_key": own.any(dim=1).float().mean(),
            "logits": logits.detach(),
        }
        loss = loss_nce
        backbone = [p for p in self.encoder_q.backbone.parameters() if p.requires_grad] if measure_grads else []
        if measure_grads:
            out["grad_nce"] = grad_norm(loss_nce, backbone)
        if self.encoder_q.gfb is not None:
            loss_fit, cam = self._fit(loss_nce, feats)
            loss = loss + self.nu * loss_fit
            out["loss_fit"] = loss_fit.detach()
            out["cam"] = cam.detach()
            out["cam_contrast"] = self.cam_contrast(cam)
            if measure_grads:
                out["grad_fit"] = grad_norm(self.nu * loss_fit, backbone)
        self._enqueue(k, ids)
        out["loss"] = loss
        return out


class Supervised(nn.Module):
    """The supervised upper bound: same backbone and budget, cross-entropy on the average-pooled feature."""

    def __init__(self, net: LCRNet, num_classes: int):
        super().__init__()
        self.encoder_q = net
        self.classifier = nn.Linear(net.dim, num_classes)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross-entropy of the classifier on the average-pooled layer-4 feature; ``acc`` is the batch's top-1."""
        logits = self.classifier(self.encoder_q.features(x).mean(dim=(2, 3)))
        loss = F.cross_entropy(logits, labels)
        return {"loss": loss, "loss_nce": loss.detach(), "acc": (logits.argmax(1) == labels).float().mean()}
