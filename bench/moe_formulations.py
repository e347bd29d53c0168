"""Cost of the in-graph MoE formulations at full size (64 experts of 1280->896->1280, top-6, + shared),
in ONNX Runtime on this CPU: prefill (T tokens) and one-token decode. Ratios measured side by side.

    python bench/moe_formulations.py [--tokens 300] [--repeats 5] [--int4]

sparse       each expert on its routed tokens only (what dsocr exports)
dense        every expert on every token, weighted by the (mostly zero) routing weights
--int4 adds, with 4-bit weights (block 32, symmetric, accuracy_level 4; router fp32):
sparse-int4  the sparse graph through MatMulNBitsQuantizer (what the int4 bundle runs)
qmoe-int4    one com.microsoft.QMoE node for the routed experts (bench/moe_qmoe.py)
The error column is max |y - y_torch| / max |y_torch| against the fp32 torch module.
The bytes column is what one decode step must read (6 of 64 experts + shared + router), and GB/s
is bytes / decode time: a formulation at the memory bandwidth reads no more than it must.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from dsocr.export.model.decoder import MoE
from dsocr.export.config import DecoderConfig


def export(moe: MoE, path: Path) -> None:
    x = torch.randn(1, 4, moe.gate.in_features)
    torch.onnx.export(moe, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {1: "seq"}, "y": {1: "seq"}})


def session(model_or_path) -> ort.InferenceSession:
    src = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"])


def decode_bytes(moe: MoE, bytes_per_param: float, experts_read: int) -> float:
    expert = sum(p.numel() for p in moe.experts[0].parameters())
    shared = sum(p.numel() for p in moe.shared_experts.parameters())
    return (experts_read * expert + shared) * bytes_per_param + moe.gate.weight.numel() * 4


def timeit(sess, x: np.ndarray, repeats: int) -> float:
    sess.run(None, {"x": x})
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {"x": x})
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--int4", action="store_true", help="also the 4-bit sparse graph and contrib QMoE")
    args = ap.parse_args()
    torch.manual_seed(0)
    moe = MoE(DecoderConfig()).eval().requires_grad_(False)
    rng = np.random.default_rng(0)
    x_pre = rng.standard_normal((1, args.tokens, 1280), dtype=np.float32)
    x_dec = rng.standard_normal((1, 1, 1280), dtype=np.float32)
    with torch.no_grad():
        ref = moe(torch.from_numpy(x_pre)).numpy()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for form in ("sparse", "dense"):
            moe.formulation = form
            path = Path(tmp) / f"{form}.onnx"
            export(moe, path)
            sessions[form] = (session(str(path)), 4.0, moe.top_k if form == "sparse" else len(moe.experts))
        moe.formulation = "sparse"
        if args.int4:
            import onnx

            from moe_qmoe import qmoe_model, weight_only

            sparse = onnx.load(str(Path(tmp) / "sparse.onnx"))
            sessions["sparse-int4"] = (session(weight_only(sparse, len(moe.experts))), 0.625, moe.top_k)
            sessions["qmoe-int4"] = (session(weight_only(qmoe_model(moe), len(moe.experts))), 0.625, moe.top_k)
        for form, (sess, bpp, read) in sessions.items():
            pre = timeit(sess, x_pre, args.repeats)
            dec = timeit(sess, x_dec, args.repeats * 4)
            y = sess.run(None, {"x": x_pre})[0]
            rows[form] = (pre, dec, float(np.abs(y - ref).max() / np.abs(ref).max()), decode_bytes(moe, bpp, read))
    print(f"one MoE layer, full size, ORT CPU, best of {args.repeats}: prefill T={args.tokens}, decode T=1")
    print(f"{'formulation':<12} {'prefill ms':>11} {'decode ms':>10} {'error':>8} {'MB/step':>8} {'GB/s':>6}")
    for form, (pre, dec, err, nbytes) in rows.items():
        print(f"{form:<12} {pre * 1e3:>11.2f} {dec * 1e3:>10.3f} {err:>8.1e} {nbytes / 1e6:>8.1f} {nbytes / dec / 1e9:>6.1f}")
    s, d = rows["sparse"], rows["dense"]
    print(f"dense/sparse: prefill {d[0] / s[0]:.2f}x, decode {d[1] / s[1]:.2f}x")
    if args.int4:
        s4, q4 = rows["sparse-int4"], rows["qmoe-int4"]
        print(f"sparse-int4/qmoe-int4: prefill {s4[0] / q4[0]:.2f}x, decode {s4[1] / q4[1]:.2f}x")


if __name__ == "__main__":
    main()
