"""Training step time of LCR over MoCo v2 (the extra Grad-CAM backward and GFB), measured side by side.

Each round times ``--steps`` steps of MoCo v2, then of LCR, on the same random uint8 batch (augmentation included),
and the rounds alternate so that machine noise hits both alike. Prints a markdown table: median step time of each
method, the LCR/MoCo ratio (median of per-round ratios) and its spread (min-max over rounds).

    python benchmarks/bench_train_step.py --device cpu --arch resnet18 --image-size 112 --batch 32
    python benchmarks/bench_train_step.py --device cuda --arch resnet50 --image-size 224 --batch 64 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from lcr_sdk.train.augment import moco_v2
from lcr_sdk.train.config import TrainConfig
from lcr_sdk.train.engine import build_moco
from lcr_sdk.train.moco import MoCo
from lcr_sdk.train.model import LCRNet


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(method: str, cfg: TrainConfig, device: torch.device) -> tuple[MoCo, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = build_moco(LCRNet(cfg.arch, method, cfg.num_parts), cfg, 4096, max(1, min(8, cfg.batch_size // 8)))
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    return model, opt


def step(model: MoCo, opt: torch.optim.Optimizer, images: torch.Tensor, cfg: TrainConfig, device: torch.device) -> None:
    a, b = moco_v2(images, cfg.image_size), moco_v2(images, cfg.image_size)
    ids = torch.arange(images.shape[0], device=device)  # the same images every step: their keys are masked
    if device.type == "cuda":
        a, b = a.contiguous(memory_format=torch.channels_last), b.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = model(a, b, ids)
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    opt.step()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per method per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cfg = TrainConfig(arch=args.arch, image_size=args.image_size, batch_size=args.batch)
    side = round(args.image_size * 8 / 7)
    images = torch.randint(0, 256, (args.batch, 3, side, side), dtype=torch.uint8, device=device)
    models = {m: build(m, cfg, device) for m in ("moco", "lcr")}
    for model, opt in models.values():  # warm-up (cudnn autotune, allocator)
        for _ in range(2):
            step(model, opt, images, cfg, device)
    times = {m: [] for m in models}
    for _ in range(args.rounds):
        for m, (model, opt) in models.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(model, opt, images, cfg, device)
            _sync(device)
            times[m].append((time.perf_counter() - t0) / args.steps * 1000)
    ratios = [lc / mo for lc, mo in zip(times["lcr"], times["moco"])]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    res = {
        "device": name,
        "arch": args.arch,
        "image_size": args.image_size,
        "batch": args.batch,
        "moco_ms": statistics.median(times["moco"]),
        "lcr_ms": statistics.median(times["lcr"]),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "torch": torch.__version__,
    }
    print(
        f"| device | model | batch | MoCo v2 ms/step | LCR ms/step | LCR / MoCo (min-max over {args.rounds} rounds) |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| {name} | {args.arch} {args.image_size}px | {args.batch} | {res['moco_ms']:.1f} | {res['lcr_ms']:.1f} | "
        f"{res['ratio_median']:.3f} ({res['ratio_min']:.3f}-{res['ratio_max']:.3f}) |"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
