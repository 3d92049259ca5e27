#!/usr/bin/env python3
"""Embed images through a running Triton Inference Server (no torch, no model file on the client).

    lcr-sdk export lcr-fp16.onnx --triton models/              # or an engine: lcr-sdk export lcr-fp16.engine --triton
    docker run --gpus all --rm -p8001:8001 -v $PWD/models:/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \
        tritonserver --model-repository=/models
    python examples/triton_client.py models/lcr-fp16 bird.jpg wren.jpg --url localhost:8001

The client brings each image to the model's input exactly as the runtime does (the manifest's resize rule and
size, read from ``lcr-sdk.json`` in the model's repository folder); the server runs the rest (cast, colour order,
normalisation, backbone, attention, pooling) inside the graph. It prints each image's embedding (D values, unit
length) summary, the cosine similarity of every pair, and where the attention peaks; ``--out FILE.npy`` saves the
embeddings. Needs the runtime core with OpenCV (``pip install 'lcr-sdk[cpu]'``) and ``pip install
'tritonclient[grpc]'``. Documented, not run by the tests (no Triton server there).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from lcr_sdk import LcrError
from lcr_sdk.errors import InputError, MissingDependencyError, ModelError
from lcr_sdk.images import read_image, resize_for
from lcr_sdk.manifest import Manifest

MANIFEST_FILE = "lcr-sdk.json"  # written by `lcr-sdk export ... --triton` (lcr_sdk.export.triton)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path, help="the model's folder in the repository, e.g. models/lcr-fp16")
    p.add_argument("images", type=Path, nargs="+", help="image files")
    p.add_argument("--url", default="localhost:8001", help="the server's gRPC address (default localhost:8001)")
    p.add_argument("--model", help="model name on the server (default: the folder's name)")
    p.add_argument("--out", type=Path, help="save the embeddings (N x D float32) to this .npy file")
    return p.parse_args(argv)


def load_manifest(model_dir: Path) -> Manifest:
    path = model_dir / MANIFEST_FILE
    if not path.is_file():
        raise ModelError(f"{path} does not exist: pass the model's folder written by `lcr-sdk export ... --triton`")
    return Manifest.from_json(path.read_text(encoding="utf-8"), source=str(path))


def prepare(paths: list[Path], m: Manifest) -> np.ndarray:
    """uint8 N x H x W x 3 BGR, resized by the manifest's rule: what the graph's input takes."""
    spec = m.input
    frames = [resize_for(read_image(p), spec) for p in paths]
    return np.ascontiguousarray(np.stack(frames))


def infer(url: str, model: str, batch: np.ndarray, m: Manifest) -> dict[str, np.ndarray]:
    """One request with the whole batch (at most the manifest's largest batch); outputs by name."""
    try:
        import tritonclient.grpc as grpcclient
    except ImportError as e:
        raise MissingDependencyError(f"Triton's client is not installed ({e}); pip install 'tritonclient[grpc]'") from e
    from tritonclient.utils import InferenceServerException

    try:
        client = grpcclient.InferenceServerClient(url=url)
        if not client.is_model_ready(model):
            raise InputError(f"model {model!r} is not ready on {url}; see the server's log and --model-repository")
        inp = grpcclient.InferInput(m.input.name, list(batch.shape), "UINT8")
        inp.set_data_from_numpy(batch)
        outputs = [grpcclient.InferRequestedOutput(n) for n in m.output_names]
        result = client.infer(model, [inp], outputs=outputs)
    except InferenceServerException as e:  # server unreachable, model missing, shape refused
        raise InputError(f"Triton server {url}, model {model!r}: {e}") from e
    return {n: result.as_numpy(n) for n in m.output_names}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        m = load_manifest(args.model_dir)
        if len(args.images) > m.batch_max:
            raise InputError(f"{len(args.images)} images: send at most {m.batch_max} (the model's largest batch)")
        out = infer(args.url, args.model or args.model_dir.name, prepare(args.images, m), m)
    except LcrError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    emb, att = out["embedding"], out["attention"]
    for path, e, a in zip(args.images, emb, att, strict=True):
        y, x = np.unravel_index(int(np.argmax(a)), a.shape)
        print(f"{path}: embedding D={e.size}, norm {np.linalg.norm(e):.3f}; attention peaks at cell ({y}, {x})")
    for i in range(len(emb)):
        for j in range(i + 1, len(emb)):
            print(f"cosine {args.images[i].name} ~ {args.images[j].name}: {float(emb[i] @ emb[j]):.3f}")
    if args.out is not None:
        np.save(args.out, emb.astype(np.float32))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
