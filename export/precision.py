"""fp32 ONNX -> fp16 or int8 (QDQ) ONNX (docs/DESIGN.md section 3: the precision lives in the graph).

fp16: the convolutional trunk and the GFB convolution (Conv, Relu, MaxPool, Add) run in float16; the input
preprocessing, the min-max mask, the mask-weighted pooling and the L2 norm stay float32, and so do the graph's
inputs and outputs. Written here in a few lines rather than with ``onnxruntime.transformers.float16``, which
(ORT 1.32) round-trips blocked nodes' outputs through float16 and so loses the float32 pooling it was asked to keep.

int8: explicit Q/DQ placed the way TensorRT fuses it (NVIDIA's placement guidance: quantise the inputs of weighted
layers and the residual Add's shortcut input, never the outputs of weighted layers). The rules read the graph, not
the arch's layer names, so they hold for a ResNet and an EfficientNet-Lite (depthwise convs, ReLU6 as Clip, the
residual Add after a linear projection conv) alike:

- every backbone Conv gets its activation input quantised (per-tensor, symmetric, zero point 0) and its weights
  stored as per-channel symmetric INT8 initializers with a DequantizeLinear (axis 0);
- each residual Add gets its shortcut operand (input 1: the block input or the downsample Conv's output)
  quantised, so TensorRT can fuse ``Conv + Add + ReLU`` into one int8 kernel;
- biases stay float (float16, like their Conv): TensorRT's ONNX parser rejects an INT32 DequantizeLinear, so
  onnxruntime's default bias quantisation is not used;
- each quantised Conv's bias absorbs the mean error its int8 weights add to its output on the calibration images
  (bias correction, :func:`weight_error_means`): rounding a layer's weights shifts its output channels' means, and
  those shifts add up through a deep network. Only bias values change (no node, no weight), so TensorRT builds the
  same engine. Measured in docs/EXPORT.md: on five trained EfficientNet-Lite0 checkpoints it raised the minimum
  embedding cosine by 0.12 on average (and Rank-1 agreement by 0.12); on five ResNet-18 ones it moved the minimum
  cosine by -0.0007 +/- 0.0015, about as much as calibrating on other images moves it;
- the 3-channel stem conv stays float (a 3-channel INT8 convolution is the case TensorRT reports "no
  implementation" for, and it is a small share of the work), and so does the GFB conv: its part maps are a model
  output and drive the mask;
- a depthwise conv that reads the stem's activation directly (EfficientNet-Lite's first block) stays float too:
  the stem's 32 channels span ranges orders of magnitude apart, and one per-tensor scale on them cost the most of
  any layer (ImageNet Lite0 at 64 px, 24 calibration images: minimum embedding cosine 0.935 with it in int8,
  0.984 without; no other single layer moved it above 0.941);
- preprocessing, mask, pooling and L2 norm stay float32;
- everything else unquantised runs in float16, as in the fp16 graph (the stem conv at full resolution, the
  max-pool, the GFB conv, the ReLUs, the residual Adds' outputs): :func:`to_fp16` runs over the Q/DQ graph. Opset
  17's QuantizeLinear reads float32 only and its DequantizeLinear writes float32 only, so each Q/DQ pair sits
  between Casts (float16 -> float32 -> Q -> DQ -> float16) and each weight DequantizeLinear is followed by a Cast
  to float16; the scales stay float32 (docs/EXPORT.md says why not opset 19).

Ranges come from onnxruntime's calibrators (minmax, percentile, entropy; symmetric) run one batch at a time on real
images read like inference reads them; the Q/DQ nodes are written here. NVIDIA's ModelOpt ONNX PTQ is not used:
its ``onnx`` extra pins ``onnx~=1.21`` and ``onnxruntime-gpu`` (replacing the CPU onnxruntime the runtime core
uses) and pulls cupy and polygraphy, more than this placement needs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from lcr_sdk.errors import InputError, ModelError, require
from lcr_sdk.manifest import Manifest

FP16_OPS = {"Conv", "Relu", "Clip", "MaxPool", "Add"}  # Clip: ReLU6 (EfficientNet-Lite)
INT8_MAX = 127
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
RECOMMENDED_CALIB_IMAGES = 300


def to_fp16(proto):
    """Return a copy of an fp32 ONNX model with the convolutional trunk in float16 and everything else float32."""
    onnx = require("onnx", "export", "converting to fp16")

    model = onnx.shape_inference.infer_shapes(proto)
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    inits = {t.name: t for t in graph.initializer}
    types.update({name: t.data_type for name, t in inits.items()})

    # Constant outputs a float16 node reads become float16 initializers: the parser needs Clip's bounds as weights,
    # and a Cast of a Constant is a computed tensor to it.
    consts = {
        n.output[0]: n.attribute[0].t
        for n in graph.node
        if n.op_type == "Constant" and n.attribute and n.attribute[0].HasField("t")
    }

    half_nodes, half_tensors = _half_region(graph, types, preprocess_nodes(graph))
    # A graph output made by a float16 node gets a float32 Cast at the end under its own name.
    half_outputs = half_tensors & {o.name for o in graph.output}
    nodes = _with_casts(graph, half_nodes, half_outputs, inits, consts)
    used = {x for n in nodes for x in n.input} | {o.name for o in graph.output}
    nodes = [n for n in nodes if n.op_type != "Constant" or n.output[0] in used]  # Constants now initializers
    graph.ClearField("node")
    graph.node.extend(nodes)
    kept = [t for t in graph.initializer if t.name in used]  # fp32 originals of converted weights go
    graph.ClearField("initializer")
    graph.initializer.extend(kept)
    graph.ClearField("value_info")  # types changed; consumers re-infer
    return model


def _half_region(graph, types: dict[str, int], keep_float: set[str]) -> tuple[set[int], set[str]]:
    """(indices of the nodes that run in float16, the tensors they make). The region grows from the trunk's Convs:
    a Relu, Clip, MaxPool or Add runs in float16 only when its data input is already float16, so the head's Clips
    (the mask's range, the norm's epsilon) stay float32."""
    from onnx import TensorProto

    half_nodes, half_tensors = set(), set()
    for i, node in enumerate(graph.node):
        if (
            node.op_type in FP16_OPS
            and node.name not in keep_float
            and all(types.get(x) == TensorProto.FLOAT for x in node.input if x)
            and (node.op_type == "Conv" or node.input[0] in half_tensors)
        ):
            half_nodes.add(i)
            half_tensors.update(node.output)
    return half_nodes, half_tensors


def _with_casts(graph, half_nodes: set[int], half_outputs: set[str], inits: dict, consts: dict) -> list:
    """The graph's nodes with float16 weights for the float16 nodes and a Cast wherever a tensor crosses between
    the two precisions (one Cast per tensor and direction); outputs made in float16 end with a Cast to float32."""
    from onnx import TensorProto, helper

    renamed = {name: f"{name}/fp16" for name in half_outputs}
    typer = _Retyper(graph, inits, consts)
    for index, node in enumerate(graph.node):
        want_half = index in half_nodes
        for i, x in enumerate(node.input):
            node.input[i] = typer.input(renamed.get(x, x), want_half)
        for i, o in enumerate(node.output):
            node.output[i] = renamed.get(o, o)
            if want_half:
                typer.half.add(node.output[i])
        typer.nodes.append(node)
    for name, tmp in renamed.items():
        typer.nodes.append(helper.make_node("Cast", [tmp], [name], to=TensorProto.FLOAT, name=f"{name}/to_fp32"))
    return typer.nodes


class _Retyper:
    """What a node reads, in the precision it runs in: float16 copies of float32 weights for float16 nodes, a
    Cast (made once per tensor and direction) for a computed tensor of the other precision."""

    def __init__(self, graph, inits: dict, consts: dict):
        self.graph, self.inits, self.consts = graph, inits, consts
        self.nodes: list = []
        self.half: set[str] = set()
        self.casts: dict[tuple[str, int], str] = {}

    def input(self, x: str, want_half: bool) -> str:
        from onnx import TensorProto, numpy_helper

        if not x:
            return x
        weight = self.inits.get(x) if x in self.inits else self.consts.get(x) if want_half else None
        if weight is not None:
            if want_half and weight.data_type == TensorProto.FLOAT:
                return _half_initializer(self.graph, self.inits, x, numpy_helper, self.consts.get(x))
            return x
        if want_half != (x in self.half):
            return self.cast(x, TensorProto.FLOAT16 if want_half else TensorProto.FLOAT)
        return x

    def cast(self, name: str, to: int) -> str:
        from onnx import TensorProto, helper

        key = (name, to)
        if key not in self.casts:
            self.casts[key] = f"{name}/to_{'fp16' if to == TensorProto.FLOAT16 else 'fp32'}"
            self.nodes.append(helper.make_node("Cast", [name], [self.casts[key]], to=to, name=self.casts[key]))
        return self.casts[key]


def preprocess_nodes(graph) -> set[str]:
    """Names of the nodes between the graph input and the first Conv (Cast, Transpose, the mean Add)."""
    consumers: dict[str, list] = {}
    for n in graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    found, frontier = set(), [i.name for i in graph.input]
    while frontier:
        for n in consumers.get(frontier.pop(), []):
            if n.op_type != "Conv" and n.name not in found:
                found.add(n.name)
                frontier.extend(n.output)
    return found


def _half_initializer(graph, inits: dict, name: str, numpy_helper, constant=None) -> str:
    """Name of a float16 initializer copying initializer ``name`` (or the Constant tensor ``constant``), made once."""
    half_name = f"{name}/fp16"
    if half_name not in inits:
        source = inits[name] if constant is None else constant
        arr = numpy_helper.to_array(source).astype(np.float16)
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
    progress: bool = True,
    half: bool = True,
    correct_bias: bool = True,
) -> int:
    """Statically quantise an fp32 ONNX file to a QDQ int8 file using calibration ``images`` (module docstring).

    Args:
        fp32_path: the fp32 graph.
        out_path: where to write the int8 graph.
        images: uint8 N x H x W x 3 BGR calibration images, already resized like inference resizes them.
        manifest: the model's manifest (input name).
        method: ``minmax``, ``percentile`` or ``entropy``.
        batch_size: images per calibration batch.
        progress: show a progress bar.
        half: run the unquantised parts in float16 (the fp16 graph's split: :func:`to_fp16` over the Q/DQ graph);
            False keeps them float32 (the earlier int8 graph, kept for comparisons).
        correct_bias: fold the int8 weights' mean error into the biases (:func:`weight_error_means`); False
            leaves the biases as trained (the earlier int8 graph, kept for comparisons).

    Returns:
        The number of images calibrated on (every one given).
    """
    onnx = require("onnx", "export", "int8 quantisation")
    require("onnxruntime.quantization", "export", "int8 quantisation")
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator
    from tqdm import tqdm  # type: ignore[import-untyped]

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
    proto = onnx.load(str(fp32_path))
    plan = int8_plan(proto)
    # Equal-sized batches only (the histogram collectors compare bins across batches of one shape): the last one is
    # filled up with images from the start, so every calibration image is used.
    size = min(batch_size, len(images))
    n_batches = -(-len(images) // size)
    augmented = Path(out_path).with_name(Path(out_path).name + ".calib.onnx")
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # onnxruntime.quantization logs advice on the root logger
    try:
        calibrator = create_calibrator(
            str(fp32_path),
            ["Conv", "Add"],
            augmented_model_path=str(augmented),
            calibrate_method=methods[method],
            extra_options={"symmetric": True},
        )
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print their steps
            for i in tqdm(
                range(n_batches), desc=f"int8 calibration ({method})", unit="batch", leave=False, disable=not progress
            ):
                calibrator.collect_data(_OneBatch({manifest.input.name: _batch(images, i, size)}))
            ranges = calibrator.compute_data()
    finally:
        quiet.setLevel(level)
        augmented.unlink(missing_ok=True)
        Path(str(augmented) + ".data").unlink(missing_ok=True)
    amax = {}
    for name in plan["activations"]:
        lo, hi = ranges[name].range_value
        amax[name] = float(max(abs(float(np.asarray(lo).min())), abs(float(np.asarray(hi).max()))))
    shift = weight_error_means(proto, plan, images, manifest.input.name, size, progress) if correct_bias else None
    quantised = insert_qdq(proto, plan, amax, shift)
    onnx.save(to_fp16(quantised) if half else quantised, str(out_path))
    return len(images)


def _batch(images: np.ndarray, i: int, size: int) -> np.ndarray:
    """Batch ``i`` of ``size`` images; the last one, where short, completed with the first images again."""
    batch = images[i * size : (i + 1) * size]
    return batch if len(batch) == size else np.concatenate([batch, images[: size - len(batch)]])


class _OneBatch:
    """A CalibrationDataReader over one feed (the calibrator is fed batch by batch to bound its memory)."""

    def __init__(self, feed: dict[str, np.ndarray]):
        self.feed: dict[str, np.ndarray] | None = feed

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed, self.feed = self.feed, None
        return feed


def int8_plan(proto) -> dict[str, list[str]]:
    """Where Q/DQ goes in an fp32 graph: ``{"convs": [...], "activations": [...]}``.

    ``convs`` are the names of the Conv nodes whose input and weights are quantised (all but the 3-channel stem, a
    depthwise conv reading the stem's activation, and the GFB conv); ``activations`` are the tensors that get a
    Q/DQ pair: those Convs' inputs and the shortcut operand of each residual Add.

    Raises:
        ModelError: a residual Add whose first operand is not a Conv output (a graph this placement does not know).
    """
    from onnx import numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    stem = [n for n in convs if numpy_helper.to_array(inits[n.input[1]]).shape[1] == 3]
    stem_act = {o for n in stem for o in n.output}
    stem_act |= {o for n in graph.node if n.op_type in ("Relu", "Clip") and n.input[0] in stem_act for o in n.output}
    stem_dw = [n for n in convs if n.input[0] in stem_act and _group(n) > 1]  # depthwise on the stem's activation
    # The GFB conv reads the backbone's last feature map, which the pooling (a Mul) reads too; a block input is
    # read only by Convs and the residual Add.
    gfb = [n for n in convs if any(m.op_type not in ("Conv", "Add") and n.input[0] in m.input for m in graph.node)]
    quantised = [n for n in convs if n not in stem and n not in gfb and n not in stem_dw]
    acts = list(dict.fromkeys(n.input[0] for n in quantised))
    for n in graph.node:
        if n.op_type != "Add" or any(x in inits or x not in producer for x in n.input):
            continue  # the preprocessing Add (a constant operand) is not a residual
        main = producer[n.input[0]]
        if main.op_type != "Conv":
            raise ModelError(f"residual Add {n.name!r} does not take a Conv output first; int8 placement unknown")
        if n.input[1] not in acts:
            acts.append(n.input[1])
    return {"convs": [n.name for n in quantised], "activations": acts}


def _group(node) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def quantise_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric int8 weights: ``(int8 weights, float32 scale per channel)``, the scale
    max|w| / 127 over each output channel (axis 0)."""
    w = w.astype(np.float32)
    scale = np.maximum(np.abs(w).reshape(len(w), -1).max(axis=1), 1e-12) / INT8_MAX
    q = np.clip(np.round(w / scale.reshape(-1, *([1] * (w.ndim - 1)))), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scale.astype(np.float32)


def weight_error_means(
    proto, plan: dict[str, list[str]], images: np.ndarray, input_name: str, batch_size: int = 8, progress: bool = True
) -> dict[str, np.ndarray]:
    """What rounding each planned Conv's weights to int8 adds to its output, on average: per Conv, the mean over
    ``images`` and positions of ``conv(x, W_int8 - W)`` per output channel, ``x`` being the Conv's own input in the
    float model (padding included, as the Conv sees it).

    Subtracting it from the Conv's float32 bias (:func:`insert_qdq`) cancels the systematic part of the weights'
    rounding error, which otherwise adds up from layer to layer: bias correction (Nagel et al., "Data-Free
    Quantization Through Weight Equalization and Bias Correction", ICCV 2019), measured here on the calibration
    images instead of derived from BatchNorm statistics (which the exported graph no longer has). It changes no
    Q/DQ node and no weight, only bias values.
    """
    onnx = require("onnx", "export", "int8 quantisation")
    ort = require("onnxruntime", "export", "int8 quantisation")
    from onnx import helper, numpy_helper
    from tqdm import tqdm  # type: ignore[import-untyped]

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    graph = probe.graph
    inits = {t.name: t for t in graph.initializer}
    wanted = set(plan["convs"])
    outputs = {}
    for node in list(graph.node):
        if node.name not in wanted:
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        q, scale = quantise_weights(w)
        err = numpy_helper.from_array(q * scale.reshape(-1, 1, 1, 1) - w, f"{node.name}/weight_error")
        out = f"{node.name}/weight_error_output"
        probe_conv = helper.make_node("Conv", [node.input[0], err.name], [out], name=f"{node.name}/weight_error_conv")
        probe_conv.attribute.extend(node.attribute)
        graph.initializer.append(err)
        graph.node.append(probe_conv)
        graph.output.append(helper.make_empty_tensor_value_info(out))
        outputs[out] = node.name
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = list(outputs)
    sums: dict[str, np.ndarray] = {}
    count = 0
    size = min(batch_size, len(images))
    for i in tqdm(
        range(-(-len(images) // size)), desc="int8 bias correction", unit="batch", leave=False, disable=not progress
    ):
        batch = images[i * size : (i + 1) * size]
        for name, value in zip(names, session.run(names, {input_name: batch})):
            total = value.astype(np.float64).mean(axis=(2, 3)).sum(axis=0)
            sums[name] = sums[name] + total if name in sums else total
        count += len(batch)
    return {outputs[n]: sums[n] / count for n in names}


def _corrected_bias(node, inits: dict, shift: np.ndarray, new_inits: list) -> str:
    """A new float32 bias initializer for ``node``: its bias (zero if it has none) less ``shift``; its name."""
    from onnx import numpy_helper

    has_bias = len(node.input) > 2 and node.input[2]
    bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64) if has_bias else np.zeros(len(shift))
    corrected = numpy_helper.from_array((bias - shift).astype(np.float32), f"{node.name}/corrected_bias")
    new_inits.append(corrected)
    return corrected.name


def insert_qdq(proto, plan: dict[str, list[str]], amax: dict[str, float], shift: dict[str, np.ndarray] | None = None):
    """Return ``proto`` with Q/DQ pairs on ``plan["activations"]`` (scale amax / 127) and per-channel INT8 weights
    (with a DequantizeLinear) on ``plan["convs"]``; biases stay float, less ``shift[conv]`` where given (the
    weights' bias correction, :func:`weight_error_means`)."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    nodes = list(graph.node)
    new_inits = []
    zero8 = numpy_helper.from_array(np.zeros((), np.int8), "qdq/zero_point")
    new_inits.append(zero8)
    dq_of = {}
    qdq_nodes = []
    for name in plan["activations"]:
        scale = max(amax[name], 1e-8) / INT8_MAX
        s = numpy_helper.from_array(np.array(scale, np.float32), f"{name}/scale")
        new_inits.append(s)
        q, dq = f"{name}/quantized", f"{name}/dequantized"
        qdq_nodes.append(helper.make_node("QuantizeLinear", [name, s.name, zero8.name], [q], name=f"{name}/Q"))
        qdq_nodes.append(helper.make_node("DequantizeLinear", [q, s.name, zero8.name], [dq], name=f"{name}/DQ"))
        dq_of[name] = dq
    convs = set(plan["convs"])
    out_nodes = []
    producers = {o for n in nodes for o in n.output} | {i.name for i in graph.input}
    placed: set[int] = set()

    def place_ready() -> None:  # a Q/DQ pair goes right after its tensor is produced (topological order)
        for i in range(0, len(qdq_nodes), 2):
            tensor = qdq_nodes[i].input[0]
            if i not in placed and tensor in ready:
                out_nodes.extend(qdq_nodes[i : i + 2])
                placed.add(i)

    ready = {i.name for i in graph.input} | set(inits)
    place_ready()
    for node in nodes:
        is_residual = node.op_type == "Add" and all(x in producers and x not in inits for x in node.input)
        if node.name in convs:
            node.input[0] = dq_of[node.input[0]]
            int8_weights, weight_scale = quantise_weights(numpy_helper.to_array(inits[node.input[1]]))
            wname = node.input[1]
            qw = numpy_helper.from_array(int8_weights, f"{wname}/int8")
            ws = numpy_helper.from_array(weight_scale, f"{wname}/scale")
            wz = numpy_helper.from_array(np.zeros(len(int8_weights), np.int8), f"{wname}/zero_point")
            new_inits += [qw, ws, wz]
            out_nodes.append(
                helper.make_node(
                    "DequantizeLinear",
                    [qw.name, ws.name, wz.name],
                    [f"{wname}/dequantized"],
                    name=f"{wname}/DQ",
                    axis=0,
                )
            )
            node.input[1] = f"{wname}/dequantized"
            if shift is not None:  # the (float) bias absorbs the mean error the int8 weights add
                node.input[:] = list(node.input[:2]) + [_corrected_bias(node, inits, shift[node.name], new_inits)]
        elif is_residual and node.input[1] in dq_of:
            node.input[1] = dq_of[node.input[1]]
        out_nodes.append(node)
        ready.update(node.output)
        place_ready()
    used = {x for n in out_nodes for x in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    graph.ClearField("node")
    graph.node.extend(out_nodes)
    graph.ClearField("initializer")
    graph.initializer.extend(kept + [t for t in new_inits if t.name in used])
    graph.ClearField("value_info")
    return proto
