"""The nvinfer configuration that runs an LCR model as a DeepStream secondary inference (docs/DEEPSTREAM.md).

The common Jetson pipeline is a detector (primary nvinfer) followed by a secondary nvinfer on each detected object;
with ``network-type=100`` and ``output-tensor-meta=1`` the secondary attaches its raw output tensors (embedding,
attention, parts) to each object's metadata, for the application to read.

nvinfer does the preprocessing itself: it scales each object box to the network's input (the whole box, or a
letterbox with ``maintain-aspect-ratio`` and ``symmetric-padding``; it has no centre crop), converts it to planar
float in the network's colour order and computes ``y = net-scale-factor * (x - offsets)``. So the model it runs is
the float, planar (NCHW) RGB variant of the export, whose manifest input is ``NCHW`` / ``RGB`` / ``float32`` with a
resize rule nvinfer can do (``stretch`` or ``letterbox``), and whose graph has ``1 / (255 * std)`` folded into its
first convolution: the offsets are the manifest's mean x 255 and net-scale-factor is 1. The fold is exact because
nvinfer subtracts the offsets before the network, so the convolution's own zero padding sees zeros either way. A
letterbox pads with 0 in pixels (black), which the offsets turn into -mean x 255, as the runtime's letterbox does.

Pure: this module writes text from a manifest; it needs neither DeepStream, TensorRT nor torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from lcr_sdk.backends.base import ENGINE_SUFFIXES
from lcr_sdk.errors import InputError
from lcr_sdk.manifest import Manifest

# nvinfer's enumerations (Gst-nvinfer configuration file properties)
NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}
COLOR_FORMAT = {"RGB": 0, "BGR": 1}
PROCESS_MODE_SECONDARY = 2
NETWORK_TYPE_OTHER = 100  # no parser: raw output tensors as metadata
SCALING_FILTER = {"nearest": 0, "linear": 1, "cubic": 2}  # NvBufSurfTransform_Inter: Nearest, Bilinear, Algo1
RESIZE_RULES = {"stretch": (0, 0), "letterbox": (1, 1)}  # rule -> maintain-aspect-ratio, symmetric-padding


def check_input(manifest: Manifest) -> None:
    """The model's input must be what nvinfer feeds: float planar (NCHW) RGB/BGR, resized by stretch or letterbox.

    Raises:
        InputError: naming what the model takes and what nvinfer needs.
    """
    spec = manifest.input
    problems = []
    if (spec.layout, spec.dtype) != ("NCHW", "float32") or spec.color not in COLOR_FORMAT:
        problems.append(
            f"it takes {spec.dtype} {spec.layout} {spec.color}, nvinfer feeds float32 planar (NCHW) RGB or BGR"
        )
    if spec.resize not in RESIZE_RULES:
        problems.append(
            f"its resize rule is {spec.resize}, nvinfer scales the whole object box: stretch, or letterbox "
            "(maintain-aspect-ratio with symmetric padding); it has no centre crop"
        )
    if spec.interpolation not in SCALING_FILTER:
        problems.append(f"its interpolation {spec.interpolation} is not one nvinfer has ({', '.join(SCALING_FILTER)})")
    if problems:
        raise InputError(
            f"this model cannot run in DeepStream's nvinfer as exported: {'; '.join(problems)}. Export the "
            "DeepStream variant (float planar input, stretch or letterbox); see docs/DEEPSTREAM.md"
        )


def nvinfer_config(
    manifest: Manifest,
    onnx_file: str | os.PathLike[str],
    engine_file: str | os.PathLike[str] | None = None,
    gie_id: int = 2,
    operate_on_gie_id: int = 1,
    operate_on_class_ids: list[int] | None = None,
    min_object_side: int = 32,
) -> str:
    """The text of an nvinfer configuration file (``[property]`` group, key=value) for a secondary inference.

    Args:
        manifest: the model's manifest (the DeepStream variant: see :func:`check_input`).
        onnx_file: the ONNX, as the config should name it (relative paths are relative to the config file).
        engine_file: a TensorRT engine built from it (``lcr-sdk export model.onnx --trt``); nvinfer builds one from
            the ONNX where this is missing or was built for another TensorRT or GPU.
        gie_id: this inference's ``gie-unique-id``.
        operate_on_gie_id: the detector's ``gie-unique-id`` (the primary inference whose objects are embedded).
        operate_on_class_ids: the detector classes to embed (default: all).
        min_object_side: smaller object boxes are skipped (pixels, both sides).

    Raises:
        InputError: a model nvinfer cannot feed, or a bad id, class list or size.
    """
    check_input(manifest)
    if engine_file is not None and Path(engine_file).suffix.lower() not in ENGINE_SUFFIXES:
        raise InputError(f"engine {engine_file} must end in {' or '.join(ENGINE_SUFFIXES)}")
    if gie_id < 1 or operate_on_gie_id < 1 or gie_id == operate_on_gie_id:
        raise InputError(
            f"gie-unique-id {gie_id} and operate-on-gie-id {operate_on_gie_id} must be >= 1 and differ (the "
            "detector's id, usually 1, and this inference's)"
        )
    if operate_on_class_ids is not None and (not operate_on_class_ids or min(operate_on_class_ids) < 0):
        raise InputError(f"operate-on-class-ids {operate_on_class_ids} must be class ids >= 0 (or none: all classes)")
    if min_object_side < 1:
        raise InputError(f"the smallest object side {min_object_side} must be >= 1 pixel")
    spec = manifest.input
    channel = {"R": 0, "G": 1, "B": 2}
    mean = [spec.mean[channel[c]] for c in spec.color]  # manifest mean is RGB; offsets follow the colour order
    aspect, symmetric = RESIZE_RULES[spec.resize]
    lines = [
        f"# lcr-sdk {manifest.arch} {manifest.method}, {manifest.precision}: secondary inference on each object of "
        f"gie {operate_on_gie_id}; its outputs ({', '.join(manifest.output_names)}) are attached as tensor metadata",
        "[property]",
        f"gie-unique-id={gie_id}",
        f"process-mode={PROCESS_MODE_SECONDARY}",
        f"operate-on-gie-id={operate_on_gie_id}",
    ]
    if operate_on_class_ids is not None:
        lines.append(f"operate-on-class-ids={';'.join(str(c) for c in operate_on_class_ids)}")
    lines += [
        f"network-type={NETWORK_TYPE_OTHER}",
        "output-tensor-meta=1",
        f"onnx-file={onnx_file}",
    ]
    if engine_file is not None:
        lines.append(f"model-engine-file={engine_file}")
    lines += [
        f"network-mode={NETWORK_MODE[manifest.precision]}",
        f"batch-size={manifest.batch_max}",
        f"infer-dims=3;{spec.height};{spec.width}",
        "network-input-order=0",
        f"model-color-format={COLOR_FORMAT[spec.color]}",
        "net-scale-factor=1.0",
        f"offsets={';'.join(f'{255 * m:.4f}' for m in mean)}",
        f"maintain-aspect-ratio={aspect}",
        f"symmetric-padding={symmetric}",
        f"scaling-filter={SCALING_FILTER[spec.interpolation]}",
        f"output-blob-names={';'.join(manifest.output_names)}",
        f"input-object-min-width={min_object_side}",
        f"input-object-min-height={min_object_side}",
    ]
    return "\n".join(lines) + "\n"
