"""Helpers for the demo tests: export a checkpoint to ONNX, make 640 x 480 frames and clips with OpenCV."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

FRAME_SIZE = (640, 480)  # width, height of the demo clips


def export_onnx(checkpoint: Path, out: Path) -> Path:
    """Export a checkpoint to ONNX + manifest: developer A's export_model when present, else a plain
    torch.onnx.export of DeployModel (the documented graph contract) with the manifest sidecar."""
    try:
        from lcr_sdk.export import export_model
    except ImportError:
        export_model = None
    if export_model is not None:
        return Path(export_model(checkpoint, out, verify=False))
    import torch

    from lcr_sdk.manifest import InputSpec, Manifest, write_sidecar
    from lcr_sdk.train.checkpoint import load_net
    from lcr_sdk.train.model import DeployModel, feature_size

    net, ckpt = load_net(checkpoint)
    cfg, size = ckpt["config"], ckpt["config"]["image_size"]
    names = ["embedding", "attention", "parts"] if net.num_parts else ["embedding", "attention"]
    dummy = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    torch.onnx.export(
        DeployModel(net),
        (dummy,),
        str(out),
        input_names=["images"],
        output_names=names,
        dynamic_axes={n: {0: "N"} for n in ["images", *names]},
        opset_version=17,
        dynamo=False,
    )
    write_sidecar(
        Manifest(
            cfg["arch"],
            cfg["method"],
            net.dim,
            net.num_parts,
            feature_size(cfg["arch"], size, size),
            InputSpec(size, size),
            model_file=out.name,
        ),
        out,
    )
    return out


def to_frame(image: np.ndarray) -> np.ndarray:
    """A small data-set image as a 640 x 480 video frame."""
    return cv2.resize(image, FRAME_SIZE, interpolation=cv2.INTER_LINEAR)


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10) -> Path:
    """Write frames with OpenCV (.mkv: lossless FFV1, .mp4: mp4v)."""
    fourcc = "FFV1" if path.suffix == ".mkv" else "mp4v"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, FRAME_SIZE)
    assert w.isOpened(), f"OpenCV cannot write {path}"
    for f in frames:
        w.write(f)
    w.release()
    return path
