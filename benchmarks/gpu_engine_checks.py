"""TensorRT engine checks for a GPU machine (benchmarks/gpu_checks.sh engine): optimisation profiles, the batch-1
CUDA-graph path, and the int8-on-fp16 engine's layers.

1. Export fp16 and int8 ONNX with two profiles (``--batch 1,1,1 --batch 2,8,32``) from a checkpoint (random-init
   ResNet-18 at 112 px when none is given; speed does not depend on the weights).
2. Build each engine here (torch-free route), and run it through the TensorRT backend: batch 1, 8, 1 (profile
   switches) against ONNX Runtime on the same images; batch 1 with and without ``cuda_graph``, outputs compared
   and timed (median of interleaved rounds).
3. With ``trtexec`` on the PATH, the int8 engine's layer information (``--exportLayerInfo``, detailed profiling
   verbosity): which layers run in int8, which in fp16, and whether the Casts around each Q/DQ became separate
   layers.

Without TensorRT the script exports, says what it could not run and exits 0 (the CPU try of the same path).

    python benchmarks/gpu_engine_checks.py --out OUT [--checkpoint CKPT] [--size 112] [--rounds 200]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from lcr_sdk.export import export_model
    from lcr_sdk.synth import SynthConfig, generate

    ckpt = args.checkpoint
    if ckpt is None:
        from lcr_sdk.train.checkpoint import random_init_checkpoint

        ckpt = random_init_checkpoint(args.out / "lcr.pt", image_size=args.size, num_parts=32)
    data = generate(
        args.out / "data",
        SynthConfig(num_classes=4, train_per_class=16, test_per_class=4, image_size=args.size, seed=3),
        progress=False,
    )
    profiles = [(1, 1, 1), (2, 8, 32)]
    onnx_models = {}
    for precision in ("fp16", "int8"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # few calibration images: timing and layers only
            onnx_models[precision] = export_model(
                ckpt,
                args.out / f"lcr-{precision}.onnx",
                precision=precision,
                calib_dir=data / "train",
                batch=profiles,
                image_size=args.size,
                verify=False,
                progress=False,
                log=None,
            )
    report: dict = {"checkpoint": str(ckpt), "size": args.size, "profiles": profiles}
    try:
        import tensorrt  # noqa: F401
    except ImportError as e:
        report["tensorrt"] = f"not importable ({e}): exported only"
        print(json.dumps(report, indent=2))
        (args.out / "engine_checks.json").write_text(json.dumps(report, indent=2))
        return

    import onnxruntime as ort

    from lcr_sdk.backends.tensorrt import TensorRTBackend
    from lcr_sdk.export.data import load_images
    from lcr_sdk.export.trt import build_engine_from_onnx
    from lcr_sdk.manifest import read_manifest

    images = sorted((data / "test").rglob("*.png"))
    for precision, onnx_path in onnx_models.items():
        engine = build_engine_from_onnx(onnx_path, args.out / f"lcr-{precision}.engine", progress=False)
        manifest = read_manifest(engine)
        batch, _ = load_images(images[:8], manifest, "check")
        reference = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        entry: dict = {"engine_profiles": manifest.profiles}
        for graph in (False, True):
            with TensorRTBackend(engine, manifest, device="cuda", cuda_graph=graph) as backend:
                cos = []
                for n in (1, 8, 1):  # profile 0, switch to 1, back to 0
                    got = backend.infer(batch[:n])["embedding"]
                    want = reference.run(["embedding"], {"images": batch[:n]})[0]
                    cos.append(float(np.min(np.sum(got * want, axis=1))))
                one = np.ascontiguousarray(batch[:1])
                times = []
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    backend.infer(one)
                    times.append(time.perf_counter() - t)
                key = "cuda_graph" if graph else "enqueue"
                entry[key] = {
                    "min_cosine_vs_onnxruntime_b1_b8_b1": cos,
                    "batch1_ms_median": 1e3 * float(np.median(times)),
                    "batch1_ms_p90": 1e3 * float(np.percentile(times, 90)),
                }
        report[precision] = entry
    trtexec = shutil.which("trtexec")
    if trtexec:
        h = w = args.size
        shapes = [f"--{k}Shapes=images:{n}x{h}x{w}x3" for k, n in (("min", 1), ("opt", 1), ("max", 1))]
        layers = args.out / "int8_layers.json"
        cmd = [trtexec, f"--onnx={onnx_models['int8']}", "--stronglyTyped", "--profilingVerbosity=detailed",
               f"--exportLayerInfo={layers}", "--skipInference", *shapes]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True)
        report["int8_layer_info"] = str(layers) if r.returncode == 0 else f"trtexec failed: {r.stdout[-2000:]}"
    else:
        report["int8_layer_info"] = "trtexec not on PATH"
    print(json.dumps(report, indent=2))
    (args.out / "engine_checks.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
