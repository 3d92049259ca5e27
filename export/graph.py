"""Checkpoint -> one fp32 ONNX graph of :class:`lcr_sdk.train.model.DeployModel` (docs/DESIGN.md section 2).

Exporter: ``torch.onnx.export(..., dynamo=False)``, the TorchScript exporter, at opset 17. In eval mode it folds
every BatchNorm into the preceding convolution and folds constants; ``dynamic_axes`` gives a dynamic batch with a
fixed H x W. Opset 17 is read by TensorRT 10 and 11 and supports per-channel QDQ (opset >= 13) for int8.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter

from lcr_sdk.errors import ModelError, require
from lcr_sdk.manifest import ONNX_METADATA_KEY, Manifest

OPSET = 17
TRAINING_ONLY_OPS = {"BatchNormalization", "Dropout"}


def export_onnx(net, manifest: Manifest, path: str | os.PathLike) -> None:
    """Trace ``DeployModel(net)`` to an fp32 ONNX file at ``path`` and check it.

    Args:
        net: the :class:`LCRNet` of a checkpoint, in eval mode.
        manifest: gives input size, output names and the opset; it is embedded into ``metadata_props``.
        path: where to write (a temporary name; the caller renames it into place).
    """
    torch = require("torch", "export", "exporting to ONNX")
    onnx = require("onnx", "export", "exporting to ONNX")
    from lcr_sdk.train.model import DeployModel

    model = DeployModel(net).eval()
    dummy = torch.zeros(max(2, manifest.batch_opt), manifest.input.height, manifest.input.width, 3, dtype=torch.uint8)
    names = manifest.output_names
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo and says so; that choice is deliberate.
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            do_constant_folding=True,
            training=torch.onnx.TrainingMode.EVAL,
            input_names=[manifest.input.name],
            output_names=names,
            dynamic_axes={n: {0: "N"} for n in [manifest.input.name, *names]},
        )
    proto = onnx.load(str(path))
    _fix_output_shapes(proto, manifest)
    embed_manifest(proto, manifest)
    check(proto)
    onnx.save(proto, str(path))


def _fix_output_shapes(proto, manifest: Manifest) -> None:
    """Write the static output dims (the tracer names D symbolically) so consumers see e.g. [N, 512]."""
    shapes = manifest.output_shapes
    for out in proto.graph.output:
        for dim, value in zip(out.type.tensor_type.shape.dim, shapes[out.name], strict=True):
            if value != "N":
                dim.Clear()
                dim.dim_value = value


def embed_manifest(proto, manifest: Manifest) -> None:
    """Put the manifest into ``metadata_props`` (model hash empty: a file cannot hold its own hash)."""
    from dataclasses import replace

    text = replace(manifest, model_sha256="").to_json()
    for prop in proto.metadata_props:
        if prop.key == ONNX_METADATA_KEY:
            prop.value = text
            return
    proto.metadata_props.add(key=ONNX_METADATA_KEY, value=text)


def check(proto) -> None:
    """``onnx.checker`` (full, with shape inference) and no training-only node left; raise ModelError otherwise."""
    onnx = require("onnx", "export", "checking an ONNX graph")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ModelError(f"the exported ONNX graph fails onnx.checker: {str(e).splitlines()[0]}") from e
    left = TRAINING_ONLY_OPS & set(op_counts(proto))
    if left:
        raise ModelError(f"the exported graph still holds training-only nodes {sorted(left)}; export in eval mode")


def op_counts(proto) -> Counter:
    """Node count per op type."""
    return Counter(n.op_type for n in proto.graph.node)
