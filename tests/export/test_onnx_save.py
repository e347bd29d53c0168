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
