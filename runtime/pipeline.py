"""Pipeline: image or PDF page in, markdown out, over a bundle (the runtime's top level).

Letters: T prompt tokens, N image tokens, D hidden, V vocab.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .backends.base import Backend
from .decoding import GenerationOptions, GenerationResult, TextStreamer, generate
from .errors import InputError, ModeError
from .layout import assemble_prompt, layout_views, scatter_image_embeds
from .manifest import Manifest, bundle_file, read_layout, read_manifest
from .modes import MAX_TILES, Mode, check_generation, get_mode
from .postprocess import PageResult, render_markdown
from .preprocess import load_image, preprocess
from .prompts import get_prompt, split_prompt
from .runner import BundleRunner
from .tokenizer import Tokenizer

BACKENDS = ("ort", "tensorrt")


@dataclass(frozen=True)
class RunOptions:
    """Per-request options, validated in one place."""

    mode: str | None = None  # default: the bundle's first mode
    prompt: str = "document"  # a template name (document, ocr, free, figure, describe, locate) or text with <image>
    ref: str | None = None  # the referring expression for the `locate` prompt
    max_tiles: int | None = None  # default: the mode's (OCR-1 9, OCR-2 6)
    generation: GenerationOptions = field(default_factory=GenerationOptions)

    def __post_init__(self):
        if self.mode is not None:
            get_mode(self.mode)
        if self.max_tiles is not None and not 2 <= int(self.max_tiles) <= MAX_TILES:
            raise InputError(f"max_tiles={self.max_tiles} must lie in 2..9")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InputError("prompt must be a template name or a text containing <image>")


def open_backend(bundle_dir: Path, manifest: Manifest, backend: str, device: str, threads: int | None) -> Backend:
    if backend == "ort":
        from .backends.ort import OrtBackend

        return OrtBackend(bundle_dir, manifest, device=device, threads=threads)
    if backend == "tensorrt":
        from .backends.trt import TrtBackend

        return TrtBackend(bundle_dir, manifest)
    raise InputError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


@dataclass(frozen=True)
class BundleAssets:
    """What every pipeline of one bundle shares read-only: verified manifest, tokenizer, layout vectors."""

    bundle_dir: Path
    manifest: Manifest
    tokenizer: Tokenizer
    layout: tuple[np.ndarray | None, np.ndarray]  # image_newline [D] (None for OCR-2), view_separator [D]

    @classmethod
    def load(cls, bundle_dir: str | Path) -> "BundleAssets":
        path = Path(bundle_dir)
        manifest = read_manifest(path)
        tokenizer = Tokenizer.from_file(bundle_file(path, manifest, manifest.tokenizer, "manifest.tokenizer"))
        return cls(path, manifest, tokenizer, read_layout(path, manifest))


class Pipeline:
    """Loads a bundle once; `ocr()` many pages. One Pipeline per thread (it owns one KV cache)."""

    def __init__(self, bundle_dir: str | Path, backend: str = "ort", device: str = "cpu",
                 threads: int | None = None, max_seq_len: int | None = None):
        bundle = BundleAssets.load(bundle_dir)
        self._attach(bundle, open_backend(bundle.bundle_dir, bundle.manifest, backend, device, threads), max_seq_len)

    @classmethod
    def from_assets(cls, bundle: "BundleAssets", backend: Backend, max_seq_len: int | None = None) -> "Pipeline":
        """A pipeline over already loaded (verified, shared read-only) assets and a backend of its own."""
        self = cls.__new__(cls)
        self._attach(bundle, backend, max_seq_len)
        return self

    def _attach(self, bundle: "BundleAssets", backend: Backend, max_seq_len: int | None) -> None:
        self.bundle_dir, self.manifest = bundle.bundle_dir, bundle.manifest
        self.tokenizer, self.layout = bundle.tokenizer, bundle.layout
        self.backend = backend
        self.runner = BundleRunner(backend, max_seq_len)

    def mode(self, name: str | None) -> Mode:
        mode = get_mode(name or self.manifest.modes[0])
        check_generation(mode, self.manifest.generation)
        if mode.name not in self.manifest.modes:
            raise ModeError(
                f"this bundle was built for mode(s) {', '.join(self.manifest.modes)}, not {mode.name!r}; "
                f"rebuild it with `dsocr-export build --mode {mode.name}`"
            )
        return mode

    def image_embeddings(self, image, mode: Mode, max_tiles: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
        """-> (image embeddings [N, D] in prompt order, crop (w tiles, h tiles))."""
        views = preprocess(image, mode, max_tiles=max_tiles)
        global_feats = self.backend.vision(views.global_view)[0]
        tile_feats = self.backend.vision(views.tiles) if len(views.tiles) else None
        return layout_views(mode.newlines, global_feats, tile_feats, views.crop, *self.layout), views.crop

    def prompt_ids(self, options: RunOptions, n_image_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (input_ids [T], images_seq_mask [T])."""
        if options.prompt in self.manifest.prompts and "before" in self.manifest.prompts[options.prompt]:
            entry = self.manifest.prompts[options.prompt]
            before, after = entry["before"], entry["after"]
        else:
            text = get_prompt(options.prompt, ref=options.ref) if "<image>" not in options.prompt else options.prompt
            b, a = split_prompt(text)
            before, after = self.tokenizer.encode(b), self.tokenizer.encode(a)
        sp = self.tokenizer.special
        return assemble_prompt(before, after, n_image_tokens, sp.image, sp.bos)

    def generate(self, image, options: RunOptions = RunOptions(),
                 on_text: Callable[[str], None] | None = None) -> tuple[str, GenerationResult]:
        """Raw model text (grounding tags kept) and the generation record."""
        mode = self.mode(options.mode)
        embeds, _ = self.image_embeddings(image, mode, options.max_tiles)
        ids, mask = self.prompt_ids(options, len(embeds))
        prompt = scatter_image_embeds(self.backend.embed(ids[None])[0], mask, embeds)
        sp = self.tokenizer.special
        gen = options.generation
        if not gen.whitelist:
            gen = gen.with_whitelist(sp.table_cells())
        streamer = TextStreamer(self.tokenizer.decode, on_text) if on_text else None
        self.runner.reset()
        result = generate(self.runner, prompt, gen, eos_ids=(sp.eos,),
                          on_token=streamer.put if streamer else None)
        if streamer:
            streamer.end()
        return self.tokenizer.decode(result.ids), result

    def ocr(self, source, options: RunOptions = RunOptions(), on_text=None, figure_prefix: str = "") -> PageResult:
        """An image (path, bytes or PIL image) -> PageResult (markdown, boxes in page pixels, figure crops)."""
        page = load_image(source)
        raw, result = self.generate(page, options, on_text)
        return render_markdown(raw, page, prefix=figure_prefix).with_generation(result)
