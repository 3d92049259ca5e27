"""Test helper (not a test module): export a fixture checkpoint to ONNX with its manifest, once per session.

Written before developer A's ``lcr_sdk.export.export_model`` existed; it uses only the shared contracts:
``torch.onnx.export`` of ``DeployModel(load_net(ckpt)[0])`` and ``write_sidecar`` of a manifest built from the
checkpoint config (the same builder the PyTorch backend uses).
"""

from __future__ import annotations

import warnings
from pathlib import Path

_CACHE: dict[tuple, Path] = {}


def export_onnx(ckpt: Path, out: Path, batch: tuple[int, int, int] = (1, 4, 8), sidecar: bool = True) -> Path:
    """Export ``ckpt`` to ``out`` (uint8 NHWC BGR input, dynamic batch) and write ``out.json``; cached by args."""
    key = (str(ckpt), batch, sidecar)
    if key in _CACHE:
        return _CACHE[key]
    import torch
    from lcr_sdk.train.checkpoint import load_net
    from lcr_sdk.train.model import DeployModel

    from lcr_sdk.backends.torch import manifest_from_checkpoint
    from lcr_sdk.fileio import sha256_file
    from lcr_sdk.manifest import write_sidecar

    net, ck = load_net(ckpt)
    manifest = manifest_from_checkpoint(ckpt, ck, batch=batch)
    model = DeployModel(net).eval()
    s = manifest.input
    dummy = torch.zeros(2, s.height, s.width, 3, dtype=torch.uint8)
    names = manifest.output_names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), str(out), dynamo=False, opset_version=17, input_names=[s.name],
                          output_names=names, dynamic_axes={n: {0: "N"} for n in [s.name, *names]})
    manifest.model_sha256 = sha256_file(out)
    manifest.model_file = out.name
    manifest.extra = {"source": "tests/runtime/rt_models.py"}
    if sidecar:
        write_sidecar(manifest, out)
    _CACHE[key] = out
    return out


def synth_images(root: Path, split: str = "test") -> tuple[list[Path], list[str]]:
    """Image paths and class labels of an ImageFolder split, in sorted order."""
    paths = sorted((root / split).glob("*/*.png"))
    return paths, [p.parent.name for p in paths]
