"""Small units without a bundle: fp16 cast folding, the Q/DQ checker, range repair, the selection rule."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dsocr.calibration.groups import group_of
from dsocr.calibration.precision import to_fp16
from dsocr.calibration.qdq import check_qdq_symmetric
from dsocr.calibration.report import edit_distance
from dsocr.calibration.sensitivity import Score, select_fp32_groups, session
from dsocr.calibration.stats import CalibrationMethod, TensorData, TensorsData, repair_ranges


def test_groups_follow_layers_and_blocks():
    assert group_of("/layers.2/mlp/experts.6/up_proj/MatMul") == "layers.2"
    assert group_of("/sam_model/blocks.11/attn/qkv/MatMul") == "sam_model/blocks.11"
    assert group_of("/vision_model/layers.0/mlp/fc1/MatMul") == "vision_model/layers.0"
    assert group_of("/lm_head/MatMul") == "lm_head"
    assert group_of("/layers/MatMul") == "layers"  # the projector
    assert group_of("Constant_12") == "(graph)"


def _chain_model():
    # x -> Add(+c) -> Mul(*1) -> Add(-c) -> y, all fp32
    c = numpy_helper.from_array(np.array([1.0], np.float32), "c")
    one = numpy_helper.from_array(np.array([1.0], np.float32), "one")
    nodes = [helper.make_node("Add", ["x", "c"], ["a"], name="/blk/Add"),
             helper.make_node("Mul", ["a", "one"], ["b"], name="/blk/Mul"),
             helper.make_node("Sub", ["b", "c"], ["y"], name="/blk/Sub")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [c, one])
    return onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_fp32_island_is_fp32_end_to_end(tmp_path):
    x = np.array([2.0**-13, 1e-4, 3.0, -7.0], np.float32)  # 1 + 2^-13 is not an fp16 number
    m = to_fp16(_chain_model(), fp32_nodes=["/blk/Add", "/blk/Mul", "/blk/Sub"])
    casts = [n for n in m.graph.node if n.op_type == "Cast"]
    producer = {o: n for n in m.graph.node for o in n.output}
    assert not any(producer.get(n.input[0]) is not None and producer[n.input[0]].op_type == "Cast" for n in casts)
    onnx.save(m, tmp_path / "m.onnx")
    y = session(tmp_path / "m.onnx").run(None, {"x": x})[0]
    np.testing.assert_array_equal(y, (x + 1) * 1 - 1)  # no fp16 rounding inside the island
    # Lowered: the Add reads x through a Cast to fp16 (ONNX Runtime's CPU kernels may still compute
    # fp16 ops in fp32, so the graph, not CPU numbers, is what shows the precision).
    lowered = to_fp16(_chain_model(), fp32_nodes=[])
    producer = {o: n for n in lowered.graph.node for o in n.output}
    add = next(n for n in lowered.graph.node if n.op_type == "Add")
    cast = producer[add.input[0]]
    assert cast.op_type == "Cast" and cast.attribute[0].i == TensorProto.FLOAT16 and cast.input[0] == "x"
    assert [o.type.tensor_type.elem_type for o in lowered.graph.output] == [TensorProto.FLOAT]


def _qdq_model(zero_point, zp_type=TensorProto.INT8, scale=0.1, weight_scales=(0.1, 0.2), weight_axis=1):
    w = numpy_helper.from_array(np.array([[1, -127], [5, 3]], np.int8), "w")
    ws = numpy_helper.from_array(np.array(weight_scales, np.float32), "ws")
    wz = numpy_helper.from_array(np.zeros(len(weight_scales), np.int8), "wz")
    s = numpy_helper.from_array(np.array(scale, np.float32), "s")
    z = helper.make_tensor("z", zp_type, [], [zero_point])
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="wdq", axis=weight_axis),
             helper.make_node("MatMul", ["xd", "wd"], ["y"], name="mm")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [w, ws, wz, s, z])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_qdq_checker_accepts_symmetric_and_names_each_violation():
    assert check_qdq_symmetric(_qdq_model(0)) == []
    assert any("not 0" in p for p in check_qdq_symmetric(_qdq_model(3)))
    assert any("UINT8" in p for p in check_qdq_symmetric(_qdq_model(0, TensorProto.UINT8)))
    assert any("positive" in p for p in check_qdq_symmetric(_qdq_model(0, scale=0.0)))
    assert any("do not match" in p for p in check_qdq_symmetric(_qdq_model(0, weight_scales=(0.1, 0.2, 0.3))))
    assert any("output channels" in p for p in check_qdq_symmetric(_qdq_model(0, weight_axis=0)))


def test_ranges_no_feed_reached_come_from_the_gathered_source():
    nodes = [helper.make_node("Gather", ["h", "idx"], ["e"], name="/layers.1/mlp/Gather"),
             helper.make_node("MatMul", ["e", "w"], ["o"], name="/layers.1/mlp/experts.3/up_proj/MatMul"),
             helper.make_node("MatMul", ["z", "w"], ["o2"], name="/other/MatMul")]
    g = helper.make_graph(nodes, "g", [], [])
    td = lambda lo, hi: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))  # noqa: E731
    data = TensorsData(CalibrationMethod.MinMax, {"h": td(-3, 2), "e": td(np.inf, -np.inf), "z": td(0, 0)})
    fixed, filled, missing = repair_ranges(g, data)
    assert filled == {"e": "h"} and missing == ["z"]
    assert fixed.data["e"].range_value == data.data["h"].range_value


class _FakeProbe:
    def __init__(self, error):  # group -> cosine error it adds when lowered
        self.error = error

    def score(self, fp32_groups):
        cos = 1.0 - sum(e for g, e in self.error.items() if g not in fp32_groups)
        return Score(cos, cos, 1.0)


def test_selection_keeps_the_worst_groups_until_the_threshold_holds():
    probe = _FakeProbe({"a": 1e-4, "b": 5e-3, "c": 2e-3, "d": 1e-5})
    sel = select_fp32_groups(["a", "b", "c", "d"], lambda fp32: frozenset(fp32), probe, threshold=0.999)
    assert sel.fp32_groups == ["b", "c"] and [g for g, _ in sel.trail] == ["b", "c"]
    assert sel.score.cosine >= 0.999 and max(sel.solo, key=sel.solo.get) == "b"
    capped = select_fp32_groups(["a", "b", "c", "d"], frozenset, probe, threshold=0.999, max_fp32=1)
    assert capped.fp32_groups == ["b"] and capped.score.cosine < 0.999
    forced = select_fp32_groups(["a", "b", "c", "d"], frozenset, probe, threshold=0.99, forced={"b"})
    assert forced.fp32_groups == ["b"] and forced.solo == {}  # already good: nothing measured


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == edit_distance("abc", "") == 3
    assert edit_distance("表格", "表格") == 0 and edit_distance("flaw", "lawn") == 2


def test_weight_only_without_its_quantizer_names_the_extra(monkeypatch):
    """A missing package behind onnxruntime's MatMulNBitsQuantizer (onnx-ir) is a typed error naming
    the extra, not a traceback."""
    import builtins

    import onnx
    import pytest

    from dsocr.calibration.precision import weight_only
    from dsocr.runtime.errors import BackendUnavailableError

    real = builtins.__import__

    def fake(name, *a, **k):
        if name.endswith("matmul_nbits_quantizer"):
            raise ModuleNotFoundError("No module named 'onnx_ir'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(BackendUnavailableError, match=r"onnx_ir.*dsocr\[calib\]"):
        weight_only(onnx.ModelProto(), bits=4)
