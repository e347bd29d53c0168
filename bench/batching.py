"""Continuous batching, measured side by side in one run (CPU, ONNX Runtime, Small mode):

1. kv_bounds: one decoder pass over 8 slots at several fill levels, per past bound (kv_cache.py):
   "window" (the default: a working copy over the longest slot, appended in place), "full" (the
   whole capacity, no copy, attention reads S_max), "gather" (a fresh copy of the longest prefix
   every pass).
2. decode: aggregate decode tokens/s at batch 1, 4, 8, 16 (every slot prefilled with the sample page's
   prompt, then greedy passes over all slots), rounds interleaved, median per batch.
3. job16: 16 pages (the sample page and PDF pages, rotated and cropped variants) through
   BatchEngine(max_batch=16) vs the same pages one after another with Pipeline.generate; the ids of
   every page must be equal.

On the demo bundle and on a wider reduced model (6 layers, 16 experts of 256, vocab 8192).

    python bench/batching.py [--quick] [--out bench/results/batching.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "batching"
WIDE = {"num_hidden_layers": 6, "moe_intermediate_size": 256, "n_routed_experts": 16, "intermediate_size": 2048,
        "vocab_size": 8192, "_name_or_path": "dsocr/bench wider reduced model (rule weights)"}
MAX_SEQ = 1024


def bundle(name: str) -> Path:
    from dsocr.export.bundle import DEMO_SOURCE, BuildOptions, build_bundle
    from dsocr.export.demo import DEMO_CONFIG, write_demo_checkpoint

    out = BUILD / name
    if not (out / "manifest.json").is_file():
        config = dict(DEMO_CONFIG, **(WIDE if name == "wide" else {}))
        ckpt = write_demo_checkpoint(BUILD / f"{name}-ckpt", config)
        build_bundle(ckpt, out, BuildOptions(modes=("small",), max_seq_len=MAX_SEQ, progress=False, overwrite=True),
                     source=DEMO_SOURCE)
    return out


def pages(n: int):
    from PIL import Image

    from dsocr.runtime.pdf import render_pdf

    base = [Image.open(ROOT / "runtime/data/sample_page.png").convert("RGB")]
    base += [im for _, im in render_pdf(ROOT / "runtime/data/sample.pdf", 144)]
    out = []
    for k in range(n):
        im = base[k % len(base)]
        w, h = im.size
        c = (k // len(base)) * 17
        out.append(im.crop((c, c, w - c // 2, h - c)).rotate(90 * (k % 2), expand=True))
    return out


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def kv_bounds(pipe, prompt, quick: bool) -> list[dict]:
    from dsocr.runtime.runner import BundleRunner

    rows = []
    for fill in ([256, 768] if quick else [128, 256, 512, 768, 1000]):
        per = {}
        for policy in ("window", "full", "gather"):
            r = BundleRunner(pipe.backend, MAX_SEQ, slots=8, policy=policy)
            for s in range(8):
                r.prefill_slot(s, prompt[: min(len(prompt), fill)])
                r.cache.lengths[s] = fill - 1  # positions past the prompt hold zeros: same cost, any values
            def one():
                r.step_slots(range(8), [5] * 8)
                r.cache.lengths[:] -= 1
            per[policy] = timed(one, 3 if quick else 7)
        rows.append({"batch": 8, "filled": fill, "capacity": MAX_SEQ, **{f"{k}_ms": 1e3 * v for k, v in per.items()}})
        print(f"  kv bound, 8 slots at {fill}/{MAX_SEQ}: " + ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in per.items()),
              flush=True)
    return rows


def decode(pipe, prompt, batches, steps: int, rounds: int, max_seq: int = MAX_SEQ, prefill_all: bool = True,
           on_batch=None) -> dict:
    """Aggregate decode tokens/s per batch size, rounds interleaved (every round visits every batch
    size, after an untimed warm-up round), median per batch. Each round makes its runner anew (only
    one batch's KV is resident).
    prefill_all=False prefills slot 0 only and gives the other slots its length (their positions
    hold zeros: same cost per pass, any values), for models whose prefill is slow. on_batch(b, runner)
    is called after each batch's timed passes (e.g. to sample the RSS)."""
    from dsocr.runtime.runner import BundleRunner

    rates = {b: [] for b in batches}
    for k in range(rounds + 1):  # round 0 warms every batch size up (arena sizes, thread pools), untimed
        for b in batches:
            r = BundleRunner(pipe.backend, max_seq, slots=b)
            first = int(np.argmax(r.prefill_slot(0, prompt)))
            for s in range(1, b):
                if prefill_all:
                    r.prefill_slot(s, prompt)
                else:
                    r.cache.lengths[s] = r.cache.lengths[0]
            tokens = [first] * b
            tokens = np.argmax(r.step_slots(range(b), tokens), axis=-1).tolist()  # warm-up pass
            t0 = time.perf_counter()
            for _ in range(steps):
                tokens = np.argmax(r.step_slots(range(b), tokens), axis=-1).tolist()
            if k:
                rates[b].append(b * steps / (time.perf_counter() - t0))
            if on_batch:
                on_batch(b, r)
            del r
    out = {str(b): statistics.median(v) for b, v in rates.items()}
    for b in batches:
        print(f"  decode batch {b:>2}: {out[str(b)]:8.1f} tok/s", flush=True)
    return out


def job16(pipe, n_pages: int, max_new: int, imgs=None, max_batch: int | None = None) -> dict:
    """`n_pages` pages through BatchEngine(max_batch) against the same pages one after another with
    Pipeline.generate (today's `dsocr run`); the ids of every page must be equal."""
    from dsocr.runtime.decoding import GenerationOptions
    from dsocr.runtime.engine import BatchEngine
    from dsocr.runtime.pipeline import RunOptions

    imgs = imgs if imgs is not None else pages(n_pages)
    max_batch = max_batch or n_pages
    opts = RunOptions(generation=GenerationOptions(max_new_tokens=max_new))
    pipe.generate(imgs[0], opts)  # warm-up
    t0 = time.perf_counter()
    seq = [pipe.generate(im, opts)[1].ids for im in imgs]
    t_seq = time.perf_counter() - t0
    engine = BatchEngine(pipe, max_batch=max_batch)
    t0 = time.perf_counter()
    futures = [engine.submit(im, opts) for im in imgs]
    engine.run_until_idle()
    t_batch = time.perf_counter() - t0
    ids = [f.result()[1].ids for f in futures]
    tokens = sum(len(i) for i in seq)
    print(f"  {n_pages}-page job: sequential {t_seq:.1f} s, batched ({max_batch} slots) {t_batch:.1f} s "
          f"({t_seq / t_batch:.2f}x), {tokens} tokens, same ids: {ids == seq}", flush=True)
    return {"pages": n_pages, "max_batch": max_batch, "max_new_tokens": max_new, "tokens": tokens,
            "sequential_s": t_seq, "batched_s": t_batch, "job16_vs_sequential": t_seq / t_batch,
            "pages_per_hour_sequential": 3600 * n_pages / t_seq, "pages_per_hour_batched": 3600 * n_pages / t_batch,
            "same_ids": ids == seq}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    ap.add_argument("--models", default="demo,wide")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/batching.json")
    args = ap.parse_args()
    from dsocr.runtime.pipeline import Pipeline

    steps, rounds = (16, 2) if args.quick else (32, 3)
    result = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "models": {}}
    for name in args.models.split(","):
        print(f"{name}:", flush=True)
        pipe = Pipeline(bundle(name), threads=args.threads)
        prompt = pipe.prepare(pages(1)[0]).embeds
        m = pipe.manifest
        rec = {"layers": m.kv.num_layers, "vocab": m.vocab_size, "prompt_tokens": int(len(prompt)),
               "kv_capacity": MAX_SEQ, "kv_bounds": kv_bounds(pipe, prompt, args.quick),
               "decode_tok_s": decode(pipe, prompt, (1, 4, 8, 16), steps, rounds)}
        d = rec["decode_tok_s"]
        rec["batch8_vs_batch1"] = d["8"] / d["1"]
        rec["batch16_vs_batch1"] = d["16"] / d["1"]
        rec["job16"] = job16(pipe, 16, 24 if args.quick else 48)
        result["models"][name] = rec
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
