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
        want = dict(zip(("vision", "embed", "decoder"), GRAPH_PRECISION[precision]))
        want["decoder_step"] = want["decoder"]  # the decode-step graph is lowered as the decoder
        assert spec.precision == want[spec.role]
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
        # the fast CPU path (int8 activations); level 0 is 3-150x slower at one token
        levels = {next((a.i for a in n.attribute if a.name == "accuracy_level"), 0) for n in nbits}
        assert levels == {4}, (precision, levels)
        assert read_manifest(variants[precision]).source["precision_detail"]["decoder"]["accuracy_level"] == 4
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


@pytest.mark.parametrize("graph,bits,gather", [("decoder", 4, False), ("vision_640", 8, False), ("embed", 4, True)])
def test_weight_only_file_equals_the_in_memory_path(demo_bundle, tmp_path, graph, bits, gather):
    """Graphs with external weights (full size: all of them) are packed without loading the fp32
    MatMul weights; same result as the in-memory path. Vision: its Conv weights are no MatMul's and
    must come inline; embed: the Gather table is packed from external data."""
    import numpy as np
    from onnx import numpy_helper

    from dsocr.calibration.precision import load_with_shapes, weight_only
    from dsocr.calibration.variants import weight_only_file

    src = tmp_path / f"{graph}.onnx"
    onnx.save_model(onnx.load(str(demo_bundle / f"{graph}.onnx")), str(src), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=f"{graph}.onnx.data", size_threshold=0)
    lean = weight_only_file(src, bits, 32, gather=gather)
    full = weight_only(load_with_shapes(demo_bundle / f"{graph}.onnx"), bits, 32, gather=gather)
    assert [n.op_type for n in lean.graph.node] == [n.op_type for n in full.graph.node]
    a = {t.name: numpy_helper.to_array(t) for t in lean.graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in full.graph.initializer}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    packed = "GatherBlockQuantized" if gather else "MatMulNBits"
    assert any(n.op_type == packed for n in lean.graph.node)


def test_weight_only_step_graphs_run_routed_experts_on_qmoe(variants, demo_bundle):
    """int8/int4-weight decode-step graphs: the gathered experts become QMoE (no fp32 expert stacks
    left), and the step graph's logits follow the variant's own prefill graph."""
    import numpy as np
    import onnxruntime as ort

    fp32 = read_manifest(demo_bundle)
    n_moe = sum(1 for t in onnx.load(str(demo_bundle / "decoder_step.onnx")).graph.initializer
                if t.name.endswith(".mlp.stack_gate"))
    rng = np.random.default_rng(0)
    kv = fp32.kv
    feed = {"inputs_embeds": rng.standard_normal((2, 1, fp32.hidden_size), dtype=np.float32),
            "cos": np.ones((2, 1, kv.head_dim), np.float32), "sin": np.zeros((2, 1, kv.head_dim), np.float32),
            "attention_mask": np.zeros((2, 1, 1, 5), np.float32)}
    feed.update({f"past_{w}.{i}": rng.standard_normal((2, 4, kv.num_heads, kv.head_dim), dtype=np.float32)
                 for i in range(kv.num_layers) for w in ("key", "value")})
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(["logits"], feed)[0]  # noqa: E731
    ref = run(demo_bundle / "decoder.onnx")
    for precision, bits in (("int8-weight", 8), ("int4-weight", 4)):
        model = onnx.load(str(variants[precision] / "decoder_step.onnx"))
        qmoe = [n for n in model.graph.node if n.op_type == "QMoE"]
        assert len(qmoe) == n_moe >= 1
        assert {next(a.i for a in n.attribute if a.name == "expert_weight_bits") for n in qmoe} == {bits}
        assert not [t.name for t in model.graph.initializer if ".stack_" in t.name]
        step, prefill = run(variants[precision] / "decoder_step.onnx"), run(variants[precision] / "decoder.onnx")
        err = lambda a: float(np.abs(a - ref).max() / np.abs(ref).max())  # noqa: E731
        assert err(step) < 2 * err(prefill) + 1e-3, (precision, err(step), err(prefill))  # same quantization error
        corr = lambda a: float(np.corrcoef(a.ravel(), ref.ravel())[0, 1])  # noqa: E731
        assert corr(step) > corr(prefill) - 0.01 and corr(step) > 0.9, (precision, corr(step), corr(prefill))


def test_every_variant_graph_passes_the_onnx_checker(variants):
    """Valid ONNX as the spec has it (nodes topologically sorted, types consistent): what TensorRT's
    parser and other runtimes than ONNX Runtime read. The fp16 converter used to leave Casts after
    their consumers."""
    from dsocr.runtime.manifest import read_manifest

    for precision, path in variants.items():
        for spec in read_manifest(path).graphs.values():
            onnx.checker.check_model(onnx.load(str(path / spec.file)), full_check=False)
