"""This machine's memory bandwidth, from large arrays (2 GiB each, far beyond any cache):

    python bench/membw.py [--gib 2] [--repeats 5] [--json out.json]

    copy       numpy copy a -> b, one thread; bytes = read + write (2 x size); the usual STREAM copy
    copy_mt    the same split over one thread per physical core
    read_mt    a sum over the array, one thread per physical core; bytes = size
    gemv       y = W x through numpy's BLAS (its threads); bytes = size of W (what a decode step does)

Best of `repeats` each. `ceiling_gbs` is the highest of them: the fastest rate at which this machine
was seen to move bytes from DRAM, so a decode rate compared with it is not flattered.
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np
import psutil


def _best(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _threaded(fn, n: int, k: int):
    bounds = [(i * n // k, (i + 1) * n // k) for i in range(k)]

    def run():
        ts = [threading.Thread(target=fn, args=b) for b in bounds]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    return run


def _copies(a: np.ndarray, k: int, repeats: int) -> tuple[float, float]:
    """-> (1-thread, k-thread) copy bandwidth in GB/s, read + write bytes."""
    b = np.empty_like(a)
    one = 2 * a.nbytes / _best(lambda: np.copyto(b, a), repeats) / 1e9
    many = 2 * a.nbytes / _best(_threaded(lambda s, e: np.copyto(b[s:e], a[s:e]), a.size, k), repeats) / 1e9
    return one, many


def measure(gib: float = 2.0, repeats: int = 5) -> dict:
    n = int(gib * 2**30) // 4 // 1280 * 1280
    a = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    k = psutil.cpu_count(logical=False) or 1
    out = {"array_bytes": a.nbytes, "threads": k}
    out["copy_gbs"], out["copy_mt_gbs"] = _copies(a, k, repeats)
    out["read_mt_gbs"] = a.nbytes / _best(_threaded(lambda s, e: np.add.reduce(a[s:e]), n, k), repeats) / 1e9
    w, x = a.reshape(-1, 1280), np.ones(1280, np.float32)
    out["gemv_gbs"] = w.nbytes / _best(lambda: w @ x, repeats) / 1e9
    out["ceiling_gbs"] = max(out[k] for k in ("copy_gbs", "copy_mt_gbs", "read_mt_gbs", "gemv_gbs"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    r = measure(a.gib, a.repeats)
    print("    " + ", ".join(f"{k} {v:.1f} GB/s" for k, v in r.items() if k.endswith("_gbs")), flush=True)
    if a.json:
        a.json.write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
