"""Measured precision choices: which node groups to keep in fp32 so a lowered graph stays close to fp32.

A Probe holds feeds and the fp32 graph's outputs on them (image features for vision graphs, logits
for the decoder) and scores a candidate graph by the mean cosine of its outputs against them.
`select_fp32_groups` lowers everything but the forced groups; if that scores under the threshold, it
measures each group alone (only that group lowered, the rest fp32) and, while the score is under the
threshold, moves the worst remaining group (by its solo measurement) back to fp32.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from dsocr.runtime.backends.ort import import_ort

from .feeds import Feed


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def session(path: str | Path):
    ort = import_ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class Score:
    cosine: float  # mean over feeds
    cosine_min: float
    top1: float  # share of rows whose argmax over the last axis agrees with fp32 (logits: the token)

    def as_dict(self) -> dict[str, float]:
        return {"cosine": round(self.cosine, 6), "cosine_min": round(self.cosine_min, 6), "top1": round(self.top1, 4)}


class Probe:
    def __init__(self, fp32_graph: str | Path, feeds: Sequence[Feed], output: str):
        self.feeds, self.output = list(feeds), output
        sess = session(fp32_graph)
        self.reference = [sess.run([output], f)[0] for f in self.feeds]

    def score(self, graph: str | Path) -> Score:
        sess = session(graph)
        cos, agree, rows = [], 0, 0
        for feed, ref in zip(self.feeds, self.reference):
            got = sess.run([self.output], feed)[0]
            cos.append(cosine(got, ref))
            agree += int(np.sum(np.argmax(got, -1) == np.argmax(ref, -1)))
            rows += int(np.prod(ref.shape[:-1]))
        return Score(float(np.mean(cos)), float(np.min(cos)), agree / max(rows, 1))


@dataclass
class Selection:
    fp32_groups: list[str]  # forced + chosen, sorted
    score: Score  # of the final graph
    solo: dict[str, float] = field(default_factory=dict)  # group -> 1 - cosine with only it lowered
    trail: list[tuple[str, float]] = field(default_factory=list)  # group moved to fp32, cosine after

    @classmethod
    def from_dict(cls, d: dict) -> "Selection":
        s = d["score"]
        return cls(list(d["fp32_groups"]), Score(s["cosine"], s["cosine_min"], s["top1"]),
                   dict(d.get("solo_error", {})), [tuple(t) for t in d.get("trail", [])])

    def as_dict(self) -> dict:
        return {"fp32_groups": self.fp32_groups, "score": self.score.as_dict(),
                "solo_error": {g: round(e, 7) for g, e in sorted(self.solo.items(), key=lambda kv: -kv[1])},
                "trail": [[g, round(c, 6)] for g, c in self.trail]}


def select_fp32_groups(groups: Sequence[str], build: Callable[[set[str]], Path], probe: Probe, threshold: float,
                       forced: set[str] = frozenset(), max_fp32: int | None = None,
                       measure_solo: bool = True, on_step: Callable[[str], None] | None = None) -> Selection:
    """build(fp32_groups) writes a graph with those groups fp32 and every other group lowered."""
    candidates = [g for g in groups if g not in forced]
    fp32 = set(forced)
    score = probe.score(build(fp32))
    solo: dict[str, float] = {}
    if measure_solo and score.cosine < threshold:  # only measure when lowering everything misses
        everything = set(groups) | set(forced)
        for g in candidates:
            if on_step:
                on_step(f"measure {g}")
            solo[g] = 1.0 - probe.score(build(everything - {g})).cosine
    order = sorted(candidates, key=lambda g: -solo.get(g, 0.0))
    limit = len(candidates) if max_fp32 is None else max_fp32
    trail = []
    while score.cosine < threshold and order and len(fp32 - set(forced)) < limit:
        g = order.pop(0)
        if on_step:
            on_step(f"keep {g} fp32")
        fp32.add(g)
        score = probe.score(build(fp32))
        trail.append((g, score.cosine))
    return Selection(sorted(fp32), score, solo, trail)
