"""int8 bias correction: what rounding the weights to int8 adds to a Conv's output on average goes into its bias."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from lcr_sdk.export.precision import insert_qdq, int8_plan, quantise_weights, weight_error_means  # noqa: E402


def _conv_model(w: np.ndarray, b: np.ndarray):
    """x [N, 4, 6, 6] -> Conv(3x3, pads 1) -> y: a Conv int8_plan quantises (not 3 input channels, read by a Conv
    only)."""
    from onnx import TensorProto, helper, numpy_helper

    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [conv],
        "one-conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 6, 6])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _conv(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """A plain numpy 3x3 convolution with zero padding 1 (the reference, independent of onnxruntime)."""
    n, c, h, wd = x.shape
    padded = np.zeros((n, c, h + 2, wd + 2))
    padded[:, :, 1:-1, 1:-1] = x
    out = np.zeros((n, len(w), h, wd))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", padded[:, :, i : i + h, j : j + wd], w[:, :, i, j])
    return out


def _run(proto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.fixture
def case():
    rng = np.random.default_rng(7)
    w = rng.normal(size=(8, 4, 3, 3)).astype(np.float32)
    b = rng.normal(size=8).astype(np.float32)
    x = rng.uniform(0, 2, size=(16, 4, 6, 6)).astype(np.float32)  # ReLU-like: a positive mean
    return w, b, x


def test_the_weight_error_mean_is_the_rounding_error_convolved_with_the_real_input(case):
    w, b, x = case
    proto = _conv_model(w, b)
    q, scale = quantise_weights(w)
    expected = _conv(x.astype(np.float64), q * scale.reshape(-1, 1, 1, 1) - w).mean(axis=(0, 2, 3))
    got = weight_error_means(proto, int8_plan(proto), x, "x", batch_size=4, progress=False)
    assert set(got) == {"conv"}
    assert np.abs(expected).max() > 1e-3  # the rounding does shift this Conv's output
    np.testing.assert_allclose(got["conv"], expected, rtol=1e-4, atol=1e-6)


def test_the_corrected_int8_conv_keeps_the_float_conv_mean(case):
    """Without the correction each output channel's mean moves by the weights' rounding error; with it, the int8
    Conv's per-channel means match the float Conv's many times closer (activation rounding is what is left)."""
    w, b, x = case
    proto = _conv_model(w, b)
    plan = int8_plan(proto)
    amax = {"x": float(np.abs(x).max())}
    float_mean = _run(proto, x).mean(axis=(0, 2, 3))
    shift = weight_error_means(proto, plan, x, "x", progress=False)
    plain = _run(insert_qdq(_conv_model(w, b), plan, amax), x).mean(axis=(0, 2, 3)) - float_mean
    corrected = _run(insert_qdq(_conv_model(w, b), plan, amax, shift), x).mean(axis=(0, 2, 3)) - float_mean
    assert np.abs(corrected).max() < np.abs(plain).max() / 5
    # the graph is otherwise the same: the same Q/DQ nodes, the same int8 weights, only the bias values differ
    a, c = insert_qdq(_conv_model(w, b), plan, amax), insert_qdq(_conv_model(w, b), plan, amax, shift)
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in c.graph.node]
    inits_a = {t.name: onnx.numpy_helper.to_array(t) for t in a.graph.initializer}
    inits_c = {t.name: onnx.numpy_helper.to_array(t) for t in c.graph.initializer}
    np.testing.assert_array_equal(inits_a["w/int8"], inits_c["w/int8"])
    bias = c.graph.node[-1].input[2]
    np.testing.assert_allclose(inits_c[bias], b - shift["conv"], rtol=1e-6)
