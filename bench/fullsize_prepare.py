"""Artifacts of the full-size CPU benchmark, each written once into the work directory and reused:

    ckpt/          the real architecture (official config) with the fixtures' rule weights, bf16
                   safetensors in 1 GiB shards (loaded to fp32: peak = fp32 model + one shard), and
                   the demo byte-level tokenizer at the real vocabulary size
    bundle-fp32/   `build_bundle` for modes tiny, small, base, gundam
    bundle-int8/   weight-only int8 / int4 of every MatMul with a constant weight (MatMulNBits, block
    bundle-int4/   32, symmetric, accuracy_level 4) except the MoE routers (fp32); the lm_head is 8-bit in
                   both; the other files are hard-linked

Each step runs in its own subprocess (`python bench/fullsize_prepare.py STEP ...`) so that its memory
is returned before the next starts. A step is complete when its marker file exists.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

MODES = ("tiny", "small", "base", "gundam")
MAX_SEQ_LEN = 2048  # Gundam page prompt (~930) + 256 decoded tokens fit
SHARD_BYTES = 1 << 30
BLOCK_SIZE = 32
ACCURACY_LEVEL = 4  # int8 activations inside MatMulNBits: the fast CPU path (level 0 is 3-150x slower at M=1)
ROUTER = ".mlp.gate.weight"  # MoE router weights stay fp32 (routing decisions are precision-sensitive)
HEAD_BITS = 8  # the lm_head: 8-bit weights in the int4 variant too (as calibration's weight-only rule)
DONE = ".complete"


def real_config(layers: int | None = None) -> dict:
    """The official DeepSeek-OCR config.json layout with the real sizes (ARCHITECTURE §2); `layers`
    cuts the decoder, SAM and CLIP depths (SAM keeps one global-attention block, its last)."""
    from dsocr.export.config import ModelConfig

    d = ModelConfig()  # defaults are the real sizes
    sam, clip, dec = d.sam, d.clip, d.decoder
    cfg = {
        "architectures": ["DeepseekOCRForCausalLM"], "model_type": "deepseek_vl_v2",
        "_name_or_path": "dsocr/bench (real sizes, rule weights: output text is meaningless)",
        "projector_config": {"input_dim": d.projector_in, "n_embed": d.projector_out,
                             "projector_type": "linear", "model_type": "mlp_projector"},
        "vision_config": {"image_size": 1024, "width": {
            "clip-l-14-224": {"heads": clip.heads, "image_size": clip.image_size, "layers": clip.layers,
                              "patch_size": clip.patch, "width": clip.width},
            "sam_vit_b": {"downsample_channels": list(sam.downsample_channels),
                          "global_attn_indexes": list(sam.global_attn_indexes), "heads": sam.heads,
                          "layers": sam.layers, "width": sam.width}}},
        "tile_tag": "2D", "global_view_pos": "head", "torch_dtype": "bfloat16",
    }
    cfg.update({k: getattr(dec, k) for k in (
        "bos_token_id", "eos_token_id", "first_k_dense_replace", "hidden_size", "intermediate_size",
        "max_position_embeddings", "moe_intermediate_size", "n_routed_experts", "n_shared_experts",
        "num_attention_heads", "num_experts_per_tok", "num_hidden_layers", "num_key_value_heads",
        "topk_method", "vocab_size")})
    cfg["use_mla"] = False
    if layers:
        w = cfg["vision_config"]["width"]
        cfg["num_hidden_layers"] = layers
        w["sam_vit_b"].update(layers=layers, global_attn_indexes=[layers - 1])
        w["clip-l-14-224"]["layers"] = layers
    return cfg


class _Progress(dict):
    """shapes for write_rule_checkpoint that print how far the weight generation is."""

    def items(self):
        total = sum(_numel(s) for s in self.values())
        done, last, t0 = 0, -1, time.time()
        for k, s in super().items():
            yield k, s
            done += _numel(s)
            pct = int(100 * done / total)
            if pct // 10 != last // 10:
                print(f"  rule weights: {pct:3d}% of {total / 1e9:.2f}B params ({time.time() - t0:.0f} s)", flush=True)
                last = pct


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def make_checkpoint(out: Path, layers: int | None) -> None:
    import torch

    from dsocr.export.demo import state_shapes
    from dsocr.export.demo_tokenizer import build_demo_tokenizer
    from dsocr.export.weights import write_rule_checkpoint

    config = real_config(layers)
    write_rule_checkpoint(out, _Progress(state_shapes(config)), config, dtype=torch.bfloat16, shard_bytes=SHARD_BYTES)
    build_demo_tokenizer(int(config["vocab_size"])).save(str(out / "tokenizer.json"))


def make_bundle(ckpt: Path, out: Path) -> None:
    from dsocr.export.bundle import BuildOptions, build_bundle

    build_bundle(ckpt, out, BuildOptions(modes=MODES, max_seq_len=MAX_SEQ_LEN, overwrite=True, progress=True),
                 source="bench rule-weight checkpoint (real sizes)")


def quantize_graph(src: Path, dst: Path, bits: int) -> dict:
    """One graph -> weight-only int`bits` (MatMulNBits); returns the weighted MatMul counts by kind.

    Memory: the weights to quantize stay external and are read one at a time (onnx_ir resolves their
    location against the working directory, set to the source's); only the other initializers are
    loaded. Peak = the quantized graph + one fp32 weight, not the fp32 graph.
    """
    import logging

    import onnx
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    model = onnx.load(str(src), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    keep = [n.name for n in matmuls if ROUTER in n.input[1]]
    lazy = {n.input[1] for n in matmuls if n.name not in keep}
    for t in model.graph.initializer:
        if t.name not in lazy and uses_external_data(t):
            load_external_data_for_tensor(t, str(src.parent))
            t.data_location = onnx.TensorProto.DEFAULT
            del t.external_data[:]
    heads = [n.name for n in matmuls if "lm_head" in n.input[1]] if bits != HEAD_BITS else []
    passes = [dict(bits=bits, nodes_to_exclude=keep + heads)]
    if heads:  # the lm_head at HEAD_BITS; routers excluded again (nodes_to_include alone would not)
        passes.append(dict(bits=HEAD_BITS, nodes_to_exclude=keep, nodes_to_include=heads, op_types_to_quantize=()))
    cwd = os.getcwd()
    os.chdir(src.parent)
    try:
        for kw in passes:
            q = MatMulNBitsQuantizer(model, block_size=BLOCK_SIZE, is_symmetric=True, accuracy_level=ACCURACY_LEVEL,
                                     **kw)
            q.process()
            model = q.model.model
    finally:
        os.chdir(cwd)
    left = [t.name for t in q.model.model.graph.initializer if uses_external_data(t)]
    if left:
        raise RuntimeError(f"{src.name}: initializers still external after quantizing: {left[:4]}")
    for f in (dst, dst.with_name(dst.name + ".data")):
        f.unlink(missing_ok=True)
    q.model.save_model_to_file(str(dst), use_external_data_format=True)  # weights in <graph>.onnx.data
    ops = collections.Counter(
        f"{n.op_type}{next((f'/{a.i}' for a in n.attribute if a.name == 'bits'), '')}" for n in model.graph.node
        if n.op_type in ("MatMul", "MatMulNBits") and (n.op_type == "MatMulNBits" or n.input[1] in inits))
    return dict(ops)


def make_variant(fp32: Path, out: Path, bits: int, graphs: str) -> None:
    """A bundle whose decoder (and vision graphs if graphs == 'all') are weight-only int`bits`."""
    from dataclasses import replace

    from dsocr.runtime.manifest import file_entries, read_manifest, write_manifest

    m = read_manifest(fp32, verify_files=False)
    stage = out.with_name(out.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    specs, report = dict(m.graphs), {}
    for name, spec in m.graphs.items():
        if spec.role == "decoder" or (graphs == "all" and spec.role == "vision"):
            t = time.time()
            print(f"  int{bits}: quantizing {spec.file} ...", flush=True)
            report[name] = quantize_graph(fp32 / spec.file, stage / spec.file, bits)
            print(f"  int{bits}: {spec.file} {report[name]} in {time.time() - t:.0f} s", flush=True)
            specs[name] = replace(spec, precision=f"int{bits}-weights")
    for f in fp32.iterdir():  # everything not rewritten: hard links (no extra disk)
        if f.name != "manifest.json" and not f.name.startswith(".") and not (stage / f.name).exists():
            os.link(f, stage / f.name)
    names = sorted(p.name for p in stage.iterdir())
    source = dict(m.source, weight_only={"bits": bits, "block_size": BLOCK_SIZE, "symmetric": True,
                                         "accuracy_level": ACCURACY_LEVEL, "graphs": graphs, "nodes": report})
    write_manifest(stage, replace(m, precision=f"int{bits}-weights", graphs=specs,
                                  files=file_entries(stage, names), source=source))
    shutil.rmtree(out, ignore_errors=True)
    stage.rename(out)


def _done(path: Path) -> bool:
    return (path / DONE).is_file()


def _mark(path: Path, info: dict) -> None:
    (path / DONE).write_text(json.dumps(info), encoding="utf-8")


def run_step(argv: list[str]) -> None:
    """Run one step in a fresh interpreter (its memory goes back to the OS when it exits)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv]
    t = time.time()
    subprocess.run(cmd, check=True)
    print(f"  step {argv[0]} done in {time.time() - t:.0f} s", flush=True)


def ensure_all(workdir: Path, layers: int | None, variants: tuple[int, ...], vision_graphs: str) -> dict[str, Path]:
    """Build what is missing; -> {"ckpt": dir, "fp32": bundle, "int8": bundle, ...}."""
    paths = {"ckpt": workdir / "ckpt", "fp32": workdir / "bundle-fp32"}
    paths.update({f"int{b}": workdir / f"bundle-int{b}" for b in variants})
    want = real_config(layers)
    if _done(paths["ckpt"]) and json.loads((paths["ckpt"] / "config.json").read_text()) != want:
        raise SystemExit(f"{paths['ckpt']} holds another config; use another --workdir")
    if not _done(paths["ckpt"]):
        print(f"[prepare] rule-weight checkpoint -> {paths['ckpt']}", flush=True)
        run_step(["checkpoint", str(paths["ckpt"])] + (["--layers", str(layers)] if layers else []))
    if not _done(paths["fp32"]):
        print(f"[prepare] fp32 bundle (modes {', '.join(MODES)}) -> {paths['fp32']}", flush=True)
        run_step(["bundle", str(paths["ckpt"]), str(paths["fp32"])])
    for b in variants:
        p = paths[f"int{b}"]
        if _done(p) and json.loads((p / DONE).read_text()).get("graphs") != vision_graphs:
            shutil.rmtree(p)
        if not _done(p):
            print(f"[prepare] weight-only int{b} bundle -> {p}", flush=True)
            run_step(["variant", str(paths["fp32"]), str(p), "--bits", str(b), "--graphs", vision_graphs])
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("checkpoint", "bundle", "variant"))
    ap.add_argument("paths", nargs="+", type=Path)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--bits", type=int, choices=(4, 8))
    ap.add_argument("--graphs", choices=("decoder", "all"), default="decoder")
    a = ap.parse_args()
    t = time.time()
    if a.step == "checkpoint":
        make_checkpoint(a.paths[0], a.layers)
        _mark(a.paths[0], {"seconds": time.time() - t})
    elif a.step == "bundle":
        make_bundle(a.paths[0], a.paths[1])
        _mark(a.paths[1], {"seconds": time.time() - t})
    else:
        make_variant(a.paths[0], a.paths[1], a.bits, a.graphs)
        _mark(a.paths[1], {"seconds": time.time() - t, "graphs": a.graphs})


if __name__ == "__main__":
    main()
