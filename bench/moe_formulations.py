"""Cost of the two in-graph MoE formulations at full size (64 experts of 1280->896->1280, top-6), in
ONNX Runtime on this CPU: prefill (T tokens) and one-token decode. Prints ratios measured side by side.

    python bench/moe_formulations.py [--tokens 300] [--repeats 5]
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
from dsocr.runtime.config import DecoderConfig


def export(moe: MoE, path: Path) -> None:
    x = torch.randn(1, 4, moe.gate.in_features)
    torch.onnx.export(moe, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {1: "seq"}, "y": {1: "seq"}})


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
    args = ap.parse_args()
    torch.manual_seed(0)
    moe = MoE(DecoderConfig()).eval().requires_grad_(False)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for form in ("sparse", "dense"):
            moe.formulation = form
            path = Path(tmp) / f"{form}.onnx"
            export(moe, path)
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            rng = np.random.default_rng(0)
            pre = timeit(sess, rng.standard_normal((1, args.tokens, 1280), dtype=np.float32), args.repeats)
            dec = timeit(sess, rng.standard_normal((1, 1, 1280), dtype=np.float32), args.repeats * 4)
            rows[form] = (pre, dec)
    print(f"one MoE layer, full size, ORT CPU, best of {args.repeats}: prefill T={args.tokens}, decode T=1")
    print(f"{'formulation':<12} {'prefill ms':>11} {'decode ms':>10}")
    for form, (pre, dec) in rows.items():
        print(f"{form:<12} {pre * 1e3:>11.2f} {dec * 1e3:>10.3f}")
    s, d = rows["sparse"], rows["dense"]
    print(f"dense/sparse: prefill {d[0] / s[0]:.2f}x, decode {d[1] / s[1]:.2f}x")


if __name__ == "__main__":
    main()
