"""Artifacts of the full-size CPU benchmark, each written once into the work directory and reused:

    ckpt/          the real architecture (official config) with the fixtures' rule weights, bf16
                   safetensors in 1 GiB shards (loaded to fp32: peak = fp32 model + one shard), and
                   the demo byte-level tokenizer at the real vocabulary size
    bundle-fp32/   the shipped command, `dsocr-export build --checkpoint ckpt --mode ... --no-engines`,
                   run under a peak-RSS measurement (its seconds and peak RSS go into the marker)
    bundle-int8/   the shipped int8-weight / int4-weight variants (calibration.variants.build_variant,
    bundle-int4/   as `dsocr-export build --precision`): MatMulNBits (block 32, symmetric, accuracy_level 4)
                   except the MoE routers (fp32), lm_head 8-bit, decode-step experts on QMoE, vision
                   int8-weight

Each step runs in its own subprocess (`python bench/fullsize_prepare.py STEP ...`) so that its memory
is returned before the next starts. A step is complete when its marker file exists.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

MODES = ("tiny", "small", "base", "gundam")
MAX_SEQ_LEN = 2048  # Gundam page prompt (~930) + 256 decoded tokens fit
SHARD_BYTES = 1 << 30
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


def export_command(ckpt: Path, out: Path, modes: tuple[str, ...]) -> list[str]:
    """The shipped export command for the fp32 bundle (what a user runs)."""
    exe = Path(sys.executable).with_name("dsocr-export")
    cmd = [str(exe), "build", "--checkpoint", str(ckpt), "--out", str(out), "--max-seq-len", str(MAX_SEQ_LEN),
           "--no-engines", "--force"]
    for m in modes:
        cmd += ["--mode", m]
    return cmd


def run_measured(cmd: list[str]) -> dict:
    """Run `cmd` as the only child of a fresh interpreter and return its seconds and peak RSS
    (getrusage of the children: the kernel's high-water mark of the command's own process)."""
    probe = ("import json, resource, subprocess, sys, time; t = time.time(); "
             "rc = subprocess.run(sys.argv[1:]).returncode; "
             "print('MEASURED ' + json.dumps({'rc': rc, 'seconds': time.time() - t, "
             "'peak_rss_bytes': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}), flush=True)")
    proc = subprocess.run([sys.executable, "-c", probe, *cmd], stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.splitlines()
    print("\n".join(ln for ln in lines if not ln.startswith("MEASURED ")), flush=True)
    got = json.loads(next(ln for ln in reversed(lines) if ln.startswith("MEASURED "))[9:])
    if got["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {got['rc']}")
    return got


def make_variant(fp32: Path, out: Path, bits: int) -> None:
    """The shipped int`bits`-weight variant (calibration.variants.build_variant, what
    `dsocr-export build --precision int{bits}-weight` runs): MatMulNBits at accuracy_level 4, decode-step
    routed experts on QMoE, vision int8-weight, weights read one at a time (lean path)."""
    from dsocr.calibration.variants import PrecisionOptions, build_variant

    build_variant(fp32, out, f"int{bits}-weight",
                  options=PrecisionOptions(sensitivity=False, overwrite=True, progress=True))


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


def ensure_all(workdir: Path, layers: int | None, variants: tuple[int, ...],
               modes: tuple[str, ...] = MODES) -> dict[str, Path]:
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
        cmd = export_command(paths["ckpt"], paths["fp32"], modes)
        print(f"[prepare] fp32 bundle: {' '.join(cmd)}", flush=True)
        got = run_measured(cmd)
        print(f"  export: {got['seconds']:.0f} s, peak RSS {got['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
        _mark(paths["fp32"], {**got, "command": ["dsocr-export", *cmd[1:]], "modes": list(modes)})
    for b in variants:
        p = paths[f"int{b}"]
        if _done(p) and json.loads((p / DONE).read_text()).get("shipped") is not True:
            shutil.rmtree(p)  # made by an earlier, private quantizer
        if not _done(p):
            print(f"[prepare] int{b}-weight bundle (shipped variant) -> {p}", flush=True)
            run_step(["variant", str(paths["fp32"]), str(p), "--bits", str(b)])
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("checkpoint", "variant"))
    ap.add_argument("paths", nargs="+", type=Path)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--bits", type=int, choices=(4, 8))
    a = ap.parse_args()
    t = time.time()
    if a.step == "checkpoint":
        make_checkpoint(a.paths[0], a.layers)
        _mark(a.paths[0], {"seconds": time.time() - t})
    else:
        make_variant(a.paths[0], a.paths[1], a.bits)
        _mark(a.paths[1], {"seconds": time.time() - t, "shipped": True})


if __name__ == "__main__":
    main()
