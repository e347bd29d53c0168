"""engines.parser_support on small hand-made ONNX graphs (onnx.helper)."""
import numpy as np
import onnx
from onnx import TensorProto as T  # noqa: E402
from onnx import helper as h  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402

from dsocr.engines import parser_support as ps  # noqa: E402


def vi(name, dtype=T.FLOAT, shape=(2, 4)):
    return h.make_tensor_value_info(name, dtype, list(shape))


def model(nodes, inputs, outputs, inits=(), opset=17, extra=(), functions=()):
    graph = h.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    opsets = [h.make_opsetid("", opset)] + [h.make_opsetid(d, 1) for d in extra]
    return h.make_model(graph, opset_imports=opsets, functions=list(functions))


def codes(issues, severity="error"):
    return sorted({i.code for i in issues if i.severity == severity})


def matmul_softmax():
    nodes = [h.make_node("MatMul", ["a", "b"], ["m"]), h.make_node("Softmax", ["m"], ["y"], axis=-1)]
    return model(nodes, [vi("a"), vi("b", shape=(4, 3))], [vi("y", shape=(2, 3))])


def qdq(zero_point: np.ndarray | None):
    inits = [nh.from_array(np.array(0.05, np.float32), "s")]
    ins = ["a", "s"]
    if zero_point is not None:
        inits.append(nh.from_array(zero_point, "z"))
        ins.append("z")
    nodes = [h.make_node("QuantizeLinear", ins, ["q"]), h.make_node("DequantizeLinear", ["q"] + ins[1:], ["y"])]
    return model(nodes, [vi("a")], [vi("y")], inits)


def test_plain_matmul_softmax_passes():
    assert ps.check_graph(matmul_softmax()) == []


def test_flags_com_microsoft_op():
    m = model([h.make_node("FusedMatMul", ["a", "b"], ["y"], domain="com.microsoft", name="fm")],
              [vi("a"), vi("b", shape=(4, 3))], [vi("y", shape=(2, 3))], extra=["com.microsoft"])
    issues = ps.check_graph(m)
    assert codes(issues) == ["domain"]
    assert "com.microsoft" in str(issues[0]) and "'fm'" in str(issues[0])


def test_flags_non_zero_zero_point():
    issues = ps.check_graph(qdq(np.array(3, np.int8)))
    assert [i.op_type for i in ps.errors(issues)] == ["QuantizeLinear", "DequantizeLinear"]
    assert all(i.code == "qdq" and "zero" in i.message for i in ps.errors(issues))


def test_symmetric_int8_qdq_passes():
    assert ps.errors(ps.check_graph(qdq(np.array(0, np.int8)))) == []
    per_axis = qdq(np.zeros(4, np.int8))  # per-axis zero points of 0 are fine too
    assert ps.errors(ps.check_graph(per_axis)) == []


def test_uint8_or_missing_zero_point():
    assert codes(ps.check_graph(qdq(np.array(0, np.uint8)))) == ["dtype", "qdq"]  # and DQ of a uint8 input
    missing = ps.check_graph(qdq(None))  # ONNX then quantizes to uint8: not a TensorRT quantized type
    assert "qdq" in codes(missing, "warning") and codes(missing) == ["dtype"]


def test_flags_unsupported_op_and_later_op():
    m = model([h.make_node("Det", ["a"], ["d"]), h.make_node("HannWindow", ["n"], ["y"])],
              [vi("a", shape=(3, 3)), vi("n", T.INT64, ())], [vi("d", shape=()), vi("y", shape=(4,))])
    msgs = {i.op_type: i.message for i in ps.check_graph(m) if i.code == "unsupported-op"}
    assert "not supported" in msgs["Det"]
    assert "10.4" in msgs["HannWindow"] and "10.3" in msgs["HannWindow"]


def test_opset_beyond_tensorrt_10_3():
    m = matmul_softmax()
    m.opset_import[0].version = 21
    assert codes(ps.check_graph(m)) == ["opset"]


def test_dtypes():
    f64 = model([h.make_node("Relu", ["a"], ["y"])], [vi("a", T.DOUBLE)], [vi("y", T.DOUBLE)])
    assert ps.errors(ps.check_graph(f64)) == [] and codes(ps.check_graph(f64), "warning") == ["dtype"]
    bf16 = model([h.make_node("Relu", ["a"], ["y"])], [vi("a", T.BFLOAT16)], [vi("y", T.BFLOAT16)])
    assert "sm_80" in ps.check_graph(bf16)[0].message
    text = model([h.make_node("Identity", ["a"], ["y"])], [vi("a", T.STRING)], [vi("y", T.STRING)])
    assert codes(ps.check_graph(text)) == ["dtype"]


def test_op_dtype_groups():
    ints = model([h.make_node("MatMul", ["a", "b"], ["y"])], [vi("a", T.INT32), vi("b", T.INT32, (4, 3))],
                 [vi("y", T.INT32, (2, 3))])
    assert codes(ps.check_graph(ints)) == ["dtype"]  # MatMul: float types only
    mask = model([h.make_node("NonZero", ["a"], ["y"])], [vi("a", T.BOOL)], [vi("y", T.INT64, (2, "n"))])
    assert ps.check_graph(mask) == []  # INonZeroLayer takes BOOL
    i64 = model([h.make_node("NonZero", ["a"], ["y"])], [vi("a", T.INT64)], [vi("y", T.INT64, (2, "n"))])
    assert codes(ps.check_graph(i64)) == ["dtype"]


def test_attribute_restrictions():
    scales = nh.from_array(np.array([1, 1, 2, 2], np.float32), "sc")
    resize = h.make_node("Resize", ["x", "", "sc"], ["y"], mode="cubic", antialias=1)
    m = model([resize], [vi("x", shape=(1, 1, 4, 4))], [vi("y", shape=(1, 1, 8, 8))], [scales])
    msgs = " ".join(i.message for i in ps.check_graph(m))
    assert "antialias" in msgs and "cubic" in msgs
    scat = h.make_node("ScatterND", ["x", "i", "u"], ["y"], reduction="add")
    m = model([scat], [vi("x"), vi("i", T.INT64, (1, 1)), vi("u", shape=(1, 4))], [vi("y")])
    assert codes(ps.check_graph(m)) == ["attribute"]
    k = nh.from_array(np.array([2], np.int64), "k")
    topk = h.make_node("TopK", ["x", "k"], ["v", "i"], sorted=0)
    m = model([topk], [vi("x")], [vi("v", shape=(2, 2)), vi("i", T.INT64, (2, 2))], [k])
    assert codes(ps.check_graph(m)) == ["attribute"]


def test_axes_must_be_constant():
    dyn = model([h.make_node("Unsqueeze", ["x", "ax"], ["y"])], [vi("x"), vi("ax", T.INT64, (1,))],
                [vi("y", shape=(1, 2, 4))])
    assert codes(ps.check_graph(dyn)) == ["attribute"]
    const = model([h.make_node("Constant", [], ["ax"], value=nh.from_array(np.array([0], np.int64))),
                   h.make_node("Unsqueeze", ["x", "ax"], ["y"])], [vi("x")], [vi("y", shape=(1, 2, 4))])
    assert ps.check_graph(const) == []


def test_subgraphs_and_local_functions_are_checked():
    then = h.make_graph([h.make_node("Det", ["a"], ["t"])], "then", [], [vi("t", shape=())])
    other = h.make_graph([h.make_node("ReduceSum", ["a"], ["e"], keepdims=0)], "else", [], [vi("e", shape=())])
    m = model([h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
              [vi("c", T.BOOL, ()), vi("a", shape=(3, 3))], [vi("y", shape=())])
    assert [i.op_type for i in ps.errors(ps.check_graph(m))] == ["Det"]
    fn = h.make_function("dsocr.local", "Gelu2", ["x"], ["y"], [h.make_node("Erf", ["x"], ["y"])],
                         [h.make_opsetid("", 17)])
    m = model([h.make_node("Gelu2", ["a"], ["y"], domain="dsocr.local")], [vi("a")], [vi("y")],
              extra=["dsocr.local"], functions=[fn])
    assert ps.check_graph(m) == []


def test_external_data_is_allowed_and_checked(tmp_path):
    w = nh.from_array(np.ones((4, 3), np.float32), "b")
    m = model([h.make_node("MatMul", ["a", "b"], ["y"])], [vi("a")], [vi("y", shape=(2, 3))], [w])
    path = tmp_path / "g.onnx"
    onnx.save_model(m, str(path), save_as_external_data=True, location="g.onnx.data", size_threshold=0)
    assert ps.check_graph(path) == []
    (tmp_path / "g.onnx.data").unlink()
    assert codes(ps.check_graph(path)) == ["external-data"]


def test_unreadable_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert codes(ps.check_graph(bad)) == ["load"]


def test_table_is_documented():
    assert ps.OPSET == 17 and ps.MAX_OPSET == 20
    assert "| MatMul | F |" in ps.__doc__ and "| ScatterND | FI | reduction must be none |" in ps.__doc__
    assert "operators.md" in ps.__doc__  # the source is cited
    assert set(ps.CHECKS) <= set(ps.SUPPORTED)
    assert all(s.types in ps.GROUPS for s in ps.SUPPORTED.values())
