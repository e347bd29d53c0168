"""llama.cpp on the same weights as dsocr's full-size benchmark (bench/cpu_full_size.py calls this).

    python bench/llama_cpp.py prepare --workdir DIR        # build llama.cpp, convert, quantize
    python bench/llama_cpp.py bench --workdir DIR --quant Q4_0 --threads 2 --json out.json

prepare, each step made once and reused in DIR/llama:
  1. the `llama-cpp-python` source distribution from the package index (its vendored llama.cpp
     converts `DeepseekOCRForCausalLM`), built with CMake (Release, GGML_NATIVE): llama-bench,
     llama-batched-bench, llama-quantize;
  2. a converter virtual environment (torch CPU, transformers, sentencepiece);
  3. the rule-weight checkpoint (DIR/ckpt) as GGUF: a model directory of links to its safetensors
     and tokenizer, with the config fields the converter reads and the bench config lacks (the
     official config has them under language_config), converted to bf16, then quantized to Q8_0 and
     Q4_0 with llama-quantize. The demo byte-level tokenizer has no known pre-tokenizer hash: the
     converter is run with pre-tokenizer "default" for it (the benchmark feeds token ids, never text).

bench: `llama-bench` decode (256 tokens after a 123-token prompt: -d 123 -n 256) and
`llama-batched-bench` aggregate decode at parallel sequences 1, 4, 8, 16 (-npp 123 -ntg N), both with
the given threads; JSON with tokens/s.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

SDIST = "llama-cpp-python==0.3.36"
TARGETS = ("llama-bench", "llama-batched-bench", "llama-quantize")
QUANTS = ("Q8_0", "Q4_0")
CONVERTER_DEPS = ("torch==2.13.0", "numpy<2.5", "sentencepiece", "transformers>=4.57,<5", "protobuf<5", "safetensors")
# fields convert_hf_to_gguf reads for DeepseekOCRForCausalLM (official: under language_config)
CONFIG_FIELDS = {"qk_rope_head_dim": 0, "qk_nope_head_dim": 0, "v_head_dim": 0, "kv_lora_rank": None,
                 "q_lora_rank": None, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False,
                 "norm_topk_prob": False}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] llama.cpp: {msg}", flush=True)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def source(root: Path) -> Path:
    """The vendored llama.cpp of the llama-cpp-python sdist, downloaded and unpacked once."""
    tree = next(root.glob("llama_cpp_python-*/vendor/llama.cpp"), None)
    if tree is not None:
        return tree
    root.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST, "-d", root])
    archive = next(root.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return next(root.glob("llama_cpp_python-*/vendor/llama.cpp"))


def build(root: Path) -> Path:
    bindir = root / "build" / "bin"
    if all((bindir / t).is_file() for t in TARGETS):
        return bindir
    tree = source(root)
    say(f"building {', '.join(TARGETS)} (a few minutes)")
    _run(["cmake", "-S", tree, "-B", root / "build", "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
          "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF"])
    _run(["cmake", "--build", root / "build", "-j2", "--target", *TARGETS])
    return bindir


def converter_python(root: Path) -> Path:
    py = root / "venv" / "bin" / "python"
    if not (root / "venv" / ".complete").is_file():
        say("converter environment")
        _run([sys.executable, "-m", "venv", root / "venv"])
        _run([py, "-m", "pip", "install", "-q", *CONVERTER_DEPS])
        (root / "venv" / ".complete").write_text("")
    return py


def model_dir(ckpt: Path, root: Path) -> Path:
    """Links to the checkpoint's files, with the config fields the converter needs."""
    out = root / "hf"
    out.mkdir(parents=True, exist_ok=True)
    for f in ckpt.iterdir():
        if f.name != "config.json" and not f.name.startswith(".") and not (out / f.name).exists():
            (out / f.name).symlink_to(f.resolve())
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update({k: v for k, v in CONFIG_FIELDS.items() if k not in cfg})
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    return out


def gguf_files(ckpt: Path, root: Path) -> dict[str, Path]:
    bindir, py, tree = build(root), converter_python(root), source(root)
    out = {q: root / f"model-{q}.gguf" for q in QUANTS}
    if all(p.is_file() for p in out.values()):
        return out
    bf16 = root / "model-bf16.gguf"
    if not bf16.is_file():
        say("converting the checkpoint to GGUF (bf16)")
        tmp = bf16.with_suffix(".partial")
        _run([py, Path(__file__).resolve(), "convert", "--tree", tree, "--model", model_dir(ckpt, root),
              "--out", tmp])
        tmp.rename(bf16)
    for q, path in out.items():
        if not path.is_file():
            say(f"quantizing {q}")
            _run([bindir / "llama-quantize", bf16, path.with_suffix(".partial"), q, "2"])
            path.with_suffix(".partial").rename(path)
    return out


def convert(tree: Path, model: Path, out: Path) -> None:
    """Run the vendored convert_hf_to_gguf in this interpreter (the converter venv), pre-tokenizer
    "default" for a tokenizer whose hash it does not know."""
    sys.path[:0] = [str(tree), str(tree / "gguf-py")]
    import conversion.base as base  # the vendored converter's package

    known = base.TextModel.get_vocab_base_pre

    def vocab_pre(self, tokenizer):
        try:
            return known(self, tokenizer)
        except NotImplementedError:
            return "default"

    base.TextModel.get_vocab_base_pre = vocab_pre
    sys.argv = ["convert_hf_to_gguf.py", str(model), "--outfile", str(out), "--outtype", "bf16"]
    import runpy

    runpy.run_path(str(tree / "convert_hf_to_gguf.py"), run_name="__main__")


def bench_decode(bindir: Path, gguf: Path, threads: int, prompt: int, tokens: int, repeats: int) -> dict:
    """llama-bench: decode tokens/s of `tokens` tokens after a `prompt`-token context, batch 1."""
    res = _run([bindir / "llama-bench", "-m", gguf, "-t", threads, "-p", 0, "-n", tokens, "-d", prompt,
                "-r", repeats, "-o", "json"], stdout=subprocess.PIPE, text=True)
    rows = json.loads(res.stdout)
    row = next(r for r in rows if r.get("n_gen") == tokens)
    return {"tokens_per_s": row["avg_ts"], "stddev": row.get("stddev_ts"), "n_prompt_depth": prompt,
            "n_gen": tokens, "threads": threads, "model_size_bytes": row.get("model_size")}


def bench_parallel(bindir: Path, gguf: Path, threads: int, prompt: int, tokens: int, slots: list[int]) -> dict:
    """llama-batched-bench: aggregate decode tokens/s with N parallel sequences (unified KV)."""
    ctx = max(slots) * (prompt + tokens) + 256
    res = _run([bindir / "llama-batched-bench", "-m", gguf, "-t", threads, "-c", ctx, "-b", 2048, "-ub", 512,
                "-npp", prompt, "-ntg", tokens, "-npl", ",".join(map(str, slots)), "--output-format", "jsonl"],
               stdout=subprocess.PIPE, text=True)
    out = {}
    for line in res.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            out[str(r["pl"])] = {"decode_tokens_per_s": r["speed_tg"], "prefill_tokens_per_s": r["speed_pp"]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("prepare", "bench", "convert"))
    ap.add_argument("--workdir", type=Path, help="the full-size bench's work directory (holds ckpt/)")
    ap.add_argument("--quant", choices=QUANTS, default="Q4_0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=123)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--what", choices=("decode", "parallel", "both"), default="both")
    ap.add_argument("--slots", default="1,4,8,16")
    ap.add_argument("--parallel-tokens", type=int, default=32)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--tree", type=Path)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.step == "convert":
        convert(a.tree, a.model, a.out)
        return 0
    root = a.workdir / "llama"
    files = gguf_files(a.workdir / "ckpt", root)
    if a.step == "prepare":
        return 0
    bindir = build(root)
    result = {"quant": a.quant, "gguf_bytes": files[a.quant].stat().st_size}
    if a.what in ("decode", "both"):
        result["decode"] = bench_decode(bindir, files[a.quant], a.threads, a.prompt, a.tokens, a.repeats)
        say(f"{a.quant}: decode {result['decode']['tokens_per_s']:.1f} tok/s (batch 1)")
    if a.what in ("parallel", "both"):
        result["parallel"] = bench_parallel(bindir, files[a.quant], a.threads, a.prompt, a.parallel_tokens,
                                            [int(s) for s in a.slots.split(",")])
        say(f"{a.quant}: parallel decode " + ", ".join(f"{k}: {v['decode_tokens_per_s']:.1f}"
                                                        for k, v in result["parallel"].items()) + " tok/s")
    text = json.dumps(result, indent=1)
    if a.json:
        a.json.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    shutil.which("cmake") or sys.exit("llama_cpp.py needs cmake and a C++ compiler")
    sys.exit(main())
