"""Where the time of a decode step (or of one vision graph) goes in ONNX Runtime on this CPU.

    python bench/profile_ort.py --bundle DIR [--steps 32] [--prompt 123] [--vision 640]

Runs the runtime's own path (OrtBackend + BundleRunner: IOBinding into the preallocated cache) with
ORT's profiler on, then splits each decode step into: Python side (rope/mask tables, embed session,
bindings), ORT's per-run framework cost, and kernel time per op type; counts kernels per step and how
many of them ran on empty tensors (MoE experts no token was routed to). Kernel times come from ORT's
profiler, which itself costs a few microseconds per kernel; compare shares, not absolute sums.

Letters: T prompt tokens, D hidden.
"""
from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import numpy as np

from dsocr.runtime.backends.ort import OrtBackend, SessionCache
from dsocr.runtime.manifest import read_manifest
from dsocr.runtime.runner import BundleRunner


PREFIX = "ort_profile"


def profiled_backend(bundle: Path, manifest, threads: int | None) -> OrtBackend:
    """An OrtBackend whose sessions have ORT's profiler on (files `<PREFIX>_<graph>_*.json`), through
    the SessionCache's configure hook."""
    def configure(options, file: str) -> None:
        options.enable_profiling = True
        options.profile_file_prefix = f"{PREFIX}_{Path(file).stem}"

    return OrtBackend(bundle, manifest, sessions=SessionCache(bundle, manifest, threads=threads, configure=configure))


def load_events(path: str) -> tuple[list[dict], list[dict]]:
    """-> (model_run events, kernel events) of one ORT profile file, times in microseconds."""
    events = json.loads(Path(path).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    kernels = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    return runs, kernels


def split_by_run(runs: list[dict], kernels: list[dict]) -> list[list[dict]]:
    starts = np.array([r["ts"] for r in runs])
    out: list[list[dict]] = [[] for _ in runs]
    for k in kernels:
        i = int(np.searchsorted(starts, k["ts"], side="right")) - 1
        if 0 <= i < len(runs):
            out[i].append(k)
    return out


def _empty(k: dict) -> bool:
    shapes = k.get("args", {}).get("output_type_shape") or []
    return any(0 in list(s.values())[0] for s in shapes if s)


def summarize(runs: list[dict], per_run: list[list[dict]], label: str, top: int = 12) -> dict:
    n = len(runs)
    run_us = float(np.mean([r["dur"] for r in runs]))
    by_op: dict[str, float] = collections.defaultdict(float)
    count = empty = 0
    for ks in per_run:
        for k in ks:
            by_op[k["args"].get("op_name", "?")] += k["dur"] / n
            count += 1
            empty += _empty(k)
    kern = sum(by_op.values())
    print(f"{label}: {n} runs, model_run {run_us / 1e3:.2f} ms, kernels {kern / 1e3:.2f} ms "
          f"({count / n:.0f} kernels/run, {empty / n:.0f} on empty tensors), "
          f"framework gap {(run_us - kern) / 1e3:.2f} ms")
    for op, us in sorted(by_op.items(), key=lambda x: -x[1])[:top]:
        print(f"    {op:<22} {us / 1e3:8.3f} ms  {100 * us / run_us:5.1f}%")
    return {"runs": n, "model_run_ms": run_us / 1e3, "kernels_ms": kern / 1e3, "kernels_per_run": count / n,
            "empty_kernels_per_run": empty / n, "by_op_ms": {k: v / 1e3 for k, v in by_op.items()}}


def profile_decoder(bundle: Path, steps: int, prompt: int, threads: int | None) -> dict:
    manifest = read_manifest(bundle, verify_files=False)
    backend = profiled_backend(bundle, manifest, threads)
    backend.sessions.get(manifest.graphs["embed"].file)
    runner = BundleRunner(backend, manifest.kv.max_seq_len)
    rng = np.random.default_rng(0)
    runner.prefill(rng.standard_normal((prompt, manifest.hidden_size), dtype=np.float32))
    walls, tok = [], 100
    for _ in range(steps):
        t = time.perf_counter()
        logits = runner.step(tok)
        walls.append(time.perf_counter() - t)
        tok = int(np.argmax(logits))
    files = {name: s.end_profiling() for name, s in backend.sessions.items()}
    runs, kernels = load_events(files[manifest.graphs["decoder"].file])
    per_run = split_by_run(runs, kernels)
    out = {"prefill": summarize(runs[:1], per_run[:1], f"prefill T={prompt}")}
    step_key = "decoder_step" if backend.step_graph else "decoder"  # the graph one-token passes ran on
    skip = 1 if step_key == "decoder" else 0  # the prefill graph's first run was the prefill
    runs, kernels = load_events(files[manifest.graphs[step_key].file])
    per_run = split_by_run(runs, kernels)
    out["step"] = summarize(runs[skip + 2:], per_run[skip + 2:], f"decode step on {step_key} (after 2 warm-up steps)")
    out["step"]["graph"] = step_key
    wall = float(np.mean(walls[2:])) * 1e3
    erun, _ = load_events(files[manifest.graphs["embed"].file])
    embed_ms = float(np.mean([r["dur"] for r in erun[1:]])) / 1e3
    out["step"].update(wall_ms=wall, embed_run_ms=embed_ms)
    print(f"decode step wall {wall:.2f} ms = decoder model_run {out['step']['model_run_ms']:.2f} + embed run "
          f"{embed_ms:.3f} + Python side {wall - out['step']['model_run_ms'] - embed_ms:.2f} ms")
    return out


def profile_vision(bundle: Path, size: int, threads: int | None) -> dict:
    manifest = read_manifest(bundle, verify_files=False)
    backend = profiled_backend(bundle, manifest, threads)
    x = np.zeros((1, 3, size, size), np.float32)
    for _ in range(2):
        backend.vision(x)
    f = dict(backend.sessions.items())[manifest.vision_graph(size).file].end_profiling()
    runs, kernels = load_events(f)
    return summarize(runs[1:], split_by_run(runs, kernels)[1:], f"vision {size}px")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=123)
    ap.add_argument("--vision", type=int, nargs="*", default=[])
    ap.add_argument("--threads", type=int)
    ap.add_argument("--prefix", default="/tmp/dsocr_ort_profile")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    global PREFIX
    PREFIX = a.prefix
    result = {"decoder": profile_decoder(a.bundle, a.steps, a.prompt, a.threads)}
    for s in a.vision:
        result[f"vision_{s}"] = profile_vision(a.bundle, s, a.threads)
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
