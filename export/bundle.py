"""Checkpoint -> bundle directory: ONNX graphs, tokenizer, layout vectors and manifest.json.

The bundle is written into a staging directory next to the target and renamed into place at the
end, so an interrupted build leaves nothing half-written under the target name.
"""
from __future__ import annotations

import gc
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn
from tqdm import tqdm

from dsocr.runtime.errors import CheckpointError, InputError
from dsocr.runtime.manifest import KVSpec, Manifest, file_entries, replace_dir, write_manifest
from dsocr.runtime.modes import get_mode
from dsocr.runtime.prompts import PROMPTS, split_prompt
from dsocr.runtime.tokenizer import Tokenizer

from .model.ocr import DeepseekOCR
from .onnx_export import export_decoder, export_decoder_step, export_embed, export_vision

LAYOUT_FILE = "layout.npz"
TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class BuildOptions:
    modes: tuple[str, ...] = ("small",)
    max_seq_len: int | None = None  # default: the checkpoint's max_position_embeddings
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        if not self.modes:
            raise InputError("at least one mode is needed")
        for m in self.modes:
            get_mode(m)  # raises ModeError naming the bad mode
        if self.max_seq_len is not None and self.max_seq_len < 16:
            raise InputError(f"max_seq_len={self.max_seq_len} is too small (at least 16)")


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
    graphs["decoder"] = export_decoder(model, stage / "decoder.onnx")
    bar.update()
    bar.set_description("export decoder step")
    graphs["decoder_step"] = export_decoder_step(model, stage / "decoder_step.onnx")
    bar.update()
    model.model.layers, model.lm_head = nn.ModuleList(), None
    gc.collect()
    for size in sizes:
        bar.set_description(f"export vision {size}px")
        graphs[f"vision_{size}"] = export_vision(model, size, stage / f"vision_{size}.onnx")
        bar.update()
    return graphs


DEMO_SOURCE = "<built-in demo>"


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
    model = DeepseekOCR.from_pretrained(ckpt)
    model.requires_grad_(False)
    cfg = model.config.decoder
    sizes = sorted({s for m in options.modes for s in get_mode(m).vision_sizes})
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        with tqdm(total=len(sizes) + 4, disable=not options.progress, unit="graph") as bar:
            graphs = _write_graphs(model, stage, sizes, bar)
        shutil.copyfile(tok_path, stage / TOKENIZER_FILE)
        np.savez(stage / LAYOUT_FILE, image_newline=model.model.image_newline.float().numpy(),
                 view_separator=model.model.view_seperator.float().numpy())
        names = sorted(p.name for p in stage.iterdir())
        manifest = Manifest(
            modes=list(options.modes), precision="fp32", graphs=graphs,
            kv=KVSpec(cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim, "float32",
                      options.max_seq_len or cfg.max_position_embeddings),
            hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size, rope_theta=cfg.rope_theta,
            special_tokens=tok.special.as_dict(), prompts=prompt_table(tok), tokenizer=TOKENIZER_FILE,
            layout_file=LAYOUT_FILE, files=file_entries(stage, names),
            source={"checkpoint": source or str(ckpt.resolve()), "model_type": "deepseek-ocr"},
        )
        write_manifest(stage, manifest)
        replace_dir(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return manifest

