"""How onnx_export._save traces and stores weights: the exporter never holds the weights as module
state (its shape inference kept a copy of each: the full-size decoder was OOM-killed at 22.6 GiB),
and the weights still land in the graph as initializers, folded, inline or external."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from dsocr.export import onnx_export


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(8, 16, bias=True)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 16))

    def forward(self, x):
        return self.proj(x) * self.scale


@pytest.mark.parametrize("external", [False, True])
def test_weights_are_graph_inputs_while_tracing_and_initializers_after(tmp_path, monkeypatch, external):
    traced = []
    real_export = torch.onnx.export

    def spy(module, args, *rest, **kw):
        traced.append((dict(module.state_dict()), len(args)))
        return real_export(module, args, *rest, **kw)

    monkeypatch.setattr(torch.onnx, "export", spy)
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0 if external else 1 << 30)
    model = Tiny().eval().requires_grad_(False)
    x = torch.randn(2, 3, 8)  # 3-D: MatMul(x, Transpose(W)), as in the decoder (2-D would be a Gemm)
    path = tmp_path / "tiny.onnx"
    onnx_export._save(model, (x,), path, ["x"], ["y"], {"x": {0: "batch"}}, lambda n: n)

    state, n_args = traced[0]
    assert state == {}  # the traced module holds no weights (the exporter reads its state dict) ...
    assert n_args == 1 + 3  # ... they are passed as arguments: proj.weight, proj.bias, scale
    proto = onnx.load(str(path), load_external_data=False)
    assert [i.name for i in proto.graph.input] == ["x"]
    # node names keep the module scopes of tracing `model` itself (calibration groups and QMoE key on them)
    assert "/proj/MatMul" in [n.name for n in proto.graph.node]
    inits = {t.name: t for t in proto.graph.initializer}
    assert set(inits) == {"proj.weight__T", "proj.bias", "scale"}  # Linear's W^T folded into the weight
    assert all(t.data_location == (onnx.TensorProto.EXTERNAL if external else onnx.TensorProto.DEFAULT)
               for t in inits.values())
    assert (tmp_path / "tiny.onnx.data").is_file() == external
    full = onnx.load(str(path))
    w = {t.name: numpy_helper.to_array(t) for t in full.graph.initializer}
    np.testing.assert_array_equal(w["proj.weight__T"], model.proj.weight.numpy().T)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(y, model(x).numpy(), rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def external_bundle(tmp_path_factory):
    """The demo bundle with every graph's weights external (as at full size), built once."""
    from dsocr.export.bundle import DEMO_SOURCE, BuildOptions, build_bundle
    from dsocr.export.demo import write_demo_checkpoint

    root = tmp_path_factory.mktemp("external")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)
        build_bundle(write_demo_checkpoint(root / "ckpt"), root / "bundle",
                     BuildOptions(modes=("small",), max_seq_len=1024, progress=False), source=DEMO_SOURCE)
    return root / "bundle"


def test_the_step_graph_reads_the_prefill_graphs_experts_instead_of_a_copy(external_bundle, demo_bundle):
    from dsocr.runtime.manifest import read_manifest

    step = onnx.load(str(external_bundle / "decoder_step.onnx"), load_external_data=False)
    stacks = [t for t in step.graph.initializer if ".mlp.stack_" in t.name]
    assert stacks and all(dict((e.key, e.value) for e in t.external_data)["location"] == "decoder.onnx.data"
                          for t in stacks)
    others = [t for t in step.graph.initializer if ".mlp.stack_" not in t.name]
    assert all(dict((e.key, e.value) for e in t.external_data)["location"] == "decoder_step.onnx.data"
               for t in others)
    stack_bytes = sum(int(np.prod(t.dims)) * 4 for t in stacks)
    step_data = (external_bundle / "decoder_step.onnx.data").stat().st_size
    assert step_data < (external_bundle / "decoder.onnx.data").stat().st_size - stack_bytes // 2
    read_manifest(external_bundle)  # both data files listed and hashed: the bundle verifies

    # the shared stacks hold the same values as an unshared export: step outputs equal the inline bundle's
    m = read_manifest(demo_bundle)
    kv, rng = m.kv, np.random.default_rng(0)
    feed = {"inputs_embeds": rng.standard_normal((2, 1, m.hidden_size), dtype=np.float32),
            "cos": np.ones((2, 1, kv.head_dim), np.float32), "sin": np.zeros((2, 1, kv.head_dim), np.float32),
            "attention_mask": np.zeros((2, 1, 1, 4), np.float32)}
    feed.update({f"past_{w}.{i}": rng.standard_normal((2, 3, kv.num_heads, kv.head_dim), dtype=np.float32)
                 for i in range(kv.num_layers) for w in ("key", "value")})
    run = lambda b: ort.InferenceSession(str(b / "decoder_step.onnx"),  # noqa: E731
                                         providers=["CPUExecutionProvider"]).run(["logits"], feed)[0]
    np.testing.assert_array_equal(run(external_bundle), run(demo_bundle))


@pytest.mark.parametrize("precision", ["int4-weight", "fp16"])
def test_variants_build_from_a_bundle_whose_step_graph_shares_the_experts(external_bundle, tmp_path, precision):
    from dsocr.calibration.variants import PrecisionOptions, build_variant
    from dsocr.runtime.manifest import read_manifest

    out = tmp_path / precision
    build_variant(external_bundle, out, precision, options=PrecisionOptions(sensitivity=False, progress=False))
    m = read_manifest(out)
    step = onnx.load(str(out / m.graphs["decoder_step"].file))  # external data resolved from the variant's files
    if precision == "int4-weight":  # the shared fp32 stacks were read and packed into QMoE
        assert not any(".mlp.stack_" in t.name for t in step.graph.initializer)
        assert any(n.op_type == "QMoE" for n in step.graph.node)
    else:
        assert any(".mlp.stack_" in t.name and t.data_type == onnx.TensorProto.FLOAT16 for t in step.graph.initializer)
    ort.InferenceSession(str(out / m.graphs["decoder_step"].file), providers=["CPUExecutionProvider"])
