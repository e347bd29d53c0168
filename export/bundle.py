"""Checkpoint -> bundle directory: ONNX graphs, tokenizer, layout vectors and manifest.json.

The bundle is written into a staging directory next to the target and renamed into place at the
end, so an interrupted build leaves nothing half-written under the target name.
"""
from __future__ import annotations

import gc
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn
from tqdm import tqdm

from dsocr.runtime.decoding import GenerationOptions
from dsocr.runtime.errors import CheckpointError, InputError
from dsocr.runtime.manifest import KVSpec, Manifest, file_entries, make_stage_dir, replace_dir, write_manifest
from dsocr.runtime.modes import check_generation, get_mode
from dsocr.runtime.prompts import PROMPTS, split_prompt
from dsocr.runtime.tokenizer import Tokenizer

from .model.ocr import DeepseekOCR
from .onnx_export import export_decoder, export_decoder_step, export_embed, export_vision

LAYOUT_FILE = "layout.npz"
TOKENIZER_FILE = "tokenizer.json"
DEMO_SOURCE = "<built-in demo>"

# Decode defaults written into a bundle's manifest (generation_defaults): a real checkpoint gets the
# official scripts' 8192 new tokens; the demo checkpoint, whose text is meaningless, a few hundred,
# so that the README's build -> run finishes in seconds.
OFFICIAL_GENERATION = {"max_new_tokens": 8192}
DEMO_GENERATION = {"max_new_tokens": 256}


@dataclass(frozen=True)
class BuildOptions:
    modes: tuple[str, ...] = ("small",)
    max_seq_len: int | None = None  # default: the checkpoint's max_position_embeddings
    overwrite: bool = False
    progress: bool = True
    generation_defaults: dict | None = None  # default: DEMO_GENERATION for the demo, else OFFICIAL_GENERATION

    def __post_init__(self):
        if not self.modes:
            raise InputError("at least one mode is needed")
        for m in self.modes:
            get_mode(m)  # raises ModeError naming the bad mode
        if self.max_seq_len is not None and self.max_seq_len < 16:
            raise InputError(f"max_seq_len={self.max_seq_len} is too small (at least 16)")
        if self.generation_defaults is not None:
            GenerationOptions().updated(self.generation_defaults)  # raises InputError naming a bad option


def generation_defaults(options: BuildOptions, source: str | None) -> dict:
    if options.generation_defaults is not None:
        return dict(options.generation_defaults)
    return dict(DEMO_GENERATION if source == DEMO_SOURCE else OFFICIAL_GENERATION)


def prompt_table(tok: Tokenizer) -> dict[str, dict]:
    """Every official prompt template tokenized: text before and after the image placeholder."""
    table = {}
    for name, text in PROMPTS.items():
        if "{" in text:  # templates with fields (locate) are tokenized at run time
            table[name] = {"text": text}
            continue
        before, after = split_prompt(text)
        table[name] = {"text": text, "before": tok.encode(before), "after": tok.encode(after)}
    return table


def _write_graphs(model: DeepseekOCR, stage: Path, sizes: list[int], bar) -> dict:
    """Export every graph, freeing each part of `model` once no graph left needs it (the model is
    spent afterwards): embed, then the decoders without the token table, then the vision graphs
    without the decoder. The vision traces' activations (SAM global attention at 1024 px: GBs) thus
    never coincide with the decoder's weights (full size: 12 GiB), which peaked at 22-23 GiB."""
    graphs = {}
    bar.set_description("export embed")
    graphs["embed"] = export_embed(model, stage / "embed.onnx")
    bar.update()
    model.model.embed_tokens = None
    bar.set_description("export decoder")
    placed: dict = {}
    graphs["decoder"] = export_decoder(model, stage / "decoder.onnx", placed=placed)
    bar.update()
    bar.set_description("export decoder step")
    graphs["decoder_step"] = export_decoder_step(model, stage / "decoder_step.onnx", placed)  # experts shared
    bar.update()
    model.model.layers, model.lm_head = nn.ModuleList(), None
    gc.collect()
    for size in sizes:
        bar.set_description(f"export vision {size}px")
        graphs[f"vision_{size}"] = export_vision(model, size, stage / f"vision_{size}.onnx")
        bar.update()
    return graphs


MODEL_TYPES = {"ocr1": "deepseek-ocr", "ocr2": "deepseek-ocr-2"}


def build_bundle(checkpoint: str | Path, out_dir: str | Path, options: BuildOptions = BuildOptions(),
                 source: str | None = None) -> Manifest:
    """Export `checkpoint` (official HF layout) into the bundle directory `out_dir`.

    source: what to record as the checkpoint in the manifest (default: its absolute path).
    """
    ckpt, out = Path(checkpoint), Path(out_dir)
    if out.exists() and not options.overwrite:
        raise InputError(f"{out} exists; pass overwrite (--force) to replace it")
    tok_path = ckpt / TOKENIZER_FILE
    if not tok_path.is_file():
        raise CheckpointError(f"{ckpt} has no {TOKENIZER_FILE} (the checkpoint's tokenizer is needed in the bundle)")
    tok = Tokenizer.from_file(tok_path)
    model = DeepseekOCR.from_pretrained(ckpt)  # DeepseekOCR or DeepseekOCR2, from the checkpoint's keys
    model.requires_grad_(False)
    for m in options.modes:  # an OCR-1 mode for an OCR-2 checkpoint (or the reverse) is refused
        check_generation(get_mode(m), model.generation)
    cfg = model.config.decoder
    sizes = sorted({s for m in options.modes for s in get_mode(m).vision_sizes})
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = make_stage_dir(out.parent, f".{out.name}.partial-")
    try:
        with tqdm(total=len(sizes) + 4, disable=not options.progress, unit="graph") as bar:
            graphs = _write_graphs(model, stage, sizes, bar)
        shutil.copyfile(tok_path, stage / TOKENIZER_FILE)
        np.savez(stage / LAYOUT_FILE, **model.layout_vectors())  # OCR-2: view_separator only
        names = sorted(p.name for p in stage.iterdir())
        manifest = Manifest(
            modes=list(options.modes), precision="fp32", graphs=graphs,
            kv=KVSpec(cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim, "float32",
                      options.max_seq_len or cfg.max_position_embeddings),
            hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size, rope_theta=cfg.rope_theta,
            special_tokens=tok.special.as_dict(), prompts=prompt_table(tok), tokenizer=TOKENIZER_FILE,
            layout_file=LAYOUT_FILE, files=file_entries(stage, names),
            source={"checkpoint": source or str(ckpt.resolve()), "model_type": MODEL_TYPES[model.generation],
                    **({"demo": True} if source == DEMO_SOURCE else {})},
            generation=model.generation,
            generation_defaults=generation_defaults(options, source),
        )
        write_manifest(stage, manifest)
        replace_dir(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return manifest

