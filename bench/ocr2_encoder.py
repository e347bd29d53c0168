"""Full-size vision encoders on the CPU: DeepSeek-OCR-2 (SAM + Qwen2 encoder) side by side with DeepSeek-OCR
(SAM + CLIP-L), dsocr's PyTorch model in eager mode against dsocr's ONNX Runtime fp32 graphs, in one run:

    python bench/ocr2_encoder.py [--repeats 2] [--threads N] [--work build/bench_ocr2]

Each generation gets a vision-only checkpoint: the real encoder config (tests/fixtures/reference/{,ocr2/}
config.json) with deterministic rule weights, and a one-layer decoder with a 512-token vocabulary (the
decoder is not measured; it only keeps the bundle complete). Its bundle (mode gundam resp. ocr2) is built
once under --work and reused. Every (generation, backend) runs in its own process, so each peak RSS is
its own. Memory: the weights are ~1.5 GB fp32 per copy, but the page row runs its 6 tiles as one batch
(as the runtime does), and SAM's global-attention blocks then hold several [6, 12, T, T] tensors
(T = 1600 at 640 px, 2304 at 768 px). Measured peak RSS on a loaded 2-core machine: v1 eager 4.6 GiB,
v1 ORT 6.0 GiB (each vision session also holds its own weights), v2 eager above 6 GiB. Give it ~8 GB
free and a quiet machine; the first run also builds ~6 GB of checkpoints and bundles under --work.

Rows: one tile (v1 640 px, v2 768 px; batch 1), the 1024 px global view, and a page end to end
(preprocess + tiles + global + layout through the runtime pipeline) on the shipped portrait sample page
(794x1123 -> 2x3 tiles in both generations). Median of --repeats after one warm-up.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import batching  # noqa: E402  (batching.timed: median of repeats after a warm-up)

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "fixtures" / "reference"
SAMPLE = ROOT / "runtime" / "data" / "sample_page.png"
GENERATIONS = {  # generation -> (reference config dir, mode, tile side)
    "ocr1": (REFERENCE, "gundam", 640),
    "ocr2": (REFERENCE / "ocr2", "ocr2", 768),
}
SMALL_DECODER = {"num_hidden_layers": 1, "vocab_size": 512}


def vision_only_config(generation: str) -> dict:
    """The real config.json with the decoder cut to one dense layer and a 512-token vocabulary."""
    cfg = json.loads((GENERATIONS[generation][0] / "config.json").read_text(encoding="utf-8"))
    cfg.update(SMALL_DECODER)
    if isinstance(cfg.get("language_config"), dict):
        cfg["language_config"].update(SMALL_DECODER)
    cfg["torch_dtype"] = "float32"
    return cfg


def prepare(generation: str, work: Path) -> Path:
    """Checkpoint (rule weights) -> bundle under work/<generation>; reused when already built."""
    bundle = work / generation / "bundle"
    if (bundle / "manifest.json").is_file():
        return bundle
    from dsocr.export.bundle import BuildOptions, build_bundle
    from dsocr.export.demo import state_shapes
    from dsocr.export.demo_tokenizer import build_demo_tokenizer
    from dsocr.export.weights import write_rule_checkpoint

    cfg = vision_only_config(generation)
    ckpt = work / generation / "ckpt"
    write_rule_checkpoint(ckpt, state_shapes(cfg, generation), cfg)
    build_demo_tokenizer(SMALL_DECODER["vocab_size"]).save(str(ckpt / "tokenizer.json"))
    mode = GENERATIONS[generation][1]
    build_bundle(ckpt, bundle, BuildOptions(modes=(mode,), max_seq_len=2048, overwrite=True, progress=True))
    return bundle


def measure(generation: str, backend: str, work: Path, repeats: int, threads: int | None) -> dict:
    """One (generation, backend): tile, global view and page latencies (s), peak RSS (GiB)."""
    import numpy as np

    from dsocr.runtime.pipeline import BundleAssets, Pipeline
    from dsocr.runtime.preprocess import load_image

    bundle = work / generation / "bundle"
    assets = BundleAssets.load(bundle)
    if backend == "eager":
        import torch

        from dsocr.export.model.ocr import DeepseekOCR
        from dsocr.export.torch_backend import TorchBackend

        if threads:
            torch.set_num_threads(threads)
        be = TorchBackend(DeepseekOCR.from_pretrained(work / generation / "ckpt"))
        ctx = torch.inference_mode()
    else:
        import contextlib

        from dsocr.runtime.backends.ort import OrtBackend

        be = OrtBackend(bundle, assets.manifest, threads=threads)
        ctx = contextlib.nullcontext()
    pipe = Pipeline.from_assets(assets, be)
    _, mode, tile = GENERATIONS[generation]
    rng = np.random.default_rng(0)
    tile_px = rng.uniform(-1, 1, (1, 3, tile, tile)).astype(np.float32)
    glob_px = rng.uniform(-1, 1, (1, 3, 1024, 1024)).astype(np.float32)
    page = load_image(SAMPLE)
    m = pipe.mode(mode)
    with ctx:
        rows = {
            "tile": batching.timed(lambda: be.vision(tile_px), repeats),
            "global": batching.timed(lambda: be.vision(glob_px), repeats),
            "page": batching.timed(lambda: pipe.image_embeddings(page, m), repeats),
        }
        _, crop = pipe.image_embeddings(page, m)
    rows["crop"] = list(crop)
    rows["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return rows


def _child(args, *extra) -> dict:
    cmd = [sys.executable, __file__, "--work", str(args.work), "--repeats", str(args.repeats), *extra]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(results: dict) -> str:
    lines = [f"{'':<22} {'v1 eager':>9} {'v1 ORT':>8} {'v1 x':>6} {'v2 eager':>9} {'v2 ORT':>8} {'v2 x':>6}"
             f" {'v2/v1 eager':>11} {'v2/v1 ORT':>9}"]
    labels = {"tile": "tile (v1 640, v2 768)", "global": "global view 1024", "page": "page 2x3 tiles"}
    for key, label in labels.items():
        e1, o1 = results["ocr1"]["eager"][key], results["ocr1"]["ort"][key]
        e2, o2 = results["ocr2"]["eager"][key], results["ocr2"]["ort"][key]
        lines.append(f"{label:<22} {e1:>8.2f}s {o1:>7.2f}s {e1 / o1:>5.2f}x {e2:>8.2f}s {o2:>7.2f}s {e2 / o2:>5.2f}x"
                     f" {e2 / e1:>10.2f}x {o2 / o1:>8.2f}x")
    rss = "  ".join(f"{g} {b} {results[g][b]['peak_rss_gib']:.2f}" for g in results for b in results[g])
    lines.append(f"peak RSS (GiB): {rss}")
    lines.append("crops: " + ", ".join(f"{g} {results[g]['ort']['crop']}" for g in results))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench_ocr2")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--child", nargs=2, metavar=("GENERATION", "BACKEND"), help=argparse.SUPPRESS)
    ap.add_argument("--prepare", metavar="GENERATION", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.prepare:
        prepare(args.prepare, args.work)
        print(json.dumps({"ok": True}))
        return
    if args.child:
        print(json.dumps(measure(*args.child, args.work, args.repeats, args.threads)))
        return
    results: dict = {}
    for gen in GENERATIONS:
        t = time.time()
        _child(args, "--prepare", gen)
        print(f"[{gen}] bundle ready ({time.time() - t:.0f} s)", flush=True)
        results[gen] = {b: _child(args, "--child", gen, b) for b in ("eager", "ort")}
        print(f"[{gen}] measured: {json.dumps(results[gen])}", flush=True)
    print(report(results))


if __name__ == "__main__":
    main()
