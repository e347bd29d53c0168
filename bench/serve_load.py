"""dsocr serve under load, and the Ray job against `dsocr run`, measured in one run on the demo bundle.

    pip install "torch==2.13.0" -e ".[export,serve,ray,dev]" && python bench/serve_load.py

1. A `dsocr serve` subprocess on 127.0.0.1; the official openai client from C threads (C = 1, 8, 32),
   each sending requests back to back (the sample page as a data: URL, max_tokens=--tokens):
   requests/s and p50 / p99 latency per C.
2. The same pages (--pages PDF pages, 144 dpi) through `dsocr run`'s batch loop (one Pipeline) and
   through `dsocr ray-run`'s job on a local Ray cluster (--actors actors): pages/s of each.
Pass --bundle to use a bundle of your own (otherwise the demo bundle is built under build/bench-demo).
"""
from __future__ import annotations

import argparse
import base64
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "runtime" / "data" / "sample_page.png"


def demo_bundle(path: Path) -> Path:
    if (path / "manifest.json").is_file():
        return path
    from dsocr.export.bundle import DEMO_SOURCE, BuildOptions, build_bundle
    from dsocr.export.demo import write_demo_checkpoint

    ckpt = write_demo_checkpoint(path.parent / "ckpt")
    build_bundle(ckpt, path, BuildOptions(modes=("small",), max_seq_len=1024, progress=False), source=DEMO_SOURCE)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: Path, batch: int, threads: int | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "dsocr.runtime.cli", "serve", "--model", str(bundle), "--port", str(port),
           "--batch", str(batch), "--max-queue", "256", "--log-level", "warning", "--served-model-name", "demo"]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready")


def load(url: str, clients: int, per_client: int, tokens: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    page = "data:image/png;base64," + base64.b64encode(PAGE.read_bytes()).decode()
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": page}},
                                         {"type": "text", "text": "Free OCR."}]}]

    def one(_):
        out = []
        for _ in range(per_client):
            t0 = time.perf_counter()
            client.chat.completions.create(model="demo", messages=msgs, max_tokens=tokens)
            out.append(time.perf_counter() - t0)
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lat = sorted(x for xs in pool.map(one, range(clients)) for x in xs)
    wall = time.perf_counter() - t0
    return {"n": len(lat), "rps": len(lat) / wall, "p50": statistics.median(lat),
            "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))]}


def pages_pdf(n: int, out: Path) -> Path:
    import pymupdf

    doc = pymupdf.open()
    for i in range(n):
        page = doc.new_page(width=595, height=842)
        page.insert_text((60, 100), f"Page {i + 1}", fontsize=24)
        page.insert_image(pymupdf.Rect(60, 140, 535, 700), filename=str(PAGE))
    doc.save(out)
    return out


def run_vs_ray(bundle: Path, n_pages: int, actors: int, tokens: int, threads: int | None) -> dict:
    import ray

    from dsocr.ray.job import run_job
    from dsocr.runtime.batch import iter_inputs, run_batch
    from dsocr.runtime.decoding import GenerationOptions
    from dsocr.runtime.pipeline import Pipeline, RunOptions

    tmp = Path(tempfile.mkdtemp(prefix="dsocr-bench-"))
    pdf = pages_pdf(n_pages, tmp / "pages.pdf")
    pipe = Pipeline(bundle, threads=threads)
    opts = RunOptions(generation=GenerationOptions(max_new_tokens=tokens))
    t0 = time.perf_counter()
    s = run_batch(iter_inputs([pdf]), lambda p: pipe.ocr(p, opts), tmp / "run", progress=False)
    t_run = time.perf_counter() - t0
    ray.init(num_cpus=actors, include_dashboard=False, log_to_driver=False, object_store_memory=500 * 2**20)
    kw = dict(bundle=str(bundle), max_new_tokens=tokens, threads=max(1, (threads or 2) // actors))
    t0 = time.perf_counter()
    r = run_job([pdf], tmp / "ray", kw, address=None, actors=actors, batch_size=1, num_cpus=0.5)
    t_ray = time.perf_counter() - t0  # includes starting the actors (loading the bundle in each)
    ray.shutdown()
    return {"pages": s.done, "run_pps": s.done / t_run, "ray_pages": r.done, "ray_pps": r.done / t_ray}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--tokens", type=int, default=8, help="max_tokens per request / page")
    ap.add_argument("--requests", type=int, default=64, help="about this many requests per concurrency level")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--batch", type=int, default=1, help="the server's --batch")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--pages", type=int, default=8)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--skip-ray", action="store_true")
    a = ap.parse_args()
    bundle = a.bundle or demo_bundle(ROOT / "build" / "bench-demo" / "bundle")
    proc, url = start_server(bundle, a.batch, a.threads)
    try:
        load(url, 1, 2, a.tokens)  # warm-up
        rows = [(c, load(url, c, max(1, a.requests // c), a.tokens)) for c in a.clients]
    finally:
        proc.terminate()
        proc.wait(60)
    print(f"\ndsocr serve, {bundle.name}, --batch {a.batch}, max_tokens={a.tokens}, sample page as a data: URL")
    print(f"{'clients':>8} {'requests':>9} {'req/s':>8} {'p50 s':>8} {'p99 s':>8}")
    for c, r in rows:
        print(f"{c:>8} {r['n']:>9} {r['rps']:>8.2f} {r['p50']:>8.2f} {r['p99']:>8.2f}")
    if not a.skip_ray:
        r = run_vs_ray(bundle, a.pages, a.actors, a.tokens, a.threads)
        print(f"\n{r['pages']} PDF pages at 144 dpi, max_new_tokens={a.tokens}")
        print(f"  dsocr run (one Pipeline):            {r['run_pps']:.2f} pages/s")
        print(f"  dsocr ray-run ({a.actors} actors, local Ray): {r['ray_pps']:.2f} pages/s "
              f"({r['ray_pps'] / r['run_pps']:.2f}x; actor start-up included)")


if __name__ == "__main__":
    main()
