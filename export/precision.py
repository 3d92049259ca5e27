"""fp32 ONNX -> fp16 or int8 (QDQ) ONNX (docs/DESIGN.md section 3: the precision lives in the graph).

fp16: the convolutional trunk and the GFB convolution (Conv, Relu, MaxPool, Add) run in float16; the input
preprocessing, the min-max mask, the mask-weighted pooling and the L2 norm stay float32, and so do the graph's
inputs and outputs. Written here in a few lines rather than with ``onnxruntime.transformers.float16``, which
(ORT 1.32) round-trips blocked nodes' outputs through float16 and so loses the float32 pooling it was asked to keep.

int8: ``onnxruntime.quantization.quantize_static`` in QDQ format (what TensorRT reads), per-channel symmetric
int8 weights, symmetric int8 activations, only Conv inputs quantised: the uint8 ``images`` input, the
preprocessing, the mask and the pooling stay float. Calibration uses real images read like inference reads them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from lcr_sdk.errors import InputError, require
from lcr_sdk.manifest import Manifest

FP16_OPS = {"Conv", "Relu", "MaxPool", "Add"}
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
RECOMMENDED_CALIB_IMAGES = 300


def to_fp16(proto):
    """Return a copy of an fp32 ONNX model with the convolutional trunk in float16 and everything else float32."""
    onnx = require("onnx", "export", "converting to fp16")
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.shape_inference.infer_shapes(proto)
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    inits = {t.name: t for t in graph.initializer}
    types.update({name: t.data_type for name, t in inits.items()})

    def is_half(node) -> bool:
        return node.op_type in FP16_OPS and all(types.get(x) == TensorProto.FLOAT for x in node.input if x)

    # A graph output made by a float16 node gets a float32 Cast at the end under its own name.
    half_outputs = {o for n in graph.node if is_half(n) for o in n.output} & {o.name for o in graph.output}
    renamed = {name: f"{name}/fp16" for name in half_outputs}
    nodes, half, casts = [], set(), {}

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            casts[key] = f"{name}/to_{'fp16' if to == TensorProto.FLOAT16 else 'fp32'}"
            nodes.append(helper.make_node("Cast", [name], [casts[key]], to=to, name=casts[key]))
        return casts[key]

    for node in graph.node:
        want_half = is_half(node)
        for i, x in enumerate(node.input):
            x = renamed.get(x, x)
            node.input[i] = x
            if not x:
                continue
            if x in inits:
                if want_half and inits[x].data_type == TensorProto.FLOAT:
                    node.input[i] = _half_initializer(graph, inits, x, numpy_helper)
            elif want_half and x not in half:
                node.input[i] = cast(x, TensorProto.FLOAT16)
            elif not want_half and x in half:
                node.input[i] = cast(x, TensorProto.FLOAT)
        for i, o in enumerate(node.output):
            node.output[i] = renamed.get(o, o)
            if want_half:
                half.add(node.output[i])
        nodes.append(node)
    for name, tmp in renamed.items():
        nodes.append(helper.make_node("Cast", [tmp], [name], to=TensorProto.FLOAT, name=f"{name}/to_fp32"))
    graph.ClearField("node")
    graph.node.extend(nodes)
    used = {x for n in nodes for x in n.input}
    kept = [t for t in graph.initializer if t.name in used]  # fp32 originals of converted weights go
    graph.ClearField("initializer")
    graph.initializer.extend(kept)
    graph.ClearField("value_info")  # types changed; consumers re-infer
    return model


def _half_initializer(graph, inits: dict, name: str, numpy_helper) -> str:
    """Name of a float16 copy of initializer ``name`` (created once)."""
    half_name = f"{name}/fp16"
    if half_name not in inits:
        arr = numpy_helper.to_array(inits[name]).astype(np.float16)
        inits[half_name] = numpy_helper.from_array(arr, half_name)
        graph.initializer.append(inits[half_name])
    return half_name


def to_int8(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    images: np.ndarray,
    manifest: Manifest,
    method: str = "percentile",
    batch_size: int = 8,
) -> int:
    """Statically quantise an fp32 ONNX file to a QDQ int8 file using calibration ``images``.

    Args:
        fp32_path: the fp32 graph.
        out_path: where to write the int8 graph.
        images: uint8 N x H x W x 3 BGR calibration images, already resized like inference resizes them.
        manifest: the model's manifest (input name).
        method: ``minmax``, ``percentile`` or ``entropy``.
        batch_size: images per calibration batch.

    Returns:
        The number of images calibrated on (whole batches only; see ``Reader``).
    """
    require("onnxruntime.quantization", "export", "int8 quantisation")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from tqdm import tqdm

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if method not in methods:
        raise InputError(f"calibration method {method!r} is not one of {CALIBRATION_METHODS}")
    if len(images) < RECOMMENDED_CALIB_IMAGES:
        warnings.warn(
            f"int8 calibration on only {len(images)} images; at least {RECOMMENDED_CALIB_IMAGES} real "
            "images like those the model will see are recommended for stable ranges",
            stacklevel=2,
        )

    class Reader(CalibrationDataReader):
        def __init__(self):
            # Equal-sized batches only: ORT's histogram collectors (percentile, entropy) stack the per-batch
            # outputs and fail on a smaller last batch, so the remainder (< batch_size images) is left out.
            n = max(1, len(images) // batch_size)
            size = batch_size if len(images) >= batch_size else len(images)
            self.it = iter(
                tqdm(
                    [images[i * size : (i + 1) * size] for i in range(n)],
                    desc=f"int8 calibration ({method})",
                    unit="batch",
                    total=n,
                    leave=False,
                )
            )

        def get_next(self):
            batch = next(self.it, None)
            return None if batch is None else {manifest.input.name: batch}

    prepared = Path(out_path).with_name(Path(out_path).name + ".pre.onnx")
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # onnxruntime.quantization logs advice on the root logger
    try:
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print their steps
            quantize_static(
                str(prepared),
                str(out_path),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["Conv"],
                calibrate_method=methods[method],
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
            )
    finally:
        quiet.setLevel(level)
        prepared.unlink(missing_ok=True)
    return min(len(images), max(batch_size, len(images) // batch_size * batch_size))
