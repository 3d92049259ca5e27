"""Test helpers (not a test module), importable from every test folder: export a fixture checkpoint to ONNX once
per session through the real export pipeline (manifest in the sidecar and in the ONNX metadata_props, no
verification step), and small ONNX/data utilities.
"""

from __future__ import annotations

from pathlib import Path

_CACHE: dict[tuple, Path] = {}


def export_onnx(ckpt: Path, out: Path, batch: tuple[int, int, int] = (1, 4, 8)) -> Path:
    """Export ``ckpt`` to ``out`` (uint8 NHWC BGR input, dynamic batch) and write ``out.json``; cached by args while
    the cached file exists (a passed test's tmp_path is removed when it ends, and a cached model with it)."""
    key = (str(ckpt), batch)
    if key not in _CACHE or not _CACHE[key].is_file():
        from lcr_sdk.export import export_model

        _CACHE[key] = export_model(ckpt, out, batch=batch, verify=False, progress=False, log=None)
    return _CACHE[key]


def strip_metadata(model: Path, out: Path) -> Path:
    """A copy of an ONNX model without its metadata_props (so without an embedded manifest)."""
    import onnx

    proto = onnx.load(str(model))
    del proto.metadata_props[:]
    onnx.save(proto, str(out))
    return out


def synth_images(root: Path, split: str = "test") -> tuple[list[Path], list[str]]:
    """Image paths and class labels of an ImageFolder split, in sorted order."""
    paths = sorted((root / split).glob("*/*.png"))
    return paths, [p.parent.name for p in paths]
