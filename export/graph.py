"""Checkpoint -> one fp32 ONNX graph of :class:`lcr_sdk.train.model.DeployModel` (docs/DESIGN.md section 2).

Exporter: ``torch.onnx.export(..., dynamo=False)``, the TorchScript exporter, at opset 17. In eval mode it folds
every BatchNorm into the preceding convolution and folds constants; ``dynamic_axes`` gives a dynamic batch with a
fixed H x W. Opset 17 is read by TensorRT 10 and 11 and supports per-channel QDQ (opset >= 13) for int8.

Preprocessing is rearranged for TensorRT, which accepts a UINT8 tensor only as a network input feeding a Cast
(docs/DESIGN.md section 2): the graph starts ``images -> Cast -> Transpose -> Add(-255 * mean) -> conv1'``, where
conv1' is conv1 with its input channels reversed (BGR -> RGB) and divided by ``255 * std``. The mean stays an Add:
conv1 zero-pads, and a padded zero must mean "the mean colour", not black. The result equals ``DeployModel``
(uint8 -> flip -> /255 -> -mean -> /std -> conv1) up to float rounding; verification checks it. "conv1" is the
backbone's stem convolution (``LCRNet.stem_conv``), and mean and std are the arch's (the manifest's ``input``).

EfficientNet-Lite's TensorFlow "SAME" padding is asymmetric on a stride-2 convolution of an even size: traced at
the manifest's input size it is a constant zero ``Pad`` before the Conv, which :func:`fuse_pads` moves into the
Conv's own (asymmetric) ``pads``, so the graph has no Pad node. The mean Add comes before it, so a padded zero
still means the mean colour.
"""

from __future__ import annotations

import os
import typing
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

    spec, n = manifest.input, max(2, manifest.batch_opt)
    planar = spec.layout == "NCHW"
    model = folded_deploy_model(net, spec.mean, spec.std, planar=planar)
    if planar:  # the DeepStream variant: float32 N x 3 x H x W RGB with 255 * mean already subtracted
        dummy = torch.zeros(n, 3, spec.height, spec.width, dtype=torch.float32)
    else:
        dummy = torch.zeros(n, spec.height, spec.width, 3, dtype=torch.uint8)
    names = manifest.output_names
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo and says so; that choice is deliberate.
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        # A "SAME" padding's constant pad amounts are traced with a reversing Slice the exporter cannot fold; it
        # says so, and fuse_pads evaluates and folds them into the Conv below.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        # ... and its sizes are read as Python integers on purpose: constants at the manifest's input size.
        warnings.filterwarnings("ignore", message="Converting a tensor to a Python integer", module="lcr_sdk")
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
    fuse_pads(proto)
    _fix_output_shapes(proto, manifest)
    embed_manifest(proto, manifest)
    check(proto)
    onnx.save(proto, str(path))


def folded_deploy_model(net, mean, std, planar: bool = False):
    """``DeployModel`` of a copy of ``net`` whose preprocessing TensorRT can parse: Cast first, one Add for the mean,
    the channel flip and ``1 / (255 * std)`` folded into conv1's weights (``net`` itself is left unchanged).

    ``planar``: the DeepStream variant, which reads what nvinfer computes, ``x - 255 * mean`` as float32
    N x 3 x H x W RGB: no preprocessing in the graph, no flip, and ``1 / (255 * std)`` still in conv1. Exact
    against the uint8 graph: both zero-pad conv1's input after the mean is gone.
    """
    import copy

    torch = require("torch", "export", "exporting to ONNX")
    from lcr_sdk.train.model import DeployModel

    net = copy.deepcopy(net).eval()
    conv1 = net.stem_conv()
    if conv1.in_channels != 3 or conv1.bias is not None:
        raise ModelError(f"expected conv1 with 3 input channels and no bias, got {conv1}; the arch is not supported")
    scale = torch.tensor([255.0 * s for s in std], dtype=conv1.weight.dtype).view(1, 3, 1, 1)
    with torch.no_grad():
        weight = conv1.weight / scale  # raw 0..255 units
        conv1.weight.copy_(weight if planar else weight.flip(1))  # RGB -> BGR input channels for the uint8 graph
    model = DeployModel(net).eval()
    model.preprocess = torch.nn.Identity() if planar else _cast_first_preprocess(torch, mean)
    return model


def _cast_first_preprocess(torch, mean):
    """uint8 N x H x W x 3 BGR -> float N x 3 x H x W BGR minus 255 * mean (defined lazily: no torch at import)."""

    class CastFirst(torch.nn.Module):
        def __init__(self):
            super().__init__()
            shift = [-255.0 * m for m in reversed(tuple(mean))]  # BGR order: the flip is in conv1's weights
            self.register_buffer("shift", torch.tensor(shift).view(1, 3, 1, 1))

        def forward(self, images):
            return images.float().permute(0, 3, 1, 2) + self.shift  # Cast, Transpose (float), Add

    return CastFirst()


def fuse_pads(proto) -> int:
    """Fold each constant zero ``Pad`` of H and W that feeds only a Conv into that Conv's ``pads``; returns how many.

    ``Pad(x, [0, 0, t, l, 0, 0, b, r])`` then ``Conv(pads=[pt, pl, pb, pr])`` is ``Conv(pads=[pt + t, pl + l,
    pb + b, pr + r])``: both pad with zeros. The tracer writes the pad amounts as a small constant subgraph, which
    is evaluated here. A Pad of another mode, value or axis is left alone (the TensorRT rules check reports it).
    """
    from onnx import helper

    graph = proto.graph
    pads_of = {n.input[1]: n for n in graph.node if n.op_type == "Pad" and len(n.input) > 1}
    values = _constant_values(proto, list(pads_of))
    consumers: dict[str, list] = {}
    for n in graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    removed = []
    for name, pad in pads_of.items():
        mode = next((a.s.decode() for a in pad.attribute if a.name == "mode"), "constant")
        value = values.get(pad.input[2], None) if len(pad.input) > 2 and pad.input[2] else 0.0
        users = consumers.get(pad.output[0], [])
        if name not in values or mode != "constant" or value is None or float(value) != 0.0:
            continue
        amounts = [int(v) for v in values[name].ravel()]
        if len(amounts) != 8 or any(amounts[i] for i in (0, 1, 4, 5)) or min(amounts) < 0:
            continue
        if len(users) != 1 or users[0].op_type != "Conv" or (len(pad.input) > 3 and pad.input[3]):
            continue
        conv = users[0]
        old = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0, 0, 0, 0])
        new = [old[0] + amounts[2], old[1] + amounts[3], old[2] + amounts[6], old[3] + amounts[7]]
        kept = [a for a in conv.attribute if a.name != "pads"]
        conv.ClearField("attribute")
        conv.attribute.extend([*kept, helper.make_attribute("pads", new)])
        conv.input[0] = pad.input[0]
        removed.append(pad)
    for pad in removed:
        graph.node.remove(pad)
    _drop_dead(graph)
    return len(removed)


def _constant_values(proto, names: list[str]) -> dict:
    """Values of the tensors in ``names`` that depend on constants only (evaluated with onnx's reference
    evaluator); others are left out."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    known, nodes = set(inits), []
    for n in graph.node:
        if all(not x or x in known for x in n.input):
            nodes.append(n)
            known.update(n.output)
    values = {x: numpy_helper.to_array(inits[x]) for x in names if x in inits}
    wanted = [x for x in names if x in known and x not in inits]
    if wanted:
        used = {x for n in nodes for x in n.input}
        sub = helper.make_graph(
            nodes,
            "constants",
            [],
            [helper.make_empty_tensor_value_info(x) for x in wanted],
            initializer=[t for name, t in inits.items() if name in used],
        )
        model = helper.make_model(sub, opset_imports=proto.opset_import)
        results = typing.cast("list", ReferenceEvaluator(model).run(None, {}))
        values.update(zip(wanted, results, strict=True))
    return values


def _drop_dead(graph) -> None:
    """Remove nodes whose outputs nothing reads (repeatedly) and initializers no node reads."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {x for n in graph.node for x in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {x for n in graph.node for x in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)


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
