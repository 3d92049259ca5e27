"""PyTorch backend on a CUDA GPU: ResNet-50 LCR at 224 px, eager fp32 / eager fp16 / fp16 + CUDA graph / compile.

    python benchmarks/gpu_torch_backend.py                 # CUDA machine; JSON to $OUT/gpu_torch_backend.json if set
    python benchmarks/gpu_torch_backend.py --smoke         # CPU check of the script itself (resnet18, 64 px, tiny)

Beside the backend's configurations it times a bare ``torch.compile`` of the same weights (the DeployModel, fp16,
channels_last, called directly: no Embedder, no checks) in the same run, so the backend's overhead over plain
PyTorch is a ratio on one machine (batch 256 throughput, batch 1 latency).

Runs ``Embedder(checkpoint, device="cuda", fp16=..., cuda_graph=..., compile=...)`` on a random-init checkpoint
(speed does not depend on the weights) and feeds uint8 N x 224 x 224 x 3 CUDA tensors through ``Embedder.infer``,
so no host copy or host preprocessing is timed: this is the model as the backend runs it. Each configuration is
timed over --reps runs of --iters calls (CUDA synchronised); the table shows the median and the min-max spread.
Standalone (no pytest). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def _checkpoint(folder: Path, arch: str, size: int) -> Path:
    from lcr_sdk.train.checkpoint import random_init_checkpoint

    return random_init_checkpoint(folder / f"{arch}.pt", arch=arch, image_size=size, bn_batches=0)


def _measure(emb, x, iters: int, reps: int, sync) -> list[float]:
    """Seconds per call, one value per rep."""
    for _ in range(3):
        emb.infer(x)
    sync()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(iters):
            emb.infer(x)
        sync()
        out.append((time.perf_counter() - t) / iters)
    return out


class _Bare:
    """A bare torch.compile'd fp16 DeployModel (same weights, same fp16 placement as the backend's fp16 mode), called
    directly: the baseline the backend's compiled mode is compared with."""

    def __init__(self, ckpt: Path):
        import torch

        from lcr_sdk.backends.torch import _to_half
        from lcr_sdk.train.checkpoint import load_net
        from lcr_sdk.train.model import DeployModel

        model = DeployModel(load_net(ckpt)[0]).eval().cuda().to(memory_format=torch.channels_last)
        model.net.half()
        model.preprocess = torch.nn.Sequential(model.preprocess, _to_half(torch))
        self.torch, self.model = torch, torch.compile(model)

    def infer(self, x):
        with self.torch.inference_mode():
            return self.model(x)


def _bare_compile(ckpt: Path, batches: list[int], size: int, iters: int, reps: int, sync) -> list[dict]:
    import torch

    bare, rows = _Bare(ckpt), []
    for n in batches:
        x = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, device="cuda")
        t = _measure(bare, x, iters, reps, sync)
        med = statistics.median(t)
        row = {"config": "bare torch.compile fp16 (no Embedder)", "batch": n, "ms_median": 1e3 * med}
        row.update(ms_min=1e3 * min(t), ms_max=1e3 * max(t), images_per_s=n / med, provider="torch")
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run (resnet18, 64 px, batch 1 and 4)")
    ap.add_argument("--batch", default=None, help="comma-separated batch sizes (default 1,256; smoke 1,4)")
    ap.add_argument("--iters", type=int, default=None, help="calls per timed rep")
    ap.add_argument("--reps", type=int, default=5, help="timed reps per configuration")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    a = ap.parse_args()

    import torch

    from lcr_sdk import Embedder

    device = "cpu" if a.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: run on a CUDA machine, or use --smoke to check the script on CPU")
    arch, size = ("resnet18", 64) if a.smoke else ("resnet50", 224)
    batches = [int(b) for b in (a.batch or ("1,4" if a.smoke else "1,256")).split(",")]
    iters = a.iters or (2 if a.smoke else 50)
    configs = [("eager fp32", {})]
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
        configs += [("eager fp16", {"fp16": True}), ("fp16 + CUDA graph", {"fp16": True, "cuda_graph": True})]
    if not a.no_compile and not a.smoke:
        configs.append(("fp16 + torch.compile", {"fp16": True, "compile": True}))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    gpu = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    rows = []
    with tempfile.TemporaryDirectory() as d:
        ckpt = _checkpoint(Path(d), arch, size)
        for name, opts in configs:
            try:
                emb = Embedder(ckpt, device=device, **opts)
            except Exception as e:  # report and go on with the other configurations
                rows.append({"config": name, "error": str(e).splitlines()[0]})
                continue
            for n in batches:
                x = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, device=device)
                try:
                    t = _measure(emb, x, iters, a.reps, sync)
                except Exception as e:
                    rows.append({"config": name, "batch": n, "error": str(e).splitlines()[0]})
                    continue
                med = statistics.median(t)
                rows.append(
                    {
                        "config": name,
                        "batch": n,
                        "ms_median": 1e3 * med,
                        "ms_min": 1e3 * min(t),
                        "ms_max": 1e3 * max(t),
                        "images_per_s": n / med,
                        "provider": emb.provider,
                    }
                )
            emb.close()
        if device == "cuda" and not a.no_compile:
            rows += _bare_compile(ckpt, batches, size, iters, a.reps, sync)
    print(
        f"PyTorch backend, {arch} LCR at {size} px on {gpu}, torch {torch.__version__}, "
        f"{a.reps} reps x {iters} calls, uint8 tensors on {device} in (no host copies)\n"
    )
    print("| config | batch | ms per batch, median (min-max) | images/s |\n|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['config']} | {r.get('batch', '-')} | failed: {r['error'][:80]} | - |")
        else:
            print(
                f"| {r['config']} | {r['batch']} | {r['ms_median']:.2f} ({r['ms_min']:.2f}-{r['ms_max']:.2f}) | "
                f"{r['images_per_s']:,.0f} |"
            )
    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / "gpu_torch_backend.json"
        meta = {
            "gpu": gpu,
            "torch": torch.__version__,
            "arch": arch,
            "image_size": size,
            "iters": iters,
            "reps": a.reps,
        }
        path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
