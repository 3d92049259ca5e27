"""The TensorRT ONNX parser's documented type and operator rules, checked on an exported graph before it ships.

TensorRT 10.3 is what JetPack 6.1+ ships and the oldest parser we build engines with; TensorRT 11 accepts what it
accepts. Sources, read in the onnx/onnx-tensorrt repository:

- ``docs/operators.md`` at ``release/10.1-GA`` (its header still reads "TensorRT 10.0 supports operators in the
  inclusive range of opset 9 to opset 20"). The 10.3 file itself was not available to us; ``CHANGELOG.md`` lists
  for 10.2 only error-handling and GRU/Squeeze importer changes and for 10.3 only tensor ``axes`` for Slice and a
  ScatterElements plugin, so its table for the operators below is the 10.1 one; the ONNX submodule moves to 1.17
  (opset 22) only in 10.6. So the opset range checked is 9..20.
- the parser's importers at the same tag, for the restrictions its table leaves out (quoted error messages below).

The rules, each with the parser's wording:

- opset: the default-domain opset of the model must be within 9..20.
- types: "UINT8 is only supported as network input or output tensor types"; and a
  UINT8 network input must feed a Cast directly (a report on NVIDIA's TensorRT repository: the parser rejects a
  UINT8 input read by anything else). Each operator's "Supported Types" column (:data:`SUPPORTED`,
  only the operators an lcr-sdk graph can contain; an operator not in it is reported, so a new one gets looked up
  before it ships). Cast: ``to`` must be one of the Cast row's types ("Unsupported cast!").
- QuantizeLinear / DequantizeLinear: "``y_zero_point`` must be 0" / "``x_zero_point`` must be zero"; an INT32 (bias)
  DequantizeLinear is rejected (DequantizeLinear reads "INT8, FP8, INT4"); a UINT8 zero point is rejected (the
  zero point's type is the quantised type); the scale must be a constant of static shape ("Dynamic shape for
  scale tensor is not supported") and "Scale coefficients must all be positive" (a float16 scale that rounds to 0
  breaks this).
- axes given as inputs: Reduce* ``axes`` "must be an initializer" ("Axis input must be an initializer!"), and
  so must Squeeze's ("Squeeze axes input must be an initializer!"), Slice's and Pad's; Unsqueeze's "should be a
  constant tensor". Since opset 13 ReduceSum, Squeeze and Unsqueeze take ``axes`` as an input (every other Reduce
  since opset 18), so at opset 17 a ReduceSum's axes are an input, not an attribute. The parser turns a Constant
  node's output into weights, so an initializer or a Constant output is what passes.
- Clip (opset >= 11): "Clip min value must be an initializer!" / "Clip max value must be an initializer!".
- MaxPool / AveragePool: "2D or 3D pooling only", "``Indices`` output tensor unsupported", "``dilations`` must be
  empty or all ones".
- Constant: "``sparse_value``, ``value_string``, and ``value_strings`` attributes are unsupported".

Shapes: the engine's optimisation profiles vary only the batch, so the input must be ``[N, H, W, 3]`` (or, for the
float planar variant DeepStream feeds, ``[N, 3, H, W]``) with a symbolic N and static H and W, and every output
must have a symbolic batch axis.
"""

from __future__ import annotations

import numpy as np

# Operator -> supported tensor types ("Supported Types" column of docs/operators.md, release/10.1-GA).
_FLOAT = ("FP32", "FP16", "BF16")
_ARITH = (*_FLOAT, "INT32", "INT64")
_ANY = (*_ARITH, "BOOL")
SUPPORTED: dict[str, tuple[str, ...]] = {
    "Add": _ARITH,
    "AveragePool": _FLOAT,
    "Cast": (*_ARITH, "UINT8", "BOOL"),
    "Clip": _FLOAT,
    "Concat": _ANY,
    "Constant": _ANY,
    "ConstantOfShape": _ANY,
    "Conv": _FLOAT,
    "DequantizeLinear": ("INT8", "FP8", "INT4"),
    "Div": _ARITH,
    "Equal": _ARITH,
    "Expand": _ANY,
    "Flatten": _ANY,
    "Gather": _ANY,
    "GlobalAveragePool": _FLOAT,
    "Greater": _ARITH,
    "Identity": _ANY,
    "Max": _ARITH,
    "MaxPool": _FLOAT,
    "Min": _ARITH,
    "Mul": _ARITH,
    "Pad": _ARITH,
    "QuantizeLinear": _FLOAT,
    "ReduceL2": _ARITH,
    "ReduceMax": _ARITH,
    "ReduceMean": _ARITH,
    "ReduceMin": _ARITH,
    "ReduceSum": _ARITH,
    "Relu": _ARITH,
    "Reshape": _ANY,
    "Shape": _ANY,
    "Slice": _ANY,
    "Sqrt": _FLOAT,
    "Squeeze": _ANY,
    "Sub": _ARITH,
    "Transpose": _ANY,
    "Unsqueeze": _ANY,
    "Where": _ANY,
}

OPSET_RANGE = (9, 20)  # the TensorRT 10.3 parser's default-domain opsets (module docstring)
CAST_TARGETS = ("FP32", "FP16", "BF16", "INT32", "INT64", "UINT8", "BOOL")
# Operator -> (input index of its axes, the first opset in which axes is an input rather than an attribute).
AXES_INPUTS: dict[str, tuple[int, int]] = {
    "ReduceSum": (1, 13),
    "Squeeze": (1, 13),
    "Unsqueeze": (1, 13),
    "Slice": (3, 10),
    "Pad": (3, 18),
    **{op: (1, 18) for op in ("ReduceL2", "ReduceMax", "ReduceMean", "ReduceMin")},
}
POOLS = ("MaxPool", "AveragePool")

# ONNX TensorProto data type number -> the names the parser's table uses.
_TYPE_NAMES = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    6: "INT32",
    7: "INT64",
    9: "BOOL",
    10: "FP16",
    11: "DOUBLE",
    16: "BF16",
    17: "FP8",
}


def _type_name(code: int) -> str:
    return _TYPE_NAMES.get(code, f"type {code}")


def _constants(graph) -> dict:
    """Every tensor the parser sees as weights: initializers and Constant node outputs (name -> numpy array)."""
    from onnx import helper, numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if (
            node.op_type == "Constant"
            and len(node.attribute) == 1
            and node.attribute[0].name
            in (
                "value",
                "value_float",
                "value_floats",
                "value_int",
                "value_ints",
            )
        ):
            attr = node.attribute[0]
            value = helper.get_attribute_value(attr)
            values[node.output[0]] = numpy_helper.to_array(value) if attr.name == "value" else value
    return values


def tensorrt_violations(proto) -> list[str]:
    """Every way ``proto`` breaks the TensorRT 10.3 parser's documented rules (module docstring); [] if none.

    Args:
        proto: an ``onnx.ModelProto`` (shape inference is run on a copy to type every tensor).
    """
    import onnx

    model = onnx.shape_inference.infer_shapes(proto)
    graph = model.graph
    consts = _constants(graph)
    types = _tensor_types(graph)
    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    lo, hi = OPSET_RANGE
    if opset is None or not lo <= opset <= hi:
        problems.append(f"opset {opset}: the TensorRT 10.3 parser reads opsets {lo} to {hi}")
    problems += _boundary_problems(graph, types)
    for node in graph.node:
        problems += _operator_problems(node, opset or 0, consts, types)
    return problems


def _tensor_types(graph) -> dict[str, int]:
    """Every typed tensor's ONNX element type: inferred values, graph inputs and outputs, weights and Constants."""
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    for node in graph.node:  # Constant nodes carry their type in the attribute
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            types[node.output[0]] = node.attribute[0].t.data_type
    return types


def _boundary_problems(graph, types: dict[str, int]) -> list[str]:
    """The network's boundary: [N, H, W, 3] (or [N, 3, H, W]) inputs with a symbolic N and static H, W, outputs
    with a symbolic batch axis, and UINT8 only as network I/O, a UINT8 input going straight into a Cast."""
    from onnx import TensorProto

    weights = {t.name for t in graph.initializer}
    inputs = {i.name for i in graph.input} - weights
    outputs = {o.name for o in graph.output}
    problems = _shape_problems(graph, weights)
    for name, code in types.items():
        if code == TensorProto.UINT8 and name not in inputs and name not in outputs:
            problems.append(f"tensor {name!r} is UINT8 inside the network (UINT8 is only allowed as network I/O)")
    for node in graph.node:
        for x in node.input:
            if x in inputs and types.get(x) == TensorProto.UINT8 and node.op_type != "Cast":
                problems.append(f"UINT8 input {x!r} feeds {node.op_type} {node.name!r}, not a Cast")
    return problems


def _shape_problems(graph, weights: set[str]) -> list[str]:
    problems = []
    for inp in graph.input:
        if inp.name in weights:
            continue
        dims = inp.type.tensor_type.shape.dim
        if len(dims) != 4 or not dims[0].dim_param or any(d.dim_value <= 0 for d in dims[1:]):
            shape = [d.dim_param or d.dim_value for d in dims]
            problems.append(f"input {inp.name!r} has shape {shape}; need 4 axes, static but the first (dynamic N)")
    for out in graph.output:
        dims = out.type.tensor_type.shape.dim
        if not dims or not dims[0].dim_param:
            problems.append(f"output {out.name!r} has no dynamic batch axis")
    return problems


def _operator_problems(node, opset: int, consts: dict, types: dict[str, int]) -> list[str]:
    """One node against the parser's operator list: the operator, its input types, its operator's restrictions."""
    op = node.op_type
    where = f"{op} {node.name!r}"
    if op not in SUPPORTED:
        return [f"{where}: operator not in the TensorRT 10.3 parser's supported list"]
    problems = [f"{where}: {p}" for p in _node_rules(node, opset, consts, types)]
    if op in ("QuantizeLinear", "DequantizeLinear"):
        checked = node.input[:1]
    else:  # the inputs decide the kernel (a comparison's BOOL output is not in its input types)
        checked = [x for x in node.input if x]
    for x in checked:
        code = types.get(x)
        name = _type_name(code) if code is not None else None
        if name is None or (name == "UINT8" and op == "Cast"):
            continue  # untyped; or the boundary rule governs UINT8
        if name not in SUPPORTED[op]:
            problems.append(f"{where}: tensor {x!r} is {name}; the parser supports {', '.join(SUPPORTED[op])}")
    return problems


def _node_rules(node, opset: int, consts: dict, types: dict) -> list[str]:  # noqa: C901 (one branch per documented rule)
    """The restrictions of one node's operator beyond its types (module docstring): one branch per rule of the
    parser's operators.md, so the branching is the rule table itself."""
    from onnx import TensorProto, helper

    op = node.op_type
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    found = []

    def arg(i: int) -> str:
        return node.input[i] if len(node.input) > i else ""

    if op in ("QuantizeLinear", "DequantizeLinear"):
        scale, zero = arg(1), arg(2)
        if scale not in consts:
            found.append(f"scale {scale!r} is computed in the graph; it must be an initializer or a Constant")
        elif not (np.asarray(consts[scale]) > 0).all():
            found.append(f"scale {scale!r} has coefficients <= 0 (scale coefficients must all be positive)")
        if zero and types.get(zero) == TensorProto.UINT8:
            found.append(f"zero point {zero!r} is UINT8; the parser quantises to INT8")
        if zero and zero in consts and np.asarray(consts[zero]).any():
            found.append(f"{'y' if op == 'QuantizeLinear' else 'x'}_zero_point must be zero")
    if op in AXES_INPUTS:
        index, since = AXES_INPUTS[op]
        axes = arg(index)
        if opset >= since and axes and axes not in consts:
            found.append(f"axes {axes!r} are computed in the graph; they must be an initializer or a Constant")
    if op == "Clip" and opset >= 11:
        for bound in (x for x in node.input[1:] if x):
            if bound not in consts:
                found.append(f"bound {bound!r} is computed in the graph; Clip min/max must be initializers")
    if op in POOLS:
        kernel = attrs.get("kernel_shape", [])
        if len(kernel) not in (2, 3):
            found.append(f"kernel_shape {list(kernel)}: 2D or 3D pooling only")
        if any(d != 1 for d in attrs.get("dilations", [])):
            found.append(f"dilations {list(attrs['dilations'])}: must be empty or all ones")
        if len(node.output) > 1 and node.output[1]:
            found.append("the Indices output is unsupported")
    if op == "Cast" and _type_name(attrs.get("to", 0)) not in CAST_TARGETS:
        found.append(f"casts to {_type_name(attrs.get('to', 0))}; the parser casts to {', '.join(CAST_TARGETS)}")
    if op == "Constant":
        bad = [a for a in attrs if a in ("sparse_value", "value_string", "value_strings")]
        if bad:
            found.append(f"attribute {bad[0]} is unsupported")
    return found
