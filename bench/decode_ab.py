"""Decode-step settings side by side in one run: greedy steps through the runtime (BundleRunner over
OrtBackend), configurations interleaved round by round so that a load change on a shared machine
hits all of them alike.

    python bench/decode_ab.py --bundle DIR [--tokens 256] [--rounds 8] [--prompt 123]
                              [--configs before,after,nospin,threads1]

Configurations:
    before    the runner as it was: RoPE tables and the mask computed per step (rope_tables,
              attention_mask), ORT defaults (intra-op threads = physical cores, spinning on)
    after     the runner now: tables computed once and sliced, ORT defaults
    nospin    after + session.intra_op.allow_spinning=0
    threads1  after + intra_op_num_threads=1
    threadsN  after + intra_op_num_threads=N (any N)
    KEY=VALUE after + that ORT session config entry (e.g. session.dynamic_block_base=4)

Each configuration prefills the same random prompt (T tokens) into its own cache and takes 4
untimed steps (first-run costs of the T=1 shapes), then decodes tokens/rounds steps per round; the
order of the configurations rotates from round to round. Configurations with the same session
settings share one backend.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import psutil

from dsocr.runtime.backends.ort import OrtBackend
from dsocr.runtime.manifest import read_manifest
from dsocr.runtime.rope import attention_mask, rope_tables
from dsocr.runtime.runner import BundleRunner


class BeforeRunner(BundleRunner):
    """BundleRunner.forward (slot 0) as it was before the tables were precomputed (same results)."""

    def forward(self, slots, embeds: np.ndarray) -> np.ndarray:
        p, t = self.cache.length, embeds.shape[1]
        cos, sin = rope_tables(np.arange(p, p + t)[None], self.head_dim, self.theta)
        return self.backend.decode(embeds, cos, sin, attention_mask(p, t), self.cache)


def settings(name: str) -> tuple[type, int | None, dict]:
    """-> (runner class, intra-op threads or None for ORT's default, session config entries)."""
    if name == "before":
        return BeforeRunner, None, {}
    if name == "after":
        return BundleRunner, None, {}
    if name == "nospin":
        return BundleRunner, None, {"session.intra_op.allow_spinning": "0"}
    if "=" in name:
        key, value = name.split("=", 1)
        return BundleRunner, None, {key: value}
    if name.startswith("threads") and name[7:].isdigit():
        return BundleRunner, int(name[7:]), {}
    raise SystemExit(f"unknown configuration {name!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=123)
    ap.add_argument("--configs", default="before,after,nospin,threads1")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    manifest = read_manifest(a.bundle, verify_files=False)
    names = a.configs.split(",")
    backends, runners = {}, {}
    for name in names:
        cls, threads, config = settings(name)
        key = (threads, tuple(sorted(config.items())))
        if key not in backends:
            backends[key] = OrtBackend(a.bundle, manifest, threads=threads, session_config=config)
        runners[name] = cls(backends[key], manifest.kv.max_seq_len)
    prompt = np.random.default_rng(0).standard_normal((a.prompt, manifest.hidden_size), dtype=np.float32)
    logits = {n: r.prefill(prompt).copy() for n, r in runners.items()}
    for n, r in runners.items():  # warm-up, untimed
        for _ in range(4):
            logits[n] = r.step(int(np.argmax(logits[n]))).copy()
    steps = {n: [] for n in names}
    per_round = a.tokens // a.rounds
    print(f"{a.bundle.name}: {len(names)} configurations, {a.rounds} rounds x {per_round} steps after a "
          f"{a.prompt}-token prefill; physical cores {psutil.cpu_count(logical=False)}", flush=True)
    for r in range(a.rounds):
        for n in names[r % len(names):] + names[: r % len(names)]:
            runner = runners[n]
            tok = int(np.argmax(logits[n]))
            for _ in range(per_round):
                t = time.perf_counter()
                out = runner.step(tok)
                steps[n].append(time.perf_counter() - t)
                tok = int(np.argmax(out))
            logits[n] = out.copy()
        print(f"  round {r + 1}/{a.rounds}: " + ", ".join(
            f"{n} {1e3 * np.median(steps[n][-per_round:]):.1f} ms" for n in names), flush=True)
    base = names[0]
    rows = {}
    for n in names:
        s = np.array(steps[n])
        rows[n] = {"tokens_per_s": len(s) / s.sum(), "median_step_ms": 1e3 * float(np.median(s)),
                   "speedup_vs_" + base: float(np.median(steps[base]) / np.median(s))}
    print(f"{'config':<10} {'tok/s (mean)':>13} {'median ms':>10} {'speed-up (medians)':>19}")
    for n, row in rows.items():
        print(f"{n:<10} {row['tokens_per_s']:13.2f} {row['median_step_ms']:10.2f} {row['speedup_vs_' + base]:18.3f}x")
    same = len({int(np.argmax(v)) for v in logits.values()}) == 1
    print(f"greedy ids agree across configurations: {same}")
    if a.json:
        a.json.write_text(json.dumps({"bundle": str(a.bundle), "rows": rows, "ids_agree": same}, indent=1))


if __name__ == "__main__":
    main()
