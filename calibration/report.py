"""Precision report: a variant bundle against the fp32 bundle on the same pages, per mode.

Per page, through the runtime Pipeline on ONNX Runtime (CPU):
  1. fp32 runs greedy (the pipeline's own decoding rules) for up to `max_new_tokens` ids, recording
     its logits at every position.
  2. The variant is teacher-forced on those ids: same prompt, then the fp32 ids fed back, so its
     logits are compared position by position: cosine, and top-1 agreement (argmax equal).
  3. "vision top-1": the fp32 decoder teacher-forced with the variant's image embeddings, which
     isolates what the vision graphs change.
  4. The variant runs greedy on its own; character edit distance of its text to the fp32 text, and
     whether the loop guard stopped it (the loop rate per mode; fp32's beside it).
Letters: L generated ids, V vocab.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from dsocr.runtime.decoding import GenerationOptions, StopReason
from dsocr.runtime.pipeline import Pipeline, RunOptions

from .sensitivity import cosine


class _Recorder:
    """A Runner that keeps a copy of every logits vector the wrapped runner returns."""

    def __init__(self, runner):
        self.runner, self.logits = runner, []

    @property
    def position(self) -> int:
        return self.runner.position

    def reset(self) -> None:
        self.runner.reset()
        self.logits = []

    def prefill(self, input_embeds):
        out = self.runner.prefill(input_embeds)
        self.logits.append(np.array(out, np.float32))
        return out

    def step(self, token_id: int):
        out = self.runner.step(token_id)
        self.logits.append(np.array(out, np.float32))
        return out


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance in characters (insert, delete, substitute all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = np.arange(len(b) + 1)
    codes = np.array([ord(c) for c in b])
    for i, ch in enumerate(a, 1):
        cur = np.empty_like(prev)
        cur[0] = i
        sub = prev[:-1] + (codes != ord(ch))
        best = np.minimum(sub, prev[1:] + 1)
        for j in range(1, len(b) + 1):  # insertions chain left to right
            cur[j] = min(best[j - 1], cur[j - 1] + 1)
        prev = cur
    return int(prev[-1])


def _teacher_forced(pipe: Pipeline, embeds: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """Prefill `embeds` [T, D] on the pipeline's runner, then feed ids[:-1] -> logits [len(ids), V]."""
    runner = pipe.runner
    runner.reset()
    out = [np.array(runner.prefill(embeds), np.float32)]
    for t in ids[:-1]:
        out.append(np.array(runner.step(int(t)), np.float32))
    return np.stack(out)


@dataclass(frozen=True)
class PageResult:
    page: int
    mode: str
    positions: int  # ids compared (fp32 greedy length)
    top1: float  # variant vs fp32 argmax agreement over positions
    vision_top1: float  # fp32 decoder on the variant's image embeddings
    logits_cosine: float  # mean over positions
    logits_cosine_min: float
    vision_cosine: float  # image embeddings, variant vs fp32
    edit_distance: int  # characters, variant greedy text vs fp32 greedy text
    reference_chars: int
    margin: float  # median fp32 top-1 minus top-2 logit, in units of the logits' std (how decisive fp32 is)
    looped: bool = False  # the variant's own greedy run was stopped by the loop guard
    reference_looped: bool = False  # fp32's run was
    text: str = field(repr=False, default="")
    reference_text: str = field(repr=False, default="")


def compare_page(ref: Pipeline, got: Pipeline, page, index: int, options: RunOptions) -> PageResult:
    mode = ref.mode(options.mode)
    rec = _Recorder(ref.runner)
    ref.runner = rec
    try:
        ref_text, result = ref.generate(page, options)
    finally:
        ref.runner = rec.runner
    ref_logits = np.stack(rec.logits)[: len(result.ids)]  # [L, V]
    ref_img, _ = ref.image_embeddings(page, mode, options.max_tiles)
    got_img, _ = got.image_embeddings(page, mode, options.max_tiles)
    got_logits = _teacher_forced(got, got.prompt_embeds(got_img, options), result.ids)
    vis_logits = _teacher_forced(ref, ref.prompt_embeds(got_img, options), result.ids)
    got_text, got_result = got.generate(page, options)
    top = np.argmax(ref_logits, -1)
    top2 = np.sort(ref_logits, -1)[:, -2:]
    margin = float(np.median((top2[:, 1] - top2[:, 0]) / np.maximum(ref_logits.std(-1), 1e-12)))
    cos = [cosine(a, b) for a, b in zip(got_logits, ref_logits)]
    return PageResult(
        page=index, mode=mode.name, positions=len(result.ids),
        top1=float(np.mean(np.argmax(got_logits, -1) == top)),
        vision_top1=float(np.mean(np.argmax(vis_logits, -1) == top)),
        logits_cosine=float(np.mean(cos)), logits_cosine_min=float(np.min(cos)),
        vision_cosine=cosine(got_img, ref_img), edit_distance=edit_distance(got_text, ref_text),
        reference_chars=len(ref_text), margin=margin, looped=got_result.stop_reason == StopReason.LOOP.value,
        reference_looped=result.stop_reason == StopReason.LOOP.value, text=got_text, reference_text=ref_text,
    )


@dataclass(frozen=True)
class ModeSummary:
    mode: str
    pages: int
    positions: int
    top1: float  # position-weighted over pages
    vision_top1: float
    logits_cosine: float
    logits_cosine_min: float
    vision_cosine: float
    cer: float  # total edit distance / total fp32 characters
    margin: float  # median over pages of PageResult.margin
    loop_rate: float = 0.0  # share of pages whose variant run looped (stop_reason "loop")
    reference_loop_rate: float = 0.0  # the same for fp32


@dataclass(frozen=True)
class Report:
    bundle: str
    against: str
    precision: str
    pages: str
    files_bytes: dict[str, int]
    modes: list[ModeSummary]
    details: list[PageResult]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, ensure_ascii=False)


def summarize(mode: str, rows: list[PageResult]) -> ModeSummary:
    w = np.array([r.positions for r in rows], np.float64)
    avg = lambda k: float(np.sum(w * [getattr(r, k) for r in rows]) / max(w.sum(), 1))  # noqa: E731
    chars = sum(r.reference_chars for r in rows)
    return ModeSummary(mode, len(rows), int(w.sum()), avg("top1"), avg("vision_top1"), avg("logits_cosine"),
                       float(min(r.logits_cosine_min for r in rows)), float(np.mean([r.vision_cosine for r in rows])),
                       sum(r.edit_distance for r in rows) / max(chars, 1), float(np.median([r.margin for r in rows])),
                       float(np.mean([r.looped for r in rows])), float(np.mean([r.reference_looped for r in rows])))


def compare_bundles(bundle: str | Path, against: str | Path, pages: Sequence, modes: Sequence[str] | None = None,
                    max_new_tokens: int = 32, prompt: str = "document", pages_label: str = "",
                    on_page: Callable[[], None] | None = None) -> Report:
    """Compare `bundle` (a precision variant) with `against` (fp32) on `pages` in each mode."""
    got, ref = Pipeline(bundle), Pipeline(against)
    modes = list(modes or [m for m in got.manifest.modes if m in ref.manifest.modes])
    gen = GenerationOptions(max_new_tokens=max_new_tokens)
    rows = []
    for mode in modes:
        options = RunOptions(mode=mode, prompt=prompt, generation=gen)
        for i, page in enumerate(pages):
            rows.append(compare_page(ref, got, page, i, options))
            if on_page:
                on_page()
    files = {name: e["bytes"] for name, e in got.manifest.files.items()}
    return Report(str(bundle), str(against), got.manifest.precision, pages_label or f"{len(pages)} pages", files,
                  [summarize(m, [r for r in rows if r.mode == m]) for m in modes], rows)


def format_report(report: Report) -> str:
    """The summary table; `fp32 margin`: median (top-1 - top-2) logit gap of fp32 in logit std units;
    `loops`: share of pages the loop guard stopped, variant (fp32)."""
    size = sum(report.files_bytes.values()) / 2**20
    lines = [f"{report.bundle} ({report.precision}, {size:.1f} MiB) vs {report.against} on {report.pages}",
             f"{'mode':<8} {'pages':>5} {'ids':>5} {'top-1':>7} {'vision top-1':>12} {'logits cos':>10} "
             f"{'min cos':>8} {'vision cos':>10} {'CER':>7} {'fp32 margin':>11} {'loops (fp32)':>14}"]
    for m in report.modes:
        lines.append(f"{m.mode:<8} {m.pages:>5} {m.positions:>5} {m.top1:>7.2%} {m.vision_top1:>12.2%} "
                     f"{m.logits_cosine:>10.6f} {m.logits_cosine_min:>8.5f} {m.vision_cosine:>10.6f} {m.cer:>7.2%} "
                     f"{m.margin:>11.3f} "
                     f"{f'{m.loop_rate:.0%} ({m.reference_loop_rate:.0%})':>14}")
    return "\n".join(lines)
