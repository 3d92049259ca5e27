"""Export benchmark, ONNX Runtime on the CPU; prints markdown tables.

1. Cost of the folded GFB + min-max mask + weighted pooling over a plain backbone + average pool graph, per batch.
2. The preprocessing TensorRT accepts (Cast first, flip and 1/std folded into conv1, one Add) against the reference
   graph traced as is (uint8 Transpose, Slice, Cast, Mul, Add), side by side.
3. Latency (batch 1) and throughput (batch 32) of the fp32, fp16 and int8 graphs, with verification figures.

    .venv/bin/python benchmarks/bench_export.py [--checkpoint lcr.pt --images data/test --calib data/train]
    .venv/bin/python benchmarks/bench_export.py --int8-parity --checkpoint lcr.pt --images data/test --calib data/train
    .venv/bin/python benchmarks/bench_export.py --int8-parity --calib-draws 3 --checkpoint lcr.pt ...

--int8-parity: only the int8 graphs, the current one (unquantised parts in float16, biases corrected for the int8
weights' mean error) beside the earlier one (unquantised parts in float32, biases as trained) and the two steps
between, built from the same checkpoint and calibration images, each verified against the fp32 PyTorch model
through ONNX Runtime (min cosine, Rank-1 agreement). With --calib-draws N: only the current and the earlier graph,
each calibrated on N seeded random draws of the calibration folder, to show how far the figures move with the
calibration images alone beside how far they move between the graphs.

Without --checkpoint a random-init resnet18 at 112 px is used (fine for timings; say so beside verification
figures); without images a small synthetic set is generated. Graphs are timed interleaved, round-robin, so that
machine noise hits all of them alike; medians with the inter-quartile range.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from lcr_sdk.export import export_model, verify_model
from lcr_sdk.export.graph import OPSET
from lcr_sdk.train.checkpoint import load_net
from lcr_sdk.train.model import DeployModel, Preprocess


class PlainModel(torch.nn.Module):
    """Backbone + plain average pool + L2 norm: the baseline without GFB and mask."""

    def __init__(self, net):
        super().__init__()
        self.pre, self.net = Preprocess(), net.eval()

    def forward(self, images):
        return F.normalize(self.net.features(self.pre(images)).mean(dim=(2, 3)), dim=1)


def _trace(model: torch.nn.Module, size: int, path: Path, outputs: list[str]) -> Path:
    """Trace a uint8 NHWC model to ONNX at the exporter's opset, batch dynamic."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, size, size, 3, dtype=torch.uint8),),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["images"],
            output_names=outputs,
            dynamic_axes={n: {0: "N"} for n in ["images", *outputs]},
        )
    return path


def export_plain(checkpoint: Path, size: int, path: Path) -> Path:
    net, _ = load_net(checkpoint)
    return _trace(PlainModel(net), size, path, ["embedding"])


def export_reference(checkpoint: Path, size: int, path: Path) -> Path:
    """The reference DeployModel traced as is: uint8 Transpose and Slice (flip) before the Cast, then Mul and Add."""
    net, _ = load_net(checkpoint)
    names = ["embedding", "attention", "parts"] if net.method == "lcr" else ["embedding", "attention"]
    return _trace(DeployModel(net), size, path, names)


def margin_split(checkpoint: Path, model: Path, images: Path) -> None:
    """Rank-1 agreement of ``model`` with the fp32 reference, split by the reference's margin between a query's two
    nearest neighbours (near-ties flip under small perturbations), and how much the model moves a similarity."""
    from lcr_sdk import Embedder
    from lcr_sdk.images import list_images

    paths = [str(p) for p in list_images(images, recursive=True)]
    with Embedder(checkpoint, device="cpu") as ref, Embedder(model, device="cpu") as emb:
        a, b = ref.embed(paths), emb.embed(paths)
    sa, sb = a @ a.T, b @ b.T
    np.fill_diagonal(sa, -np.inf)
    np.fill_diagonal(sb, -np.inf)
    top = np.sort(sa, axis=1)[:, ::-1]
    gap, agree = top[:, 0] - top[:, 1], sa.argmax(1) == sb.argmax(1)
    moved = np.abs(sa - sb)[np.isfinite(sa)]
    print(
        f"\n{model.name}: Rank-1 agreement {agree.mean():.3f}; similarity moved by median {np.median(moved):.5f} "
        f"(90th percentile {np.percentile(moved, 90):.5f}); reference top-1 margin median {np.median(gap):.5f}; "
        f"mean cosine between different images {sa[np.isfinite(sa)].mean():.3f}\n"
    )
    print("| reference top-1 margin | share of queries | Rank-1 agreement |\n|---|---|---|")
    for lo, hi in ((0, 0.0005), (0.0005, 0.002), (0.002, 0.005), (0.005, np.inf)):
        m = (gap >= lo) & (gap < hi)
        print(f"| {lo} - {hi} | {m.mean() * 100:.0f}% | {agree[m].mean() if m.any() else float('nan'):.3f} |")


def session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def time_interleaved(sessions: dict[str, ort.InferenceSession], batch: np.ndarray, reps: int) -> dict[str, np.ndarray]:
    """Seconds per run for each session, round-robin over ``reps`` rounds after one warm-up each."""
    times = {k: [] for k in sessions}
    for s in sessions.values():
        s.run(None, {"images": batch})
    for _ in range(reps):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {"images": batch})
            times[k].append(time.perf_counter() - t)
    return {k: np.array(v) for k, v in times.items()}


def fmt(t: np.ndarray, scale: float = 1e3) -> str:
    q1, med, q3 = np.percentile(t * scale, [25, 50, 75])
    return f"{med:.1f} ({q1:.1f}-{q3:.1f})"


INT8_GRAPHS = (
    ("float32 parts, biases as trained (before)", False, False),
    ("float16 parts, biases as trained", True, False),
    ("float32 parts, bias-corrected", False, True),
    ("float16 parts, bias-corrected (now)", True, True),
)


def int8_graph(ckpt: Path, args: argparse.Namespace, calib: Path, out: Path, half: bool, correct: bool):
    """Export one int8 variant (:data:`INT8_GRAPHS`) and verify it; ``(report, export seconds, float16 tensors)``."""
    import functools

    import onnx

    from lcr_sdk.export import precision

    original = precision.to_int8
    # the pipeline imports to_int8 at call time
    precision.to_int8 = functools.partial(original, half=half, correct_bias=correct)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = export_model(
                ckpt,
                out,
                precision="int8",
                calib_dir=calib,
                calib_images=args.calib_images,
                image_size=args.size,
                verify=False,
                progress=False,
                log=None,
            )
    finally:
        precision.to_int8 = original
    seconds = time.perf_counter() - start
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(model))).graph
    halves = sum(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for v in graph.value_info)
    return verify_model(model, ckpt, args.images, max_images=None, progress=False), seconds, halves


def int8_parity(ckpt: Path, args: argparse.Namespace, work: Path) -> None:
    """The int8 graph as exported now (float16 unquantised parts, bias-corrected) beside the earlier one (float32
    parts, biases as trained) and the two steps between: same checkpoint, calibration and images."""
    print(
        "| int8 graph | export, s | float16 tensors | min cosine | median cosine | attention max err "
        "| Rank-1 agreement | passed |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, half, correct in INT8_GRAPHS:
        out = work / f"int8-{'fp16' if half else 'fp32'}{'-bc' if correct else ''}.onnx"
        r, seconds, halves = int8_graph(ckpt, args, args.calib, out, half, correct)
        print(
            f"| {name} | {seconds:.1f} | {halves} | {r['cosine_min']:.5f} | {r['cosine_median']:.5f} | "
            f"{r['attention_max_abs_err']:.3f} | {r['rank1_agreement']:.3f} | "
            f"{'yes' if r['passed'] else 'no'} ({r['images']} images) |"
        )


def calib_draws(ckpt: Path, args: argparse.Namespace, work: Path) -> None:
    """The int8 graph now against before, each calibrated on ``--calib-draws`` seeded random draws of the calibration
    folder (half of it, at most ``--calib-images``): how far each figure moves with the calibration images alone,
    beside how far it moves between the graphs on the same images (paired by draw)."""
    import shutil

    from lcr_sdk.export.data import find_images

    files = find_images(args.calib, "calibration")
    size = min(args.calib_images, len(files) // 2)
    keys = ("cosine_min", "cosine_median", "rank1_agreement")
    graphs = (INT8_GRAPHS[0], INT8_GRAPHS[-1])
    print(f"calibration draws: {args.calib_draws} of {size} images from {len(files)} in {args.calib}\n")
    print("| draw | int8 graph | min cosine | median cosine | Rank-1 agreement |")
    print("|---|---|---|---|---|")
    got = np.zeros((args.calib_draws, len(graphs), len(keys)))
    for d in range(args.calib_draws):
        folder = work / f"calib-draw{d}"
        folder.mkdir()
        for i in sorted(np.random.default_rng(d).choice(len(files), size, replace=False)):
            shutil.copyfile(files[i], folder / f"{i:06d}{files[i].suffix}")
        for g, (name, half, correct) in enumerate(graphs):
            r, _, _ = int8_graph(ckpt, args, folder, work / f"draw{d}-{g}.onnx", half, correct)
            got[d, g] = [r[k] for k in keys]
            print(f"| {d} | {name} | {got[d, g, 0]:.5f} | {got[d, g, 1]:.6f} | {got[d, g, 2]:.3f} |", flush=True)
        shutil.rmtree(folder)
    print("\n| figure | before, mean +/- sd over draws | now, mean +/- sd | now - before, paired | now better |")
    print("|---|---|---|---|---|")
    for k, key in enumerate(keys):
        before, now = got[:, 0, k], got[:, 1, k]
        diff = now - before
        sd = (lambda x: x.std(ddof=1)) if args.calib_draws > 1 else (lambda x: 0.0)
        print(
            f"| {key} | {before.mean():.5f} +/- {sd(before):.5f} | {now.mean():.5f} +/- {sd(now):.5f} | "
            f"{diff.mean():+.5f} +/- {sd(diff):.5f} | {int((diff > 0).sum())} of {len(diff)} draws |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--images", type=Path, help="verification images (e.g. the data set's test split)")
    ap.add_argument("--calib", type=Path, help="int8 calibration images (e.g. the train split)")
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib-images", type=int, default=500)
    ap.add_argument("--skip-gfb-cost", action="store_true", help="skip table 1")
    ap.add_argument("--int8-parity", action="store_true", help="only the comparison of the int8 graphs (before / now)")
    ap.add_argument(
        "--calib-draws",
        type=int,
        default=0,
        help="with --int8-parity: before / now on this many seeded random draws of the calibration folder",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:  # exported graphs and data: ~90 MB
        run(args, Path(tmp))


def run(args: argparse.Namespace, work: Path) -> None:
    ckpt = args.checkpoint
    if ckpt is None:
        from lcr_sdk.train.checkpoint import random_init_checkpoint

        ckpt = random_init_checkpoint(work / "lcr.pt", image_size=args.size, num_parts=32)
    if args.images is None or args.calib is None:
        from lcr_sdk.synth import SynthConfig, generate

        root = generate(
            work / "data",
            SynthConfig(num_classes=8, train_per_class=40, test_per_class=10, image_size=args.size, seed=2),
            progress=False,
        )
        args.images, args.calib = args.images or root / "test", args.calib or root / "train"
    print(
        f"checkpoint: {ckpt} ({'given' if args.checkpoint else 'random-init resnet18'}), {args.size} px, "
        f"ORT {ort.__version__} CPU, {args.threads} threads, {args.reps} interleaved rounds\n"
    )
    if args.int8_parity:
        (calib_draws if args.calib_draws else int8_parity)(ckpt, args, work)
        return

    models = {}
    for p in ("fp32", "fp16", "int8"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            models[p] = export_model(
                ckpt,
                work / f"lcr-{p}.onnx",
                precision=p,
                calib_dir=args.calib,
                calib_images=args.calib_images,
                image_size=args.size,
                verify=False,
                progress=False,
                log=None,
            )
    rng = np.random.default_rng(0)
    if not args.skip_gfb_cost:
        plain = export_plain(ckpt, args.size, work / "plain.onnx")
        print("| batch | plain backbone + avg pool, ms | LCR graph (GFB + mask + weighted pool), ms | cost |")
        print("|---|---|---|---|")
        sess = {"plain": session(plain, args.threads), "lcr": session(models["fp32"], args.threads)}
        for n in (1, 8, 32):
            batch = rng.integers(0, 256, (n, args.size, args.size, 3), dtype=np.uint8)
            t = time_interleaved(sess, batch, args.reps if n < 32 else max(5, args.reps // 3))
            ratio = np.median(t["lcr"]) / np.median(t["plain"]) - 1
            print(f"| {n} | {fmt(t['plain'])} | {fmt(t['lcr'])} | {ratio * 100:+.1f}% |")

    reference = export_reference(ckpt, args.size, work / "reference.onnx")
    print(
        "\n| batch | reference preprocessing (uint8 Transpose/Slice, Cast, Mul, Add), ms | exported (Cast, Transpose, "
        "Add; flip and 1/std in conv1), ms | after / before | max abs embedding difference |"
    )
    print("|---|---|---|---|---|")
    sess = {"before": session(reference, args.threads), "after": session(models["fp32"], args.threads)}
    for n in (1, 8, 32):
        batch = rng.integers(0, 256, (n, args.size, args.size, 3), dtype=np.uint8)
        t = time_interleaved(sess, batch, args.reps if n < 32 else max(5, args.reps // 3))
        diff = np.abs(sess["before"].run(None, {"images": batch})[0] - sess["after"].run(None, {"images": batch})[0])
        ratio = np.median(t["after"]) / np.median(t["before"])
        print(f"| {n} | {fmt(t['before'])} | {fmt(t['after'])} | {ratio:.3f} | {diff.max():.1e} |")

    print(
        "\n| precision | batch 1 latency, ms | batch 32, images/s | min cosine | median cosine | "
        "attention max err | Rank-1 agreement | passed |"
    )
    print("|---|---|---|---|---|---|---|---|")
    sess = {p: session(m, args.threads) for p, m in models.items()}
    b1 = time_interleaved(sess, rng.integers(0, 256, (1, args.size, args.size, 3), dtype=np.uint8), args.reps)
    b32 = time_interleaved(
        sess, rng.integers(0, 256, (32, args.size, args.size, 3), dtype=np.uint8), max(5, args.reps // 3)
    )
    for p, m in models.items():
        r = verify_model(m, ckpt, args.images, max_images=None, progress=False)
        print(
            f"| {p} | {fmt(b1[p])} | {32 / np.median(b32[p]):.0f} | {r['cosine_min']:.5f} | "
            f"{r['cosine_median']:.5f} | {r['attention_max_abs_err']:.3f} | {r['rank1_agreement']:.3f} | "
            f"{'yes' if r['passed'] else 'no'} ({r['images']} images) |"
        )
    margin_split(ckpt, models["int8"], args.images)


if __name__ == "__main__":
    main()
