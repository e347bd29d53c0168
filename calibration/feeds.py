"""Pages -> calibration feeds: the exact inputs each graph sees when the runtime reads those pages.

Vision graphs get the runtime's own preprocessing (`preprocess(page, mode)`): every global view and
every tile, one view per feed ([1, 3, S, S]). The decoder gets real prompts: the fp32 bundle runs
vision -> layout -> embed -> scatter, then prefills and decodes a few greedy steps; the decoder's
inputs are captured at every call (prefill: P = 0, T = prompt; steps: P = prompt + k, T = 1).

Letters: S view side, T new tokens, P cached tokens, D hidden, H heads, hd head dim.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from dsocr.runtime.kv_cache import KVCache
from dsocr.runtime.layout import scatter_image_embeds
from dsocr.runtime.manifest import read_manifest
from dsocr.runtime.modes import get_mode
from dsocr.runtime.pipeline import Pipeline, RunOptions
from dsocr.runtime.preprocess import preprocess
from dsocr.runtime.runner import BundleRunner

Feed = dict[str, np.ndarray]


@dataclass
class Feeds:
    """Calibration inputs per graph name of a bundle (vision_<S>, decoder), for one or more modes."""

    graphs: dict[str, list[Feed]] = field(default_factory=dict)

    def add(self, name: str, feeds: Iterable[Feed]) -> None:
        self.graphs.setdefault(name, []).extend(feeds)

    def count(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.graphs.items()}


def vision_feeds(pages: Sequence, mode: str, max_tiles: int | None = None) -> dict[int, list[Feed]]:
    """-> {S: [{"pixel_values": [1, 3, S, S]}, ...]}: global views and tiles, in page order."""
    m = get_mode(mode)
    out: dict[int, list[Feed]] = {}
    for page in pages:
        views = preprocess(page, m, max_tiles=max_tiles)
        out.setdefault(m.base_size, []).append({"pixel_values": views.global_view})
        for tile in views.tiles:  # [3, T, T] each
            out.setdefault(m.image_size, []).append({"pixel_values": tile[None]})
    return out


class _RecordingBackend:
    """Delegates to a backend; records every decoder call's inputs (copies) before running it."""

    def __init__(self, backend, sink: list[Feed]):
        self._backend, self._sink = backend, sink
        self.manifest = backend.manifest

    def vision(self, pixel_values):
        return self._backend.vision(pixel_values)

    def embed(self, input_ids):
        return self._backend.embed(input_ids)

    def decode(self, embeds, cos, sin, mask, cache: KVCache):
        feed = {"inputs_embeds": np.array(embeds, np.float32), "cos": np.array(cos, np.float32),
                "sin": np.array(sin, np.float32), "attention_mask": np.array(mask, np.float32)}
        for i in range(cache.num_layers):
            k, v = cache.past(i)  # [B, P, H, hd] views of the prefix
            feed[f"past_key.{i}"], feed[f"past_value.{i}"] = k.copy(), v.copy()
        self._sink.append(feed)
        return self._backend.decode(embeds, cos, sin, mask, cache)


def prompt_embeds(pipe: Pipeline, page, options: RunOptions) -> np.ndarray:
    """The prompt as the pipeline builds it: [T, D] text embeddings with the image embeddings scattered in."""
    embeds, _ = pipe.image_embeddings(page, pipe.mode(options.mode), options.max_tiles)
    ids, mask = pipe.prompt_ids(options, len(embeds))
    return scatter_image_embeds(pipe.backend.embed(ids[None])[0], mask, embeds)


def decoder_feeds(bundle_dir: str | Path, pages: Sequence, mode: str, steps: int = 4, prompt: str = "document",
                  pipeline: Pipeline | None = None, on_page: Callable[[], None] | None = None) -> list[Feed]:
    """Decoder inputs of the fp32 bundle reading `pages`: per page one prefill and `steps` greedy steps."""
    pipe = pipeline or Pipeline(bundle_dir, max_seq_len=16)
    options = RunOptions(mode=mode, prompt=prompt)
    feeds: list[Feed] = []
    recorder = _RecordingBackend(pipe.backend, feeds)
    for page in pages:
        embeds = prompt_embeds(pipe, page, options)
        runner = BundleRunner(recorder, max_seq_len=len(embeds) + steps + 1)
        logits = runner.prefill(embeds)
        for _ in range(steps):
            logits = runner.step(int(np.argmax(logits)))
        if on_page:
            on_page()
    return feeds


def bundle_feeds(bundle_dir: str | Path, pages: Sequence, modes: Sequence[str], decoder_steps: int = 4,
                 need_decoder: bool = True, on_page: Callable[[], None] | None = None) -> Feeds:
    """Feeds for every graph of a bundle over `modes` (vision sizes shared by modes are pooled)."""
    feeds = Feeds()
    manifest = read_manifest(bundle_dir, verify_files=False)
    names = {g.size: name for name, g in manifest.graphs.items() if g.role == "vision"}
    pipe = Pipeline(bundle_dir, max_seq_len=16) if need_decoder else None
    for mode in modes:
        for size, f in vision_feeds(pages, mode).items():
            feeds.add(names[size], f)
        if need_decoder:
            feeds.add("decoder", decoder_feeds(bundle_dir, pages, mode, decoder_steps, pipeline=pipe, on_page=on_page))
    return feeds
