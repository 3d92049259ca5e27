"""The TensorRT ONNX parser's documented type and operator rules, checked on an exported graph before it ships.

Source: ``docs/operators.md`` of the onnx/onnx-tensorrt repository at tag ``release/10.1-GA`` (the newest release
file available to us; its header reads "TensorRT 10.0 supports operators in the inclusive range of opset 9 to opset
20"), plus that repository's ``CHANGELOG.md``, whose entries for the 10.2 GA and 10.3 GA releases add no operator
and change only the GRU, Squeeze, Slice (tensor ``axes``) and ScatterElements importers. TensorRT 10.3 is what
JetPack 6.1+ ships, and the oldest parser we build engines with; TensorRT 11 accepts what it accepts.

The rules relied on, quoted from that file:

- "UINT8 is only supported as network input or output tensor types"; and (NVIDIA, TensorRT issue 3985) a UINT8
  network input must feed a Cast directly.
- DequantizeLinear: types "INT8, FP8, INT4", "``x_zero_point`` must be zero": an INT32 (bias) DequantizeLinear is
  rejected. QuantizeLinear: input "FP32, FP16, BF16", "``y_zero_point`` must be 0".
- Each operator's "Supported Types" column (below, only the operators an lcr-sdk graph can contain; an operator not
  in :data:`SUPPORTED` is reported, so a new one gets looked up before it ships).
- Reduce* ``axes`` must be an initializer (opset 17 has them as attributes, which satisfies it).

Shapes: the engine's optimisation profile varies only the batch, so the input must be ``[N, H, W, 3]`` with a
symbolic N and static H and W, and every output must have a symbolic batch axis.
"""

from __future__ import annotations

# Operator -> supported tensor types ("Supported Types" column of docs/operators.md, release/10.1-GA).
_FLOAT = ("FP32", "FP16", "BF16")
_ARITH = (*_FLOAT, "INT32", "INT64")
_ANY = (*_ARITH, "BOOL")
SUPPORTED: dict[str, tuple[str, ...]] = {
    "Add": _ARITH,
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
    "Greater": _ARITH,
    "Identity": _ANY,
    "Max": _ARITH,
    "MaxPool": _FLOAT,
    "Min": _ARITH,
    "Mul": _ARITH,
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

# ONNX TensorProto data type number -> the names the parser's table uses.
_TYPE_NAMES = {1: "FP32", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FP16", 16: "BF16", 17: "FP8"}


def _type_name(code: int) -> str:
    return _TYPE_NAMES.get(code, f"type {code}")


def tensorrt_violations(proto) -> list[str]:
    """Every way ``proto`` breaks the TensorRT 10.3 parser's documented rules (module docstring); [] if none.

    Args:
        proto: an ``onnx.ModelProto`` (shape inference is run on a copy to type every tensor).
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.shape_inference.infer_shapes(proto)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({name: t.data_type for name, t in inits.items()})
    for node in graph.node:  # Constant nodes carry their type in the attribute
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            types[node.output[0]] = node.attribute[0].t.data_type
    inputs = {i.name for i in graph.input} - set(inits)
    outputs = {o.name for o in graph.output}
    problems = []

    # Shapes: [N, H, W, 3] with symbolic N and static H, W; outputs with a symbolic batch axis.
    for inp in graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        if len(dims) != 4 or not dims[0].dim_param or any(d.dim_value <= 0 for d in dims[1:]):
            shape = [d.dim_param or d.dim_value for d in dims]
            problems.append(f"input {inp.name!r} has shape {shape}; need [N, H, W, 3] with static H, W, dynamic N")
    for out in graph.output:
        dims = out.type.tensor_type.shape.dim
        if not dims or not dims[0].dim_param:
            problems.append(f"output {out.name!r} has no dynamic batch axis")

    # UINT8 only at the network boundary, and a UINT8 input goes straight into a Cast.
    for name, code in types.items():
        if code == TensorProto.UINT8 and name not in inputs and name not in outputs:
            problems.append(f"tensor {name!r} is UINT8 inside the network (UINT8 is only allowed as network I/O)")
    for node in graph.node:
        for x in node.input:
            if x in inputs and types.get(x) == TensorProto.UINT8 and node.op_type != "Cast":
                problems.append(f"UINT8 input {x!r} feeds {node.op_type} {node.name!r}, not a Cast")

    for node in graph.node:
        op = node.op_type
        where = f"{op} {node.name!r}"
        if op not in SUPPORTED:
            problems.append(f"{where}: operator not in the TensorRT 10.3 parser's supported list")
            continue
        if op == "DequantizeLinear":
            checked = node.input[:1]
            zero = node.input[2] if len(node.input) > 2 else ""
            if zero and zero in inits and numpy_helper.to_array(inits[zero]).any():
                problems.append(f"{where}: x_zero_point must be zero")
        elif op == "QuantizeLinear":
            checked = node.input[:1]
            zero = node.input[2] if len(node.input) > 2 else ""
            if zero and zero in inits and numpy_helper.to_array(inits[zero]).any():
                problems.append(f"{where}: y_zero_point must be zero")
        else:  # the inputs decide the kernel (a comparison's BOOL output is not in its input types)
            checked = [x for x in node.input if x]
        for x in checked:
            code = types.get(x)
            if code is None:
                continue
            name = _type_name(code)
            if name == "UINT8" and op == "Cast":
                continue  # the boundary rule above governs UINT8
            if name not in SUPPORTED[op]:
                problems.append(f"{where}: tensor {x!r} is {name}; the parser supports {', '.join(SUPPORTED[op])}")
    return problems
