"""Pipeline: image or PDF page in, markdown out, over a bundle (the runtime's top level).

Letters: T prompt tokens, N image tokens, D hidden, V vocab.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .backends.base import Backend
from .decoding import DEFAULTABLE, GenerationOptions, GenerationResult, TextStreamer, generate
from .errors import CacheOverflowError, InputError, ManifestError, ModeError
from .layout import assemble_prompt, layout_views, scatter_image_embeds
from .manifest import Manifest, bundle_file, read_layout, read_manifest
from .modes import MAX_TILES, MIN_TILES, Mode, check_generation, get_mode
from .postprocess import PageResult, render_markdown
from .preprocess import Views, load_image, preprocess
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
    generation: GenerationOptions | None = None  # None: the bundle's generation_defaults
    prompt_ids: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # explicit (before, after) text ids; overrides prompt

    def __post_init__(self):
        if self.mode is not None:
            get_mode(self.mode)
        if self.max_tiles is not None and (
                isinstance(self.max_tiles, bool) or not isinstance(self.max_tiles, (int, np.integer))
                or not MIN_TILES <= int(self.max_tiles) <= MAX_TILES):
            raise InputError(f"max_tiles={self.max_tiles!r} must be an integer in {MIN_TILES}..{MAX_TILES}")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InputError("prompt must be a template name or a text containing <image>")
        if self.generation is not None and not isinstance(self.generation, GenerationOptions):
            raise InputError(f"generation={self.generation!r} must be GenerationOptions or None (the bundle's defaults)")
        if self.prompt_ids is not None:
            object.__setattr__(self, "prompt_ids", _prompt_ids(self.prompt_ids))


def _prompt_ids(value) -> tuple[tuple[int, ...], tuple[int, ...]]:
    try:
        before, after = value
        out = tuple(int(t) for t in before), tuple(int(t) for t in after)
    except (TypeError, ValueError):
        raise InputError(f"prompt_ids={value!r} must be a pair (ids before the image, ids after it)") from None
    if any(t < 0 for part in out for t in part):
        raise InputError(f"prompt_ids={value!r} holds a negative id")
    return out


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


@dataclass(frozen=True)
class Prepared:
    """One page made ready for decoding: what a slot is prefilled with, and what golden checks compare.

    Letters: T prompt tokens, N image tokens, D hidden.
    """

    views: Views  # global view [1, 3, S, S], tiles [n, 3, s, s], crop (w, h)
    image_embeds: np.ndarray  # [N, D] in prompt order
    input_ids: np.ndarray  # [T] int64
    images_seq_mask: np.ndarray  # [T] bool
    embeds: np.ndarray  # [T, D] text embeddings with the image embeddings scattered in
    generation: GenerationOptions  # the request's decode options (bundle defaults filled in)
    eos_ids: tuple[int, ...]


def _bundle_defaults(manifest: Manifest) -> GenerationOptions:
    """GenerationOptions from a manifest's generation_defaults (ManifestError naming a bad entry)."""
    d = manifest.generation_defaults
    if not isinstance(d, dict):
        raise ManifestError(f"generation_defaults must be an object of option -> value, not {type(d).__name__}")
    unknown = sorted(set(d) - set(DEFAULTABLE))
    if unknown:
        raise ManifestError(f"generation_defaults names unknown option(s) {', '.join(unknown)}; "
                            f"known: {', '.join(DEFAULTABLE)}")
    try:
        return GenerationOptions().updated(d)
    except InputError as e:
        raise ManifestError(f"generation_defaults of the bundle: {e}") from e


class Pipeline:
    """Loads a bundle once; `ocr()` many pages. One Pipeline per thread (it owns one KV cache).

    Three ways to build one, all through `compose` (the one place a pipeline is assembled):
    `Pipeline(bundle_dir)` opens a bundle; `from_assets` shares loaded assets; `compose` takes any
    backend (ONNX Runtime, TensorRT, PyTorch), tokenizer and layout vectors.
    """

    def __init__(self, bundle_dir: str | Path, backend: str = "ort", device: str = "cpu",
                 threads: int | None = None, max_seq_len: int | None = None, batch: int = 1):
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise InputError(f"batch={batch!r} must be an integer >= 1")
        bundle = BundleAssets.load(bundle_dir)
        self._attach(open_backend(bundle.bundle_dir, bundle.manifest, backend, device, threads),
                     bundle.tokenizer, bundle.layout, max_seq_len)
        self.batch = batch  # slots of `ocr_many` / `engine()` (see runtime.engine)

    @classmethod
    def compose(cls, backend: Backend, tokenizer: Tokenizer, layout: tuple[np.ndarray, np.ndarray],
                max_seq_len: int | None = None) -> "Pipeline":
        """A pipeline over `backend` (its manifest: modes, prompts, special ids, generation defaults),
        `tokenizer` and the layout vectors (image_newline [D], view_separator [D])."""
        self = cls.__new__(cls)
        self._attach(backend, tokenizer, layout, max_seq_len)
        return self

    @classmethod
    def from_assets(cls, bundle: "BundleAssets", backend: Backend, max_seq_len: int | None = None) -> "Pipeline":
        """A pipeline over already loaded (verified, shared read-only) assets and a backend of its own."""
        return cls.compose(backend, bundle.tokenizer, bundle.layout, max_seq_len)

    def _attach(self, backend: Backend, tokenizer: Tokenizer, layout, max_seq_len: int | None) -> None:
        self.bundle_dir, self.manifest = backend.bundle_dir, backend.manifest
        self.tokenizer, self.layout = tokenizer, (np.asarray(layout[0]), np.asarray(layout[1]))
        self.backend = backend
        self.runner = BundleRunner(backend, max_seq_len)
        self.defaults = _bundle_defaults(self.manifest)
        self.batch = 1

    @property
    def is_demo(self) -> bool:
        """Built from dsocr's demo checkpoint: its text is meaningless."""
        source = self.manifest.source
        return source.get("demo") is True or source.get("checkpoint") == "<built-in demo>"  # older demo bundles

    def generation_options(self, **overrides) -> GenerationOptions:
        """The bundle's generation defaults with `overrides` applied (a value of None keeps the default)."""
        return self.defaults.updated(overrides)

    def generation_for(self, options: RunOptions) -> GenerationOptions:
        """The decode options of a request: the bundle's defaults unless given, the tokenizer's
        table-cell ids as the n-gram whitelist unless given, its decode for the loop guard."""
        gen = options.generation if options.generation is not None else self.defaults
        if not gen.whitelist:
            gen = gen.with_whitelist(self.tokenizer.special.table_cells())
        if gen.text_decoder is None:
            gen = gen.with_text_decoder(self.tokenizer.decode)
        return gen

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
        return self.encode(views), views.crop

    def encode(self, views: Views) -> np.ndarray:
        """Vision graphs + layout: a page's views -> its image embeddings [N, D] in prompt order."""
        global_feats = self.backend.vision(views.global_view)[0]
        tile_feats = self.backend.vision(views.tiles) if len(views.tiles) else None
        return self._layout(global_feats, tile_feats, views.crop)

    def _layout(self, global_feats: np.ndarray, tile_feats: np.ndarray | None, crop: tuple[int, int]) -> np.ndarray:
        newlines = self.manifest.generation != "ocr2"  # OCR-1 rows end in image_newline; OCR-2 is flat
        return layout_views(newlines, global_feats, tile_feats, crop, *self.layout)

    def prompt_ids(self, options: RunOptions, n_image_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (input_ids [T], images_seq_mask [T])."""
        if options.prompt_ids is not None:
            before, after = options.prompt_ids
        elif options.prompt in self.manifest.prompts and "before" in self.manifest.prompts[options.prompt]:
            entry = self.manifest.prompts[options.prompt]
            before, after = entry["before"], entry["after"]
        else:
            text = get_prompt(options.prompt, ref=options.ref) if "<image>" not in options.prompt else options.prompt
            b, a = split_prompt(text)
            before, after = self.tokenizer.encode(b), self.tokenizer.encode(a)
        sp = self.tokenizer.special
        return assemble_prompt(before, after, n_image_tokens, sp.image, sp.bos)

    def prepare(self, image, options: RunOptions = RunOptions()) -> Prepared:
        """A page image -> its views, image embeddings, prompt ids and prompt embeddings [T, D]."""
        (page,) = self.prepare_many([image], [options])
        if isinstance(page, BaseException):
            raise page
        return page

    def prepare_many(self, images: list, options: list[RunOptions], vision_batch: int = 8) -> list:
        """Several pages at once: every view of every page through as few vision calls as possible
        (views of one size stacked, at most `vision_batch` per call). -> one Prepared, or the
        exception that page raised, per page. Sizes are checked before anything grows with them:
        a prompt longer than the KV cache fails before vision, embedding or a mask is computed."""
        staged: list = []
        for image, opts in zip(images, options):
            try:
                staged.append(self._stage(image, opts))
            except Exception as e:  # noqa: BLE001 - this page's error, the others go on
                staged.append(e)
        ok = [i for i, s in enumerate(staged) if not isinstance(s, BaseException)]
        arrays = [staged[i][1].global_view for i in ok] + [staged[i][1].tiles for i in ok]
        try:
            feats = run_views(self.backend, arrays, vision_batch)
        except Exception as e:  # noqa: BLE001
            return [e if i in ok else s for i, s in enumerate(staged)]
        out = list(staged)
        for j, i in enumerate(ok):
            opts, views, ids, mask = staged[i]
            tiles = feats[len(ok) + j] if views.n_tiles else None
            try:
                embeds = self._layout(feats[j][0], tiles, views.crop)
                out[i] = Prepared(views, embeds, ids, mask, self._scatter(ids, mask, embeds),
                                  self.generation_for(opts), (self.tokenizer.special.eos,))
            except Exception as e:  # noqa: BLE001
                out[i] = e
        return out

    def _stage(self, image, options: RunOptions):
        mode = self.mode(options.mode)
        views = preprocess(image, mode, max_tiles=options.max_tiles)
        ids, mask = self.prompt_ids(options, mode.n_image_tokens(*views.crop))
        limit = getattr(self.runner, "max_seq_len", None) or self.manifest.kv.max_seq_len  # any Runner may stand here
        if len(ids) > limit:
            raise CacheOverflowError(f"the prompt has {len(ids)} positions but the KV cache holds "
                                     f"{limit} (max_seq_len); shorten the prompt or use "
                                     f"a bundle built with a larger --max-seq-len")
        return options, views, ids, mask

    def prompt_embeds(self, image_embeds: np.ndarray, options: RunOptions = RunOptions()) -> np.ndarray:
        """Image embeddings [N, D] (of this or another backend) -> the prompt's embeddings [T, D]."""
        ids, mask = self.prompt_ids(options, len(image_embeds))
        return self._scatter(ids, mask, image_embeds)

    def _scatter(self, ids: np.ndarray, mask: np.ndarray, image_embeds: np.ndarray) -> np.ndarray:
        return scatter_image_embeds(self.backend.embed(ids[None])[0], mask, image_embeds)

    def generate(self, image, options: RunOptions = RunOptions(),
                 on_text: Callable[[str], None] | None = None) -> tuple[str, GenerationResult]:
        """Raw model text (grounding tags kept) and the generation record (slot 0 of the runner)."""
        page = self.prepare(image, options)
        streamer = TextStreamer(self.tokenizer.decode, on_text) if on_text else None
        self.runner.reset()
        result = generate(self.runner, page.embeds, page.generation, eos_ids=page.eos_ids,
                          on_token=streamer.put if streamer else None)
        if streamer:
            streamer.end()
        return self.tokenizer.decode(result.ids), result

    def ocr_many(self, sources, options: RunOptions = RunOptions(), batch: int | None = None) -> list:
        """Many pages decoded together in `batch` slots (default: the pipeline's batch) -> one
        PageResult, or the exception that page raised, per source, in order."""
        loaded, futures = [], []
        with self.engine(batch) as eng:
            for src in sources:
                try:
                    page = load_image(src)
                    loaded.append(page)
                    futures.append(eng.submit(page, options))
                except Exception as e:  # noqa: BLE001 - this page's error, the others go on
                    loaded.append(None)
                    futures.append(e)
        out = []
        for page, f in zip(loaded, futures):
            if isinstance(f, Exception):
                out.append(f)
                continue
            try:
                raw, result = f.result()
                out.append(render_markdown(raw, page).with_generation(result))
            except Exception as e:  # noqa: BLE001
                out.append(e)
        return out

    def engine(self, max_batch: int | None = None, **kwargs):
        """A BatchEngine over this pipeline with `max_batch` slots (default: the pipeline's batch)."""
        from .engine import BatchEngine

        return BatchEngine(self, max_batch=max_batch or self.batch, **kwargs)

    def ocr(self, source, options: RunOptions = RunOptions(), on_text=None, figure_prefix: str = "") -> PageResult:
        """An image (path, bytes or PIL image) -> PageResult (markdown, boxes in page pixels, figure crops)."""
        page = load_image(source)
        raw, result = self.generate(page, options, on_text)
        return render_markdown(raw, page, prefix=figure_prefix).with_generation(result)


def run_views(backend: Backend, arrays: list[np.ndarray], limit: int = 8) -> list[np.ndarray]:
    """Vision features of many view stacks ([b_i, 3, S_i, S_i] each, b_i may be 0) with as few calls
    as possible: stacks of one size are concatenated and run at most `limit` views a call.
    -> [b_i, g_i*g_i, D] per stack, in order."""
    if limit < 1:
        raise InputError(f"vision batch limit {limit} must be >= 1")
    out: list = [None] * len(arrays)
    by_size: dict[int, list[int]] = {}
    for i, a in enumerate(arrays):
        by_size.setdefault(int(a.shape[-1]), []).append(i)
    for idx in by_size.values():
        stack = np.concatenate([arrays[i] for i in idx]) if len(idx) > 1 else arrays[idx[0]]
        if len(stack) == 0:
            feats = None
        else:
            feats = np.concatenate([backend.vision(stack[k:k + limit]) for k in range(0, len(stack), limit)])
        at = 0
        for i in idx:
            n = len(arrays[i])
            out[i] = feats[at:at + n] if n else np.zeros((0,), np.float32)
            at += n
    return out
