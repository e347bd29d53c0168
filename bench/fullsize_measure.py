"""One phase of one backend of the full-size CPU benchmark, in its own process (its peak RSS is its own):

    python bench/fullsize_measure.py --phase encoders --backend eager|ort --bundle FP32_BUNDLE [--ckpt DIR] --out r.json
    python bench/fullsize_measure.py --phase decode --backend eager|ort --bundle BUNDLE [--ckpt DIR] --out r.json \
        --embeds ENCODERS_RESULT.npz [--ort-config k=v ...]

On the shipped portrait sample page (794x1123 -> Gundam 2x3 = 6 tiles):
  encoders  encoder latency per mode (vision graphs + layout, after preprocessing); saves the Small
            and Base image embeddings. ORT: vision sessions only (no decoder in the process).
  decode    prefill latency of the Small and Base prompts (image embeddings from the encoders
            phase), and one Small page end to end (preprocess, encoder, embed, prefill, 256 greedy
            steps with no stopping) whose steps give the decode tokens/s. ORT: decoder, embed and
            the 640 vision graph only.
  batching  aggregate decode tokens/s at --slots (bench/batching.decode: one pass advances every
            slot; rounds interleaved over the slot counts), the KV bytes per slot and the RSS after
            each slot count (ORT only).
  job       --pages pages of the calibration page generator (Small), --max-new tokens each:
            BatchEngine(--slots' largest) against the pages one after another (Pipeline.generate,
            today's `dsocr run`); ids must be equal (bench/batching.job16; ORT only).
Both backends run the same runtime code (a Pipeline composed over the Backend interface); eager is dsocr's
PyTorch model (fp32, torch.inference_mode, the same threads), loaded whole in both phases.

Letters: T prompt tokens, N image tokens, D hidden, V vocab.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import batching  # noqa: E402

from dsocr.runtime.manifest import read_manifest
from dsocr.runtime.modes import get_mode
from dsocr.runtime.pipeline import Pipeline, RunOptions
from dsocr.runtime.preprocess import load_image, preprocess
from dsocr.runtime.tokenizer import Tokenizer

SAMPLE = Path(__file__).resolve().parents[1] / "runtime" / "data" / "sample_page.png"
ENCODER_MODES = ("tiny", "small", "base", "gundam")
PREFILL_MODES = ("small", "base")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def log(msg: str) -> None:
    print(f"    {msg}", flush=True)


def _ort_backend(a):
    """ORT sessions load lazily (SessionCache): a phase loads only the graphs it runs."""
    from dsocr.runtime.backends.ort import OrtBackend

    config = dict(kv.split("=", 1) for kv in a.ort_config)
    return OrtBackend(a.bundle, read_manifest(a.bundle, verify_files=False), threads=a.threads, session_config=config)


def open_backend(a) -> tuple[object, float]:
    """-> (backend, seconds to load the sessions/weights the phase uses)."""
    t = time.perf_counter()
    if a.backend == "eager":
        import torch

        from dsocr.export.model.ocr import DeepseekOCR
        from dsocr.export.torch_backend import TorchBackend

        torch.set_num_threads(a.threads)
        backend = TorchBackend(DeepseekOCR.from_pretrained(a.ckpt, torch.float32), max_seq_len=a.max_seq_len)
    else:
        backend = _ort_backend(a)
        graphs = backend.manifest.graphs
        if a.phase in ("decode", "job"):
            files = [graphs["embed"].file, backend.manifest.vision_graph(get_mode("small").base_size).file]
        elif a.phase == "batching":
            files = [graphs["embed"].file]
        if a.phase in ("decode", "batching", "job"):  # the decoder graphs the passes run on (lazy otherwise:
            files += [graphs[k].file for k in ("decoder", "decoder_step")  # the first step would load one)
                      if k in graphs and (k == "decoder" or backend.step_graph)]
        else:
            files = [g.file for g in graphs.values() if g.role == "vision"]
        for f in files:  # create the sessions now (not inside a timing)
            backend.sessions.get(f)
    return backend, time.perf_counter() - t


class Bench:
    """Times the runtime Pipeline's parts (composed over either backend, with the bundle's tokenizer,
    layout vectors and document prompt ids)."""

    def __init__(self, backend, manifest, layout, tokenizer, repeats: int):
        self.backend, self.manifest, self.repeats = backend, manifest, repeats
        self.pipe = Pipeline.compose(backend, tokenizer, layout, manifest.kv.max_seq_len)
        self.runner = self.pipe.runner
        doc = manifest.prompts["document"]
        self.options = RunOptions(prompt_ids=(doc["before"], doc["after"]))

    def encode(self, views, mode) -> np.ndarray:  # -> image embeddings [N, D] in prompt order
        return self.pipe.encode(views)

    def prompt(self, embeds: np.ndarray) -> np.ndarray:  # -> prompt embeddings [T, D]
        return self.pipe.prompt_embeds(embeds, self.options)

    def best(self, fn) -> tuple[float, object]:
        times, out = [], None
        for _ in range(self.repeats):
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
        return min(times), out

    def encoders(self, page) -> tuple[dict, dict]:
        """-> (latency per mode, image embeddings [N, D] of the prefill modes)."""
        lat, embeds = {}, {}
        for name in [m for m in ENCODER_MODES if m in self.manifest.modes]:
            mode = get_mode(name)
            views = preprocess(page, mode)
            lat[name], emb = self.best(lambda: self.encode(views, mode))
            log(f"encoder {name:<6} {views.n_tiles} tiles: {lat[name]:.3f} s ({len(emb)} image tokens)")
            if name in PREFILL_MODES:
                embeds[name] = emb
        return lat, embeds

    def prefills(self, prompts: dict) -> tuple[dict, np.ndarray]:
        lat, logits = {}, None
        for name, emb in prompts.items():
            def once():
                self.runner.reset()
                return self.runner.prefill(emb).copy()
            lat[name], out = self.best(once)
            logits = out if name == "small" else logits
            log(f"prefill {name:<6} T={len(emb)}: {lat[name]:.3f} s")
        return lat, logits

    def page_small(self, page, tokens: int) -> dict:
        """One Small page end to end; the greedy steps (no stopping) give the decode rate."""
        mode = get_mode("small")
        t0 = time.perf_counter()
        views = preprocess(page, mode)
        t1 = time.perf_counter()
        embeds = self.encode(views, mode)
        prompt = self.prompt(embeds)
        t2 = time.perf_counter()
        self.runner.reset()
        logits = self.runner.prefill(prompt)
        t3 = time.perf_counter()
        steps, ids = [], []
        for _ in range(tokens):
            ids.append(int(np.argmax(logits)))
            s = time.perf_counter()
            logits = self.runner.step(ids[-1])
            steps.append(time.perf_counter() - s)
        t4 = time.perf_counter()
        return {"total_s": t4 - t0, "preprocess_s": t1 - t0, "encode_embed_s": t2 - t1, "prefill_s": t3 - t2,
                "decode_s": t4 - t3, "tokens": tokens, "prompt_tokens": len(prompt),
                "tokens_per_s": tokens / (t4 - t3), "step_ms_first16": 1e3 * float(np.median(steps[:16])),
                "step_ms_last16": 1e3 * float(np.median(steps[-16:])), "greedy_ids": ids[:32]}


def run(a) -> dict:
    manifest = read_manifest(a.bundle, verify_files=False)
    lay = np.load(Path(a.bundle) / manifest.layout_file)
    log(f"{a.phase}: load {a.backend} {a.bundle.name if a.backend == 'ort' else a.ckpt} ...")
    backend, load_s = open_backend(a)
    rss_loaded = rss_bytes()
    log(f"loaded in {load_s:.1f} s, RSS {rss_loaded / 2**30:.2f} GiB")
    bench = Bench(backend, manifest, (lay["image_newline"], lay["view_separator"]),
                  Tokenizer.from_file(Path(a.bundle) / manifest.tokenizer), a.repeats)
    page = load_image(SAMPLE)
    out = {"backend": a.backend, "phase": a.phase, "bundle": str(a.bundle), "threads": a.threads,
           "precision": manifest.precision if a.backend == "ort" else "fp32-eager", "ort_config": a.ort_config,
           "load_s": load_s, "rss_after_load_bytes": rss_loaded}
    if a.phase == "batching":
        prompt = bench.prompt(np.load(a.embeds)["small"])
        slots = [int(x) for x in a.slots.split(",")]
        rss_after = {}
        rates = batching.decode(bench.pipe, prompt, slots, a.steps, a.rounds, manifest.kv.max_seq_len,
                                prefill_all=False, on_batch=lambda b, r: rss_after.setdefault(str(b), rss_bytes()))
        from dsocr.runtime.engine import kv_bytes_per_slot

        out.update(decode_tok_s=rates, slots=slots, steps=a.steps, rounds=a.rounds, prompt_tokens=len(prompt),
                   kv_bytes_per_slot=kv_bytes_per_slot(manifest), kv_capacity=manifest.kv.max_seq_len,
                   rss_after_bytes=rss_after)
    elif a.phase == "job":
        from dsocr.calibration.pages import synthetic_pages

        imgs = synthetic_pages(a.pages)
        out["job"] = batching.job16(bench.pipe, a.pages, a.max_new, imgs, max(int(x) for x in a.slots.split(",")))
    elif a.phase == "encoders":
        for s in sorted({s for m in ENCODER_MODES if m in manifest.modes for s in get_mode(m).vision_sizes}):
            backend.vision(np.zeros((1, 3, s, s), np.float32))
        out["encoder_s"], embeds = bench.encoders(page)
        np.savez(a.out.with_suffix(".embeds.npz"), **embeds)
    else:
        embeds = np.load(a.embeds)
        prompts = {m: bench.prompt(embeds[m]) for m in PREFILL_MODES if m in embeds}
        out["prefill_s"], logits = bench.prefills(prompts)
        np.save(a.out.with_suffix(".logits.npy"), logits)
        side = get_mode("small").base_size
        backend.vision(np.zeros((1, 3, side, side), np.float32))  # warm-up of the page's vision graph
        runs = [bench.page_small(page, a.tokens) for _ in range(a.repeats)]
        page_small = out["page_small"] = dict(min(runs, key=lambda r: r["total_s"]))
        page_small.update(tokens_per_s=max(r["tokens_per_s"] for r in runs),
                          runs=[{k: r[k] for k in ("total_s", "tokens_per_s", "step_ms_first16", "step_ms_last16")}
                                for r in runs])
        log(f"decode {a.tokens} tokens, best of {a.repeats}: {page_small['tokens_per_s']:.2f} tok/s "
            f"(step {page_small['step_ms_first16']:.1f} -> {page_small['step_ms_last16']:.1f} ms); "
            f"small page end to end {page_small['total_s']:.2f} s")
    out.update(peak_rss_bytes=peak_rss_bytes(), loadavg=os.getloadavg())
    if a.phase == "decode":  # the machine's bandwidth right after the decode runs (after the peak RSS)
        import membw

        out["bandwidth_after"] = membw.measure(gib=1.0, repeats=3)
        log(f"bandwidth right after: {out['bandwidth_after']['ceiling_gbs']:.1f} GB/s")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", choices=("encoders", "decode", "batching", "job"), required=True)
    ap.add_argument("--backend", choices=("eager", "ort"), required=True)
    ap.add_argument("--embeds", type=Path, help="decode phase: the encoders phase's <out>.embeds.npz")
    ap.add_argument("--bundle", type=Path, required=True, help="eager: the fp32 bundle (prompt ids, layout)")
    ap.add_argument("--ckpt", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=psutil.cpu_count(logical=False))
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-seq-len", type=int, default=2048)
    ap.add_argument("--ort-config", nargs="*", default=[], help="session config entries key=value")
    ap.add_argument("--slots", default="1,4,8,16", help="batching: slot counts; job: its largest is the engine's")
    ap.add_argument("--steps", type=int, default=32, help="batching: timed passes per slot count and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--pages", type=int, default=16)
    ap.add_argument("--max-new", type=int, default=128)
    a = ap.parse_args()
    ctx = contextlib.nullcontext()
    if a.backend == "eager":
        import torch

        ctx = torch.inference_mode()
    with ctx:
        result = run(a)
    a.out.write_text(json.dumps(result, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
