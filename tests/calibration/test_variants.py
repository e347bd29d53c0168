"""Precision variants of the demo bundle: full bundles, explicit precision, each runs on CPU."""
import onnx
import pytest
from onnx import TensorProto

from dsocr.calibration.qdq import check_qdq_symmetric
from dsocr.calibration.variants import PrecisionOptions, build_variant
from dsocr.runtime.decoding import GenerationOptions
from dsocr.runtime.errors import InputError
from dsocr.runtime.manifest import read_manifest
from dsocr.runtime.pipeline import Pipeline, RunOptions

TRT_KINDS = ("fp32", "fp16", "int8")
GRAPH_PRECISION = {  # written out here, not read from the registry under test: (vision, embed, decoder)
    "fp16": ("fp16", "fp16", "fp16"),
    "int8": ("int8", "fp16", "int8"),
    "int8-weight": ("int8-weight", "fp16", "int8-weight"),
    "int4-weight": ("int8-weight", "int4-weight", "int4-weight"),  # int4 vision weights cost too much
}


@pytest.mark.parametrize("precision", ["fp16", "int8", "int8-weight", "int4-weight"])
def test_variant_is_a_full_bundle_that_runs_on_cpu(precision, variants, demo_bundle, calib_pages):
    path = variants[precision]
    m = read_manifest(path)  # checks every file's size and SHA-256
    fp32 = read_manifest(demo_bundle)
    assert m.precision == precision and m.modes == fp32.modes and set(m.graphs) == set(fp32.graphs)
    for name, spec in m.graphs.items():
        assert spec.precision == dict(zip(("vision", "embed", "decoder"), GRAPH_PRECISION[precision]))[spec.role]
        assert spec.inputs == fp32.graphs[name].inputs and spec.outputs == fp32.graphs[name].outputs
        targets = m.source["targets"][name]
        assert ("tensorrt" in targets) == (spec.precision in TRT_KINDS)
    assert m.source["derived_from"]["precision"] == "fp32"
    assert m.source["calibration"]["pages"] == "2 synthetic pages"
    text, result = Pipeline(path).generate(calib_pages[1], RunOptions(generation=GenerationOptions(max_new_tokens=3)))
    assert len(result.ids) == 3 and isinstance(text, str)


def test_int8_graphs_have_only_symmetric_qdq(variants):
    m = read_manifest(variants["int8"])
    for role in ("vision", "decoder"):
        spec = next(g for g in m.graphs.values() if g.role == role)
        model = onnx.load(str(variants["int8"] / spec.file))
        ops = [n.op_type for n in model.graph.node]
        assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
        assert check_qdq_symmetric(model) == []
        assert all(o.domain in ("", "ai.onnx") for o in model.opset_import) and model.opset_import[0].version == 17
    detail = m.source["precision_detail"]["decoder"]
    assert "layers.2" in detail["fp32_groups"]  # the last decoder layer stays fp32
    model = onnx.load(str(variants["int8"] / "decoder.onnx"))
    lm_head = next(n for n in model.graph.node if n.name == "/lm_head/MatMul")
    assert lm_head.input[1] == "lm_head.weight__T"  # fp32 weight, no DequantizeLinear in front


def test_trt_variants_pass_the_tensorrt_parser_check(variants):
    from dsocr.engines.parser_support import check_graph, errors

    for precision in ("fp16", "int8"):
        m = read_manifest(variants[precision])
        for name, spec in m.graphs.items():
            bad = errors(check_graph(str(variants[precision] / spec.file)))
            assert not bad, (precision, name, bad[:3])


def test_fp16_keeps_io_fp32_and_logits_out_of_fp16(variants):
    model = onnx.load(str(variants["fp16"] / "decoder.onnx"))
    assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in list(model.graph.input) + list(model.graph.output))
    producer = {o: n for n in model.graph.node for o in n.output}
    node, hops = producer["logits"], 0
    while node.op_type in ("Identity", "Cast") and hops < 4:  # walk back to the op that made the logits
        assert not (node.op_type == "Cast" and node.attribute[0].i == TensorProto.FLOAT16)
        node, hops = producer[node.input[0]], hops + 1
    assert node.name == "/lm_head/MatMul"
    inits = {t.name: t.data_type for t in model.graph.initializer}
    assert inits["lm_head.weight__T"] == TensorProto.FLOAT
    assert sum(t == TensorProto.FLOAT16 for t in inits.values()) > 0


def test_weight_only_graphs_use_matmul_nbits(variants):
    for precision, bits in (("int8-weight", 8), ("int4-weight", 4)):
        model = onnx.load(str(variants[precision] / "decoder.onnx"))
        nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
        assert nbits and all(n.domain == "com.microsoft" for n in nbits)
        by_name = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in nbits}
        assert {b for name, b in by_name.items() if "lm_head" not in name} == {bits}
        assert [b for name, b in by_name.items() if "lm_head" in name] == [8]
    embed = onnx.load(str(variants["int4-weight"] / "embed.onnx"))
    assert [n.op_type for n in embed.graph.node] == ["GatherBlockQuantized"]


def test_variant_sizes_shrink(variants, demo_bundle):
    size = lambda p: sum(e["bytes"] for e in read_manifest(p).files.values())  # noqa: E731
    fp32 = size(demo_bundle)
    assert size(variants["int4-weight"]) < size(variants["int8-weight"]) < fp32
    assert size(variants["fp16"]) < 0.75 * fp32


def test_options_and_targets_are_validated(demo_bundle, variants, tmp_path):
    with pytest.raises(InputError, match="method"):
        PrecisionOptions(method="mse")
    with pytest.raises(InputError, match="precision"):
        build_variant(demo_bundle, tmp_path / "x", "int3")
    with pytest.raises(InputError, match="exists"):
        build_variant(demo_bundle, variants["fp16"], "fp16")
    with pytest.raises(InputError, match="fp32 bundle"):
        build_variant(variants["fp16"], tmp_path / "y", "int8")
    assert not list(tmp_path.iterdir())  # nothing half-written
