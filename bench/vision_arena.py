"""Vision graphs and ORT's CPU memory arena: peak RSS, resident memory after the call, latency.

    python bench/vision_arena.py --bundle DIR [--size 1024] [--batch 1] [--runs 2]

A vision call allocates GB-sized activations (SAM's global attention at 1024: [12, 4096, 4096] fp32
= 805 MB per tensor). Configurations:
    on      the arena (ORT's default; dsocr before): activations stay reserved after the call
    off     no arena: every allocation from the OS
    shrink  the arena, shrunk at the end of each run (RunOptions memory.enable_memory_arena_shrinkage
            = cpu:0): what OrtBackend does for vision runs now
Each configuration runs in a fresh process (peak RSS is per process), alternating, `runs` times; the
best latency of 3 calls.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MODES = ("on", "off", "shrink")


def child(bundle: Path, size: int, batch: int, mode: str) -> dict:
    import onnxruntime as ort

    from dsocr.runtime.manifest import read_manifest

    spec = read_manifest(bundle, verify_files=False).vision_graph(size)
    so = ort.SessionOptions()
    so.enable_cpu_mem_arena = mode != "off"
    s = ort.InferenceSession(str(bundle / spec.file), so, providers=["CPUExecutionProvider"])
    ro = ort.RunOptions()
    if mode == "shrink":
        ro.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    x = np.zeros((batch, 3, size, size), np.float32)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        s.run(None, {"pixel_values": x}, ro)
        times.append(time.perf_counter() - t)
    with open("/proc/self/statm") as f:
        after = int(f.read().split()[1]) * 4096
    return {"mode": mode, "best_s": min(times), "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "rss_after_load": loaded, "rss_after_calls": after}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--child", choices=MODES)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.bundle, a.size, a.batch, a.child)))
        return
    rows = {m: [] for m in MODES}
    for _ in range(a.runs):
        for arena in MODES:
            cmd = [sys.executable, __file__, "--bundle", str(a.bundle), "--size", str(a.size), "--batch", str(a.batch),
                   "--child", arena]
            rows[arena].append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    print(f"vision {a.size}px batch {a.batch}, {a.runs} processes each")
    print(f"{'arena':<6} {'best s':>8} {'peak RSS GiB':>13} {'RSS after calls GiB':>20} {'after load GiB':>15}")
    for k, rs in rows.items():
        print(f"{k:<6} {min(r['best_s'] for r in rs):8.2f} {max(r['peak_rss'] for r in rs) / 2**30:13.2f} "
              f"{max(r['rss_after_calls'] for r in rs) / 2**30:20.2f} {max(r['rss_after_load'] for r in rs) / 2**30:15.2f}")


if __name__ == "__main__":
    main()
