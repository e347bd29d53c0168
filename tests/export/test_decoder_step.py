"""The decode-step decoder graph (MoE "gather": TopK + Gather of the selected experts' stacked
weights) equals the prefill graph (MoE "sparse") and reproduces the golden fixture's decode steps."""
import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch

pytest.importorskip("onnxruntime")

from dsocr.export.golden import check_mode, fixture_checkpoint  # noqa: E402
from dsocr.export.model.decoder import MoE  # noqa: E402
from dsocr.runtime.backends.ort import OrtBackend  # noqa: E402
from dsocr.export.config import DecoderConfig  # noqa: E402
from dsocr.runtime.manifest import read_manifest  # noqa: E402
from dsocr.runtime.preprocess import load_image  # noqa: E402

MODES = ("small", "gundam")
REL = 1e-4  # of max |ref|


@pytest.fixture(scope="module")
def bundle(fixture_dir, tmp_path_factory):
    from dsocr.export.bundle import BuildOptions, build_bundle

    root = tmp_path_factory.mktemp("step")
    ckpt = fixture_checkpoint(fixture_dir, root / "ckpt")
    out = root / "bundle"
    build_bundle(ckpt, out, BuildOptions(modes=MODES, max_seq_len=2048, progress=False))
    return out


def _session(bundle, file):
    import onnxruntime as ort

    return ort.InferenceSession(str(bundle / file), providers=["CPUExecutionProvider"])


def _feeds(manifest, batch, t, past, seed):
    rng = np.random.default_rng(seed)
    kv = manifest.kv
    f = {"inputs_embeds": rng.standard_normal((batch, t, manifest.hidden_size), dtype=np.float32),
         "cos": np.cos(rng.standard_normal((batch, t, kv.head_dim))).astype(np.float32),
         "sin": np.sin(rng.standard_normal((batch, t, kv.head_dim))).astype(np.float32),
         "attention_mask": np.triu(np.full((t, past + t), -1e9, np.float32), past + 1)[None, None].repeat(batch, 0)}
    for i in range(kv.num_layers):
        for w in ("key", "value"):
            f[f"past_{w}.{i}"] = rng.standard_normal((batch, past, kv.num_heads, kv.head_dim), dtype=np.float32)
    return f


def _rel(got, ref):
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def test_manifest_names_the_step_graph(bundle, fixture_dir):
    m = read_manifest(bundle)
    step, dec = m.graphs["decoder_step"], m.graphs["decoder"]
    assert (step.role, step.file, dec.role) == ("decoder_step", "decoder_step.onnx", "decoder")
    assert step.inputs == dec.inputs and step.outputs == dec.outputs
    graph = onnx.load(str(bundle / step.file), load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    assert "TopK" in ops and not ops & {"NonZero", "ScatterND"}  # no data-dependent shapes
    stacks = {t.name: list(t.dims) for t in graph.initializer if ".mlp.stack_" in t.name}
    cfg = json.loads((fixture_dir / "config.json").read_text())
    e, d, i = cfg["n_routed_experts"], cfg["hidden_size"], cfg["moe_intermediate_size"]
    assert stacks["model.layers.1.mlp.stack_gate"] == [e, d, i] and stacks["model.layers.1.mlp.stack_down"] == [e, i, d]
    assert not [n.name for n in graph.node if n.op_type == "Constant" and ".mlp" in n.name
                and any(a.t.dims and a.t.dims[0] == e for a in n.attribute)]  # weights are initializers
    assert "NonZero" in {n.op_type for n in onnx.load(str(bundle / dec.file), load_external_data=False).graph.node}


@pytest.mark.parametrize("batch,t,past", [(1, 1, 7), (4, 1, 5), (2, 3, 4)])
def test_step_graph_equals_prefill_graph(bundle, batch, t, past):
    m = read_manifest(bundle, verify_files=False)
    f = _feeds(m, batch, t, past, seed=batch * 10 + t)
    ref = _session(bundle, m.graphs["decoder"].file).run(None, f)
    got = _session(bundle, m.graphs["decoder_step"].file).run(None, f)
    assert _rel(got[0], ref[0]) <= REL, "logits"
    for g, r in zip(got[1:], ref[1:]):
        assert _rel(g, r) <= REL
    # the comparison can fail: a different token's logits are far off
    other = _session(bundle, m.graphs["decoder"].file).run(None, _feeds(m, batch, t, past, seed=99))
    assert _rel(other[0], ref[0]) > 100 * REL


class _StepRouter:
    """The runtime's rule: one-token steps on the decoder_step graph, the prompt on the decoder."""

    def __init__(self, bundle):
        m = read_manifest(bundle, verify_files=False)
        self.manifest, self.prefill = m, OrtBackend(bundle, m)
        self.step = OrtBackend(bundle, dataclasses.replace(m, graphs={**m.graphs, "decoder": m.graphs["decoder_step"]}))
        self.calls = {"prefill": 0, "step": 0}

    def __getattr__(self, name):
        return getattr(self.prefill, name)

    def decode(self, embeds, *rest):
        kind = "step" if embeds.shape[1] == 1 else "prefill"
        self.calls[kind] += 1
        return getattr(self, kind).decode(embeds, *rest)


@pytest.mark.parametrize("mode", MODES)
def test_step_graph_reproduces_the_golden_decode(bundle, fixture_dir, mode):
    from dsocr.runtime.pipeline import BundleAssets, Pipeline

    gold = dict(np.load(fixture_dir / "golden.npz"))
    assets = BundleAssets.load(bundle)
    router = _StepRouter(bundle)
    pipe = Pipeline.compose(router, assets.tokenizer, assets.layout)
    rows = check_mode(pipe, load_image(fixture_dir / "page.png"), gold, mode)
    assert router.calls["step"] == len(gold[f"{mode}.step_logits"]) and router.calls["prefill"] == 1
    assert not [(r.quantity, r.error) for r in rows if not r.ok]
    assert next(r for r in rows if r.quantity == "greedy_ids").error == 0


def test_gather_formulation_in_torch_equals_sparse():
    torch.manual_seed(0)
    cfg = DecoderConfig(hidden_size=64, moe_intermediate_size=16, n_routed_experts=8, num_experts_per_tok=3)
    moe = MoE(cfg).eval().requires_grad_(False)
    x = torch.randn(3, 2, 64)
    ref = moe(x)
    keys = set(moe.state_dict())
    moe.formulation = "gather"
    got = moe(x)
    assert set(moe.state_dict()) - keys == {"stack_gate", "stack_up", "stack_down"}  # official keys stay
    assert float((got - ref).abs().max() / ref.abs().max()) <= REL
    moe.experts[2].up_proj.weight.mul_(2)  # experts are views into the stacks: both formulations see it
    assert torch.allclose(moe.stack_up[2], moe.experts[2].up_proj.weight.t())
