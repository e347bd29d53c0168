"""What separates looping from normal text for the loop guard (runtime.decoding.LoopDetector):
the zlib compression ratio of the decoded tail, over windows of the guard's size, for real markdown,
source code, a table of numbers, a table of contents, and the demo model's own output.

    python bench/loop_ratio.py [--bundle bundles/small] [--window 512]

Texts are tokenized with the bundle's tokenizer (the demo's byte-level one by default); the demo
output is generated on the shipped sample page with the loop guard off.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np

from dsocr.runtime.decoding import GenerationOptions, LoopDetector
from dsocr.runtime.pipeline import Pipeline, RunOptions
from dsocr.runtime.preprocess import load_image

ROOT = Path(__file__).resolve().parents[1]


def synthetic_texts(words: list[str]) -> dict[str, str]:
    rng = random.Random(0)
    toc = "\n".join(f"{i}.{j} {' '.join(rng.sample(words, 3))} {'.' * rng.randint(20, 60)} {i * 7 + j}"
                    for i in range(1, 15) for j in range(1, 5))
    table = "| a | b | c | d |\n|---|---|---|---|\n" + "\n".join(
        "| " + " | ".join(f"{rng.random():.2f}" for _ in range(4)) + " |" for _ in range(200))
    html = "<table>" + "".join(f"<tr><td>{rng.choice(words)}</td>" + "".join(
        f"<td>{rng.randint(100, 99999):,}</td>" for _ in range(4)) + "</tr>" for _ in range(80)) + "</table>"
    return {"table of contents": toc, "markdown number table": table, "html number table": html}


def ratios(det: LoopDetector, ids: list[int], window: int, step: int = 32) -> list[float]:
    return [det.compression_ratio(ids[i:i + window]) for i in range(0, max(1, len(ids) - window + 1), step)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "small")
    ap.add_argument("--window", type=int, default=GenerationOptions().loop_window)
    a = ap.parse_args()
    pipe = Pipeline(a.bundle, max_seq_len=1400)
    tok = pipe.tokenizer
    det = LoopDetector(window=a.window, decode=tok.decode)
    arch = (ROOT / "tests" / "fixtures" / "reference" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    texts = {"README.md": (ROOT / "README.md").read_text(encoding="utf-8"), "ARCHITECTURE.md": arch,
             "runtime/decoding.py": (ROOT / "runtime" / "decoding.py").read_text(encoding="utf-8"),
             **synthetic_texts(arch.split())}
    print(f"compression ratio over {a.window}-id windows (loop guard threshold {GenerationOptions().loop_ratio})")
    for name, text in texts.items():
        r = ratios(det, tok.encode(text), a.window)
        print(f"  {name:<24} max {max(r):5.2f}  median {np.median(r):5.2f}")
    gen = GenerationOptions(max_new_tokens=1000, loop_detection=False)
    _, result = pipe.generate(load_image(ROOT / "runtime" / "data" / "sample_page.png"), RunOptions(generation=gen))
    r = ratios(det, result.ids, a.window)
    print(f"  {'demo model output':<24} min {min(r):5.2f}  median {np.median(r):5.2f}")


if __name__ == "__main__":
    main()
