"""verify: the exported graphs against the PyTorch model, on the same page through the same runtime
Pipeline (preprocessing, vision, layout, prompt, runner); prints a table of errors per graph and mode.

Polygraphy compares single inference runs; this check drives the stateful decode loop (prefill, then
steps that read the cache the graphs wrote), so it compares the two backends with numpy directly.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsocr.runtime.pipeline import Pipeline, RunOptions
from dsocr.runtime.preprocess import load_image

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


MAX_PROMPT = 1300  # the longest prompt of any mode (Gundam, 3x3 tiles: 273 + 31 * 30 = 1203 ids)


def _run(pipe: Pipeline, page, mode_name: str, prompt_ids, steps: int):
    """-> (image embeddings [N, D], logits [1 + steps, V]: prefill, then greedy steps without filters)."""
    prep = pipe.prepare(page, RunOptions(mode=mode_name, prompt_ids=prompt_ids))
    pipe.runner.reset()
    logits = [pipe.runner.prefill(prep.embeds).copy()]
    for _ in range(steps):
        logits.append(pipe.runner.step(int(np.argmax(logits[-1]))).copy())
    return prep.image_embeds, np.stack(logits)


def verify_bundle(bundle_dir: str | Path, checkpoint: str | Path | None = None, page=None,
                  steps: int = 8, tol: float = TOL) -> list[Diff]:
    """Compare every mode of a bundle, opened as `dsocr run` opens it, with a Pipeline over the
    PyTorch model of `checkpoint` (default: the one it came from), on the same page and prompt ids."""
    from .bundle import DEMO_SOURCE
    from .demo import write_demo_checkpoint
    from .model.ocr import DeepseekOCR
    from .torch_backend import TorchBackend

    bundle = Path(bundle_dir)
    got = Pipeline(bundle, max_seq_len=MAX_PROMPT + steps + 1)
    manifest = got.manifest
    with tempfile.TemporaryDirectory(prefix="dsocr-verify-") as tmp:
        ckpt = checkpoint or manifest.source.get("checkpoint", "")
        if checkpoint is None and ckpt == DEMO_SOURCE:
            ckpt = write_demo_checkpoint(Path(tmp) / "demo", generation=manifest.generation)
        torch_be = TorchBackend(DeepseekOCR.from_pretrained(Path(ckpt)))
    ref = Pipeline.compose(torch_be, got.tokenizer, torch_be.layout_vectors(), max_seq_len=MAX_PROMPT + steps + 1)
    doc = manifest.prompts["document"]
    ids = (doc["before"], doc["after"])
    page = load_image(page) if page is not None else _sample_page()
    diffs = []
    for m in manifest.modes:
        e_ref, l_ref = _run(ref, page, m, ids, steps)
        e_got, l_got = _run(got, page, m, ids, steps)
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
