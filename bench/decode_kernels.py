"""Nodes and ONNX Runtime kernels per decode step, MoE formulation by formulation, at the real expert
counts (64 experts, top-6, 12 layers, 2 shared) with reduced widths (hidden 256, expert 64) so that
it runs in little memory; kernel counts depend on the graph's structure, not its widths.

    python bench/decode_kernels.py [--hidden 256] [--expert 64] [--layers 12] [--steps 16]
                                   [--batch 1 4 8] [--json bench/results/decode_kernels.json]

For each formulation (sparse: the prefill graph, what every step ran before; gather: the decode-step
graph) and precision (fp32; int4-weight through the shipped calibration.variants.weight_only_file:
MatMulNBits only, where the gathered experts stay fp32, and "(QMoE)", what the int4-weight variant
ships for the decode-step graph: routed experts as one com.microsoft.QMoE per layer):
graph nodes, kernels per decode step (ORT profiler, after 2 warm-up steps), kernels on empty tensors,
best step time of --steps (an unprofiled session), and the logits' error against the sparse fp32
graph (max |d| / max |ref|). Graphs are kept in --workdir and reused by a later run.

Letters: B sequences (slots), T new tokens, P cached tokens, D hidden, V vocab.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_ort import _empty, load_events, split_by_run  # noqa: E402

from dsocr.export.demo import DEMO_CONFIG  # noqa: E402
from dsocr.export.model.ocr import DeepseekOCR  # noqa: E402
from dsocr.export.onnx_export import export_decoder  # noqa: E402
from dsocr.export.config import ModelConfig  # noqa: E402


def reduced_model(hidden: int, expert: int, layers: int, vocab: int, heads: int | None = None,
                  dense: int | None = None) -> DeepseekOCR:
    heads = heads or max(1, hidden // 64)  # head dim 64 (the real model: 10 heads of 128)
    cfg = dict(DEMO_CONFIG, hidden_size=hidden, moe_intermediate_size=expert, intermediate_size=dense or 4 * hidden,
               num_hidden_layers=layers, n_routed_experts=64, num_experts_per_tok=6, n_shared_experts=2,
               num_attention_heads=heads, num_key_value_heads=heads, vocab_size=vocab)
    cfg["projector_config"] = dict(cfg["projector_config"], n_embed=hidden)
    torch.manual_seed(0)
    model = DeepseekOCR(ModelConfig.from_dict(cfg)).eval().requires_grad_(False)
    for p in model.parameters():  # default init leaves RMSNorm gains at 1 and routing near uniform: fine
        p.normal_(0, 0.05)
    return model


def feeds(model: DeepseekOCR, batch: int, past: int, rng) -> dict[str, np.ndarray]:
    c = model.config.decoder
    f = {"inputs_embeds": rng.standard_normal((batch, 1, c.hidden_size), dtype=np.float32),
         "cos": np.ones((batch, 1, c.head_dim), np.float32), "sin": np.zeros((batch, 1, c.head_dim), np.float32),
         "attention_mask": np.zeros((batch, 1, 1, past + 1), np.float32)}
    for i in range(c.num_hidden_layers):
        for kv in ("key", "value"):
            f[f"past_{kv}.{i}"] = rng.standard_normal((batch, past, c.num_attention_heads, c.head_dim),
                                                      dtype=np.float32)
    return f


def session(path: Path, profile_prefix: str | None = None):
    """One CPU session, 2 intra-op threads; ORT's profiler on when profile_prefix is given."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    if profile_prefix:
        so.enable_profiling, so.profile_file_prefix = True, profile_prefix
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def kernels_per_step(sess, feeds_by_batch: dict, steps: int) -> dict:
    """Kernels per decode step per batch from one profiled session (runs grouped by batch)."""
    order = []
    for batch, feed in feeds_by_batch.items():
        for _ in range(steps):
            sess.run(["logits"], feed)
            order.append(batch)
    runs, kernels = load_events(sess.end_profiling())
    per = split_by_run(runs, kernels)
    out = {}
    for batch in feeds_by_batch:
        ks = [k for k, b in zip(per, order) if b == batch][2:]  # after 2 warm-up steps
        out[batch] = (float(np.mean([len(k) for k in ks])), float(np.mean([sum(_empty(x) for x in k) for k in ks])))
    return out


def timed(sess, feed: dict, steps: int) -> tuple[float, np.ndarray]:
    """Best step time (ms) of `steps` runs after one warm-up, and the logits."""
    logits = sess.run(["logits"], feed)[0]
    best = float("inf")
    for _ in range(steps):
        t = time.perf_counter()
        sess.run(["logits"], feed)
        best = min(best, time.perf_counter() - t)
    return best * 1e3, logits


def int4(src: Path, dst: Path, qmoe: bool) -> None:
    """The shipped int4-weight lowering (calibration.variants.weight_only_file: MatMulNBits at
    accuracy_level 4; qmoe: the decode-step graph's routed experts as com.microsoft.QMoE)."""
    from dsocr.calibration.variants import weight_only_file

    onnx.save_model(weight_only_file(src, 4, 32, gather=False, qmoe=qmoe), str(dst))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--expert", type=int, default=64)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, help="default hidden / 64 (the real model: 10)")
    ap.add_argument("--dense", type=int, help="the dense layer's FFN width (default 4 x hidden; real 6848)")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--past", type=int, default=128)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch", type=int, nargs="*", default=[1, 4, 8])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--workdir", type=Path, help="where the graphs are kept (default build/bench-decode-kernels-*)")
    a = ap.parse_args()
    model = reduced_model(a.hidden, a.expert, a.layers, a.vocab, a.heads, a.dense)
    rng = np.random.default_rng(0)
    feeds_by_batch = {b: feeds(model, b, a.past, rng) for b in a.batch}
    work = a.workdir or Path(__file__).resolve().parents[1] / "build" / (
        f"bench-decode-kernels-h{a.hidden}-e{a.expert}-L{a.layers}-v{a.vocab}-H{model.config.decoder.num_attention_heads}")
    work.mkdir(parents=True, exist_ok=True)  # graphs are made once per config and reused
    graphs = {}
    for form in ("sparse", "gather"):
        p = work / f"{form}.onnx"
        if not p.is_file():
            export_decoder(model, p, form)
        graphs[(form, "fp32")] = p
        for qmoe in (False, True) if form == "gather" else (False,):
            q = work / f"{form}-int4{'-qmoe' * qmoe}.onnx"
            if not q.is_file():
                int4(p, q, qmoe)
            graphs[(form, "int4-weight" + " (QMoE)" * qmoe)] = q
    rows, ref = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for (form, prec), path in graphs.items():
            nodes = len(onnx.load(str(path), load_external_data=False).graph.node)
            counts = kernels_per_step(session(path, str(Path(tmp) / f"prof_{form}_{prec[:4]}")), feeds_by_batch,
                                      a.steps)
            plain = session(path)  # one session at a time: memory stays at one graph's weights
            for batch, feed in feeds_by_batch.items():
                ms, logits = timed(plain, feed, a.steps)
                ref.setdefault(batch, logits)  # the sparse fp32 graph comes first
                r = {"formulation": form, "precision": prec, "batch": batch, "nodes": nodes,
                     "kernels_per_step": counts[batch][0], "empty_kernels_per_step": counts[batch][1],
                     "step_ms": ms, "logits_error_vs_sparse_fp32":
                     float(np.abs(logits - ref[batch]).max() / np.abs(ref[batch]).max())}
                rows.append(r)
                print(f"B={batch} {form:<7} {prec:<19} nodes {nodes:6d}  kernels/step {r['kernels_per_step']:8.0f} "
                      f"(empty {r['empty_kernels_per_step']:6.0f})  step {ms:7.2f} ms  "
                      f"err {r['logits_error_vs_sparse_fp32']:.1e}", flush=True)
            del plain
    result = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
              "config": {"hidden": a.hidden, "expert": a.expert, "layers": a.layers, "experts": 64, "top_k": 6,
                         "heads": model.config.decoder.num_attention_heads,
                         "dense_ffn": model.config.decoder.intermediate_size,
                         "vocab": a.vocab, "past": a.past, "threads": 2, "onnxruntime": ort.__version__,
                         "load_average_at_end": os.getloadavg()[0], "cpus": os.cpu_count()},
              "rows": rows}
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
