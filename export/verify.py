"""verify: the exported graphs against the PyTorch model, on the same page through the same runtime
code (preprocessing, layout, runner); prints a table of errors per graph and mode.

Polygraphy compares single inference runs; this check drives the stateful decode loop (prefill, then
steps that read the cache the graphs wrote), so it compares the two backends with numpy directly.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsocr.runtime.backends.base import Backend
from dsocr.runtime.layout import assemble_prompt, layout_views, scatter_image_embeds
from dsocr.runtime.manifest import read_manifest
from dsocr.runtime.modes import get_mode
from dsocr.runtime.preprocess import load_image, preprocess
from dsocr.runtime.runner import BundleRunner

TOL = 1e-4  # x max|ref| for fp32 graphs


@dataclass(frozen=True)
class Diff:
    mode: str
    what: str
    rel_error: float
    tol: float

    @property
    def ok(self) -> bool:
        return self.rel_error <= self.tol


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / max(float(np.abs(ref).max()), 1e-30))


def _run(backend: Backend, layout, page, mode_name: str, prompt_ids, steps: int):
    mode = get_mode(mode_name)
    views = preprocess(page, mode)
    g = backend.vision(views.global_view)[0]
    t = backend.vision(views.tiles) if len(views.tiles) else None
    embeds = layout_views(mode.newlines, g, t, views.crop, *layout)
    ids, mask = assemble_prompt(prompt_ids[0], prompt_ids[1], len(embeds), prompt_ids[2], prompt_ids[3])
    prompt = scatter_image_embeds(backend.embed(ids[None])[0], mask, embeds)
    runner = BundleRunner(backend, max_seq_len=len(ids) + steps + 1)
    logits = [runner.prefill(prompt).copy()]
    for _ in range(steps):
        logits.append(runner.step(int(np.argmax(logits[-1]))).copy())
    return embeds, np.stack(logits)


def verify_bundle(bundle_dir: str | Path, checkpoint: str | Path | None = None, page=None,
                  steps: int = 8, tol: float = TOL) -> list[Diff]:
    """Compare every mode of a bundle with the PyTorch model of `checkpoint` (default: the one it came from)."""
    from dsocr.runtime.backends.ort import OrtBackend
    from dsocr.runtime.tokenizer import Tokenizer

    from .bundle import DEMO_SOURCE
    from .demo import write_demo_checkpoint
    from .model.ocr import DeepseekOCR
    from .torch_backend import TorchBackend

    bundle = Path(bundle_dir)
    manifest = read_manifest(bundle)
    with tempfile.TemporaryDirectory(prefix="dsocr-verify-") as tmp:
        ckpt = checkpoint or manifest.source.get("checkpoint", "")
        if checkpoint is None and ckpt == DEMO_SOURCE:
            ckpt = write_demo_checkpoint(Path(tmp) / "demo", generation=manifest.generation)
        torch_be = TorchBackend(DeepseekOCR.from_pretrained(Path(ckpt)))
    ort_be = OrtBackend(bundle, manifest)
    lay = np.load(bundle / manifest.layout_file)
    layout = (lay["image_newline"] if "image_newline" in lay.files else None, lay["view_separator"])  # OCR-2: none
    tok = Tokenizer.from_file(bundle / manifest.tokenizer)
    doc = manifest.prompts["document"]
    ids = (doc["before"], doc["after"], tok.special.image, tok.special.bos)
    page = load_image(page) if page is not None else _sample_page()
    diffs = []
    for m in manifest.modes:
        e_ref, l_ref = _run(torch_be, torch_be.layout_vectors(), page, m, ids, steps)
        e_got, l_got = _run(ort_be, layout, page, m, ids, steps)
        diffs += [Diff(m, "vision+layout", rel_err(e_got, e_ref), tol),
                  Diff(m, "prefill logits", rel_err(l_got[0], l_ref[0]), tol),
                  Diff(m, f"{steps} step logits", rel_err(l_got[1:], l_ref[1:]), tol)]
    return diffs


def _sample_page():
    from importlib.resources import files

    return load_image(files("dsocr.runtime.data").joinpath("sample_page.png").read_bytes())


def format_diffs(diffs: list[Diff]) -> str:
    lines = [f"{'mode':<8} {'check':<18} {'max rel err':>12} {'tol':>8}  result"]
    lines += [f"{d.mode:<8} {d.what:<18} {d.rel_error:>12.3e} {d.tol:>8.0e}  {'ok' if d.ok else 'FAIL'}" for d in diffs]
    return "\n".join(lines)
