"""Full-size DeepSeek-OCR on this CPU: dsocr's ONNX Runtime bundles (fp32, weight-only int8 / int4)
against the memory-bandwidth ceiling, llama.cpp on the same weights and (optionally) dsocr's PyTorch
model in eager mode, with continuous batching. One command:

    python bench/cpu_full_size.py [--layers N] [--workdir DIR] [--json out.json] [--modes small]

1. artifacts, made once and reused (fullsize_prepare.py): the real config with rule weights (bf16
   safetensors), the fp32 bundle (`dsocr-export build`, its peak RSS measured), the shipped int8 and
   int4 variants; llama.cpp and GGUF Q8_0 / Q4_0 of the same checkpoint (llama_cpp.py);
2. memory bandwidth (membw.py);
3. each backend in its own processes, one after another (fullsize_measure.py): encoder latency per
   mode, prefill, one Small page end to end with 256 greedy decode steps (batch 1), then llama.cpp's
   batch-1 decode at the matching bits, dsocr's batching sweep (--slots), llama.cpp's parallel
   decode at the same slot counts; `--passes` passes (best of each), as other work on a shared
   machine comes and goes; then the --job-pages page job (BatchEngine against one page after another);
4. one table of ratios, the issue's targets and a JSON file whose top level names, for the best
   variant, decode_vs_ceiling, decode_vs_llama_cpp, batch8_vs_batch1 and job16_vs_sequential.

--layers N cuts the decoder, SAM and CLIP depths to N (for development; no llama.cpp then); the default
is full size. The first full-size run spends ~15 min on artifacts (~45 GB in the work directory with
the GGUF files); `--backends eager,fp32,...` adds the eager model (~16 GiB free memory).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import active_bytes  # noqa: E402
import fullsize_prepare  # noqa: E402

HERE = Path(__file__).resolve().parent
BACKENDS = ("eager", "fp32", "int8", "int4")
GIB = 2**30


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _sub(script: str, args: list[str]) -> None:
    subprocess.run([sys.executable, str(HERE / script), *args], check=True)


def _check_memory(need_gib: float, what: str) -> None:
    avail = psutil.virtual_memory().available / GIB
    if avail < need_gib:
        say(f"warning: {avail:.1f} GiB available, {what} needs about {need_gib:.0f} GiB")


def measure(name: str, phase: str, bundle: Path, out: Path, a, ckpt: Path, embeds: Path | None = None) -> dict:
    args = ["--phase", phase, "--bundle", str(bundle), "--out", str(out), "--tokens", str(a.tokens),
            "--repeats", str(a.repeats), "--threads", str(a.threads)]
    args += ["--backend", "eager", "--ckpt", str(ckpt)] if name == "eager" else ["--backend", "ort"]
    if a.ort_config and name != "eager":
        args += ["--ort-config", *a.ort_config]
    if embeds:
        args += ["--embeds", str(embeds)]
    args += ["--slots", a.slots, "--steps", str(a.batch_steps), "--rounds", str(a.batch_rounds),
             "--pages", str(a.job_pages), "--max-new", str(a.job_tokens)]
    _sub("fullsize_measure.py", args)
    return json.loads(out.read_text())


def best_of(runs: list[dict]) -> dict:
    """Merge one backend's passes: the lowest latencies, the highest decode rate and bandwidth, the
    highest peak RSS; every pass kept under "passes"."""
    out = dict(runs[0])
    for key in ("encoder_s", "prefill_s"):
        if key in out:
            out[key] = {m: min(r[key][m] for r in runs) for m in out[key]}
    if "page_small" in out:
        out["page_small"] = dict(min((r["page_small"] for r in runs), key=lambda p: p["total_s"]))
        out["page_small"]["tokens_per_s"] = max(r["page_small"]["tokens_per_s"] for r in runs)
        out["bandwidth_after"] = max((r["bandwidth_after"] for r in runs), key=lambda b: b["ceiling_gbs"])
    out["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in runs)
    out["load_s"] = min(r["load_s"] for r in runs)
    out["passes"] = runs
    return out


LLAMA_QUANT = {"int8": "Q8_0", "int4": "Q4_0"}  # matching bit widths


def llama(quant: str, workdir: Path, a, k: int, parallel: bool) -> dict:
    out = workdir / f"llama-{quant}-{'parallel' if parallel else 'decode'}-{k}.json"
    args = ["bench", "--workdir", str(workdir), "--quant", quant, "--threads", str(a.threads), "--tokens",
            str(a.tokens), "--repeats", str(a.repeats), "--json", str(out)]
    args += ["--what", "parallel", "--slots", a.slots, "--parallel-tokens", str(a.batch_steps)] if parallel \
        else ["--what", "decode"]
    _sub("llama_cpp.py", args)
    return json.loads(out.read_text())


def run_pass(backends: list[str], paths: dict, workdir: Path, a, k: int) -> tuple[dict, dict, dict]:
    """Encoders: eager, and ORT once (the fp32 vision graphs); then per backend its batch-1 decode,
    llama.cpp's batch-1 decode at the matching bits, dsocr's batching sweep, llama.cpp's parallel
    sweep (interleaved, so that a busy period on a shared machine hits both sides), all prefilling
    the same image embeddings (ORT's if measured, else eager's)."""
    enc, dec, other = {}, {}, {"batching": {}, "llama_cpp": {}}
    full = not a.layers
    for name in [b for b in ("eager", "ort") if b == "eager" and "eager" in backends
                 or b == "ort" and set(backends) - {"eager"}]:
        _check_memory(18 if name == "eager" and full else 8, f"{name} encoders")
        say(f"pass {k}: encoders {name}")
        enc[name] = measure(name, "encoders", paths["fp32"], workdir / f"enc-{name}.json", a, paths["ckpt"])
    embeds = workdir / ("enc-ort.embeds.npz" if "ort" in enc else "enc-eager.embeds.npz")
    for name in backends:
        _check_memory(16 if name in ("eager", "fp32") and full else 5, f"{name} decode")
        say(f"pass {k}: decode {name}")
        bundle = paths["fp32"] if name == "eager" else paths[name]
        dec[name] = measure(name, "decode", bundle, workdir / f"result-{name}.json", a, paths["ckpt"], embeds)
        quant = LLAMA_QUANT.get(name) if a.llama_cpp else None
        if quant:
            say(f"pass {k}: llama.cpp {quant} decode")
            other["llama_cpp"][quant] = llama(quant, workdir, a, k, parallel=False)
        if name != "eager" and a.slots:
            say(f"pass {k}: batching {name} (slots {a.slots})")
            other["batching"][name] = measure(name, "batching", bundle, workdir / f"batching-{name}.json", a,
                                              paths["ckpt"], embeds)
            if quant:
                say(f"pass {k}: llama.cpp {quant} parallel decode")
                other["llama_cpp"][quant]["parallel"] = llama(quant, workdir, a, k, parallel=True)["parallel"]
    return enc, dec, other


def run_all(backends: list[str], paths: dict, workdir: Path, a) -> tuple[dict, dict]:
    """`a.passes` passes over every backend, then each backend's best (a backend that met a busy
    period on this shared machine in one pass gets another chance later); then the page jobs."""
    passes = [run_pass(backends, paths, workdir, a, k + 1) for k in range(a.passes)]
    enc = {n: best_of([p[0][n] for p in passes]) for n in passes[0][0]}
    dec = {n: best_of([p[1][n] for p in passes]) for n in backends}
    for name, r in dec.items():
        e = enc["eager" if name == "eager" else "ort"]
        r["encoder_s"], r["peak_rss_encoders_bytes"] = e["encoder_s"], e["peak_rss_bytes"]
    other = {"batching": {}, "llama_cpp": {}, "job": {}}
    for p in passes:  # best of the passes: the highest rate per slot count
        for name, r in p[2]["batching"].items():
            b = other["batching"].setdefault(name, dict(r, passes=[]))
            b["passes"].append(r["decode_tok_s"])
            b["decode_tok_s"] = {s: max(x[s] for x in b["passes"]) for s in r["decode_tok_s"]}
            b["peak_rss_bytes"] = max(b["peak_rss_bytes"], r["peak_rss_bytes"])
        for quant, r in p[2]["llama_cpp"].items():
            q = other["llama_cpp"].setdefault(quant, dict(r, passes=[]))
            q["passes"].append(r)
            q["decode"] = max((x["decode"] for x in q["passes"]), key=lambda d: d["tokens_per_s"])
            if "parallel" in r:
                q["parallel"] = {s: max((x["parallel"][s] for x in q["passes"] if "parallel" in x),
                                        key=lambda d: d["decode_tokens_per_s"]) for s in r["parallel"]}
    for name in [j for j in a.job.split(",") if j in backends and j != "eager"]:
        say(f"{a.job_pages}-page job {name} ({a.job_tokens} new tokens a page, up to {a.slots.split(',')[-1]} slots)")
        other["job"][name] = measure(name, "job", paths[name], workdir / f"job-{name}.json", a, paths["ckpt"])["job"]
    return dec, other


def ceilings(paths: dict, results: dict, bw: dict, context: float, cfg: dict) -> dict:
    """Per precision: active bytes per token and the decode ceiling. The bandwidth is the higher of the
    run's opening probe and the probe right after that backend's decode runs (never flattering)."""
    out = {}
    for name in ("fp32", "int8", "int4"):
        if name in paths:
            b = active_bytes.active_bytes(paths[name], cfg["num_experts_per_tok"], cfg["n_routed_experts"], context)
            b["formula_weight_bytes_real_config"] = active_bytes.formula_bytes(name)
            out[name] = b
    for name, r in results.items():
        p = "fp32" if name == "eager" else name
        gbs = max(bw["ceiling_gbs"], r.get("bandwidth_after", {}).get("ceiling_gbs", 0.0))
        r["ceiling"] = {"bandwidth_gbs": gbs, "active_bytes": out[p]["total_bytes"],
                        "tokens_per_s": gbs * 1e9 / out[p]["total_bytes"]}
    return out


def agreement(results: dict, workdir: Path) -> dict:
    """Prefill logits (Small prompt) of each backend against eager: cosine and top-1."""
    ref_path = workdir / "result-eager.logits.npy"
    if not ref_path.is_file():
        return {}
    ref = np.load(ref_path).ravel()
    out = {}
    for name in results:
        x = np.load(workdir / f"result-{name}.logits.npy").ravel()
        cos = float(x @ ref / (np.linalg.norm(x) * np.linalg.norm(ref)))
        ids = results[name]["page_small"]["greedy_ids"]
        same = sum(i == j for i, j in zip(ids, results["eager"]["page_small"]["greedy_ids"]))
        out[name] = {"logits_cosine": cos, "top1_same": int(np.argmax(x) == np.argmax(ref)),
                     "greedy_ids_same_of_32": same}
    return out


def table(results: dict) -> tuple[list[str], dict]:
    """Rows of the printed table, and the ratios it shows."""
    cols = [c for c in BACKENDS if c in results]
    ratios: dict = {c: {} for c in cols}
    def val(c, key):
        r = results[c]
        if key.startswith("encoder_"):
            return r["encoder_s"][key[8:]]
        if key.startswith("prefill_"):
            return r["prefill_s"][key[8:]]
        return {"decode": r["page_small"]["tokens_per_s"], "page": r["page_small"]["total_s"],
                "rss": r["peak_rss_bytes"] / GIB, "rss_enc": r["peak_rss_encoders_bytes"] / GIB,
                "load": r["load_s"]}[key]
    rows = [("encoder_tiny", "encoder Tiny (s)", "s"), ("encoder_small", "encoder Small (s)", "s"),
            ("encoder_base", "encoder Base (s)", "s"), ("encoder_gundam", "encoder Gundam 6 tiles (s)", "s"),
            ("prefill_small", "prefill Small prompt (s)", "s"), ("prefill_base", "prefill Base prompt (s)", "s"),
            ("decode", "decode tok/s (256 steps, batch 1)", "rate"), ("page", "Small page end to end (s)", "s"),
            ("load", "load, decode process (s)", "s"), ("rss", "peak RSS, decode process (GiB)", "mem"),
            ("rss_enc", "peak RSS, encoders process (GiB)", "mem")]
    head = f"{'':<30}" + "".join(f"{c:>10}" for c in cols) + "".join(f"{c + '/eager':>12}" for c in cols[1:])
    lines = [head]
    for key, label, kind in rows:
        try:
            v = {c: val(c, key) for c in cols}
        except KeyError:  # a mode the bundle was not built for
            continue
        line = f"{label:<30}" + "".join(f"{v[c]:>10.2f}" if kind != "rate" else f"{v[c]:>10.2f}" for c in cols)
        if "eager" in v:
            for c in cols[1:]:
                speed = v[c] / v["eager"] if kind == "rate" else v["eager"] / v[c]
                if kind == "mem":
                    speed = v[c] / v["eager"]
                ratios[c][key + "_vs_eager"] = speed
                line += f"{speed:>11.2f}x"
        lines.append(line)
    line, bws = f"{'decode ceiling tok/s':<30}", f"{'  at bandwidth (GB/s)':<30}"
    pct = f"{'decode / ceiling':<30}"
    for c in cols:
        cl = results[c]["ceiling"]
        d = results[c]["page_small"]["tokens_per_s"]
        ratios[c]["decode_vs_ceiling"] = d / cl["tokens_per_s"]
        line += f"{cl['tokens_per_s']:>10.2f}"
        bws += f"{cl['bandwidth_gbs']:>10.1f}"
        pct += f"{100 * d / cl['tokens_per_s']:>9.1f}%"
    lines += [line, bws]
    lines += [pct, "(encoders: ORT measured once, on the fp32 vision graphs)"]
    return lines, ratios


def targets(results: dict, ratios: dict) -> tuple[list[str], dict]:
    """The issue's targets for the best ORT variant (by decode rate; by page time for the page)."""
    ort_cols = [c for c in results if c != "eager"]
    if "eager" not in results or not ort_cols:
        return [], {}
    best = max(ort_cols, key=lambda c: results[c]["page_small"]["tokens_per_s"])
    page = min(ort_cols, key=lambda c: results[c]["page_small"]["total_s"])
    checks = {
        f"decode tok/s, best variant ({best}) / eager fp32 >= 3x": (ratios[best]["decode_vs_eager"], 3.0),
        f"decode tok/s, best variant ({best}) / its bandwidth ceiling >= 60%": (ratios[best]["decode_vs_ceiling"], 0.6),
        f"Small page end to end, eager / best variant ({page}) >= 3x": (ratios[page]["page_vs_eager"], 3.0),
    }
    lines = []
    for what, (got, want) in checks.items():
        shown = f"{100 * got:.0f}%" if want < 1 else f"{got:.2f}x"
        verdict = "met" if got >= want else f"missed by {100 * (1 - got / want):.0f}%"
        lines.append(f"target: {what}: {shown} -> {verdict}")
    return lines, {k: {"value": v[0], "target": v[1], "met": v[0] >= v[1]} for k, v in checks.items()}


THROUGHPUT_SLOTS = ("1", "4", "8", "16")
PAGE_TOKENS = 1000  # pages/hour of the sweep: decode only, at this many tokens a page


def throughput(dec: dict, other: dict, paths: dict) -> tuple[list[str], dict, dict]:
    """Batching sweep, llama.cpp ratios, page job and export memory: printed lines, the headline
    figures of the best CPU variant (by batch-1 decode rate) and the issue's targets."""
    lines, summary, checks = ["", "aggregate decode tok/s (pages/hour at 1,000 decoded tokens a page)"], {}, {}
    for name, b in other["batching"].items():
        r = b["decode_tok_s"]
        lines.append(f"  {name:<6}" + "".join(f" batch {s:>2}: {r[s]:7.1f} ({3600 * r[s] / PAGE_TOKENS:5.0f})"
                                             for s in THROUGHPUT_SLOTS if s in r)
                     + f"; KV {b['kv_bytes_per_slot'] / 2**20:.0f} MiB/slot at {b['kv_capacity']},"
                       f" peak RSS {b['peak_rss_bytes'] / GIB:.2f} GiB")
    for quant, q in other["llama_cpp"].items():
        par = q.get("parallel", {})
        lines.append(f"  llama.cpp {quant}: batch 1 (llama-bench) {q['decode']['tokens_per_s']:.1f}; parallel "
                     + ", ".join(f"{s}: {v['decode_tokens_per_s']:.1f}" for s, v in par.items()))
    ort = [c for c in dec if c != "eager"]
    if not ort:
        return lines, summary, checks
    best = max(ort, key=lambda c: dec[c]["page_small"]["tokens_per_s"])
    ratios = {}
    for name in ort:
        d = dec[name]["page_small"]["tokens_per_s"]
        x = {"decode_vs_ceiling": d / dec[name]["ceiling"]["tokens_per_s"]}
        quant = LLAMA_QUANT.get(name)
        q = other["llama_cpp"].get(quant)
        if q:
            x["decode_vs_llama_cpp"] = d / q["decode"]["tokens_per_s"]
            x["llama_cpp_quant"] = quant
            bt = other["batching"].get(name, {}).get("decode_tok_s", {})
            x["batched_vs_llama_cpp"] = {s: bt[s] / v["decode_tokens_per_s"]
                                         for s, v in q.get("parallel", {}).items() if s in bt}
        bt = other["batching"].get(name, {}).get("decode_tok_s", {})
        if "8" in bt:
            x["batch8_vs_batch1"] = bt["8"] / bt["1"]
        if "16" in bt:
            x["batch16_vs_batch1"] = bt["16"] / bt["1"]
        if name in other["job"]:
            x["job16_vs_sequential"] = other["job"][name]["job16_vs_sequential"]
        ratios[name] = x
        lines.append(f"  {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in x.items() if isinstance(v, float)))
    for name, j in other["job"].items():
        lines.append(f"  {j['pages']}-page job {name}: sequential {j['sequential_s']:.0f} s, batched ({j['max_batch']} slots)"
                     f" {j['batched_s']:.0f} s = {j['job16_vs_sequential']:.2f}x, same ids {j['same_ids']}")
    export = json.loads((paths["fp32"] / fullsize_prepare.DONE).read_text())
    if "peak_rss_bytes" in export:
        lines.append(f"  export ({' '.join(export['command'][:2])} ... --mode {' '.join(export['modes'])}): "
                     f"{export['seconds']:.0f} s, peak RSS {export['peak_rss_bytes'] / GIB:.2f} GiB")
    summary = {"best_cpu_variant": best, **{k: v for k, v in ratios[best].items()},
               "per_variant": ratios, "export": export}
    i4, i8 = ratios.get("int4", {}), ratios.get("int8", {})
    want = [("int4-weight batch-1 decode / bandwidth ceiling >= 0.6", i4.get("decode_vs_ceiling"), 0.6),
            ("int4-weight / llama.cpp Q4_0 batch-1 decode >= 1.0", i4.get("decode_vs_llama_cpp"), 1.0),
            ("int8-weight / llama.cpp Q8_0 batch-1 decode >= 1.0", i8.get("decode_vs_llama_cpp"), 1.0),
            ("int4-weight batch 8 / batch 1 aggregate decode >= 3.5", i4.get("batch8_vs_batch1"), 3.5),
            ("16-page job, sequential / batched seconds >= 3", i4.get("job16_vs_sequential"), 3.0)]
    if "int4" in other["batching"]:
        want.append(("int4-weight batch 16 peak RSS <= 24 GiB (GiB)", other["batching"]["int4"]["peak_rss_bytes"] / GIB,
                     -24.0))
    if "peak_rss_bytes" in export:
        want.append(("dsocr-export build peak RSS <= 14 GiB (GiB)", export["peak_rss_bytes"] / GIB, -14.0))
    for what, got, target in want:
        if got is None:
            continue
        met = got <= -target if target < 0 else got >= target
        checks[what] = {"value": got, "target": abs(target), "met": met}
        lines.append(f"target: {what}: {got:.2f} -> {'met' if met else 'missed'}")
    return lines, summary, checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, help="cut decoder/SAM/CLIP depth to N (development)")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2, help="best of N within a pass")
    ap.add_argument("--passes", type=int, default=2, help="passes over all backends; best of the passes")
    ap.add_argument("--threads", type=int, default=psutil.cpu_count(logical=False))
    ap.add_argument("--ort-config", nargs="*", default=[], help="ORT session config entries key=value")
    ap.add_argument("--modes", default=",".join(fullsize_prepare.MODES),
                    help="modes of the fp32 bundle (the decode and batching phases use Small)")
    ap.add_argument("--slots", default="1,4,8,16", help="batching sweep's slot counts ('' skips it)")
    ap.add_argument("--batch-steps", type=int, default=32, help="timed passes per slot count (and llama.cpp's -ntg)")
    ap.add_argument("--batch-rounds", type=int, default=2)
    ap.add_argument("--job", default="int4", help="variants that run the page job ('' skips it)")
    ap.add_argument("--job-pages", type=int, default=16)
    ap.add_argument("--job-tokens", type=int, default=128, help="most new tokens a page in the job")
    ap.add_argument("--no-llama-cpp", dest="llama_cpp", action="store_false",
                    help="skip llama.cpp (bench/llama_cpp.py: builds it from the llama-cpp-python sdist)")
    ap.add_argument("--prepare-only", action="store_true")
    a = ap.parse_args()
    root = HERE.parent
    workdir = a.workdir or root / "build" / (f"bench-cpu-L{a.layers}" if a.layers else "bench-cpu-full")
    workdir.mkdir(parents=True, exist_ok=True)
    backends = a.backends.split(",")
    t0 = time.time()
    say(f"{platform.processor() or platform.machine()}, {psutil.cpu_count(logical=False)} physical cores, "
        f"{psutil.virtual_memory().total / GIB:.0f} GiB RAM, load {os.getloadavg()[0]:.1f}; workdir {workdir}")
    variants = tuple(int(b[3:]) for b in backends if b in ("int8", "int4"))
    paths = fullsize_prepare.ensure_all(workdir, a.layers, variants, tuple(a.modes.split(",")))
    if a.llama_cpp and not a.layers:
        _sub("llama_cpp.py", ["prepare", "--workdir", str(workdir)])
    a.llama_cpp = a.llama_cpp and not a.layers  # a cut model has no GGUF counterpart here
    if a.prepare_only:
        return
    say("memory bandwidth")
    _sub("membw.py", ["--json", str(workdir / "membw.json")])
    bw = json.loads((workdir / "membw.json").read_text())
    results, other = run_all(backends, paths, workdir, a)
    cfg = json.loads((paths["ckpt"] / "config.json").read_text())
    context = results[backends[0]]["page_small"]["prompt_tokens"] + a.tokens / 2
    ceil = ceilings(paths, results, bw, context, cfg)
    lines, ratios = table(results)
    target_lines, verdicts = targets(results, ratios)
    lines += target_lines
    more, summary, checks = throughput(results, other, paths)
    lines += more
    say(f"done in {(time.time() - t0) / 60:.1f} min")
    print("\n" + "\n".join(lines))
    for p, c in ceil.items():
        print(f"active bytes/token {p}: {c['total_bytes'] / 1e6:.0f} MB = weights {c['weight_bytes'] / 1e6:.0f} "
              f"+ KV {c['kv_bytes'] / 1e6:.0f} (mean context {context:.0f}) + embedding row")
    agree = agreement(results, workdir)
    for name, g in agree.items():
        print(f"{name}: Small prefill logits cosine vs eager {g['logits_cosine']:.5f}, top-1 same {g['top1_same']}, "
              f"greedy ids same {g['greedy_ids_same_of_32']}/32")
    report = {"machine": {"cpu": platform.processor(), "physical_cores": psutil.cpu_count(logical=False),
                          "ram_bytes": psutil.virtual_memory().total, "loadavg_end": os.getloadavg()},
              "layers": a.layers or "full", "bandwidth": bw, "ceilings": ceil, "results": results,
              "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
              **summary, "batching": other["batching"], "llama_cpp": other["llama_cpp"], "job": other["job"],
              "ratios": ratios, "targets": {**verdicts, **checks}, "agreement": agree, "table": lines,
              "minutes": (time.time() - t0) / 60}
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))
        say(f"wrote {a.json}")


if __name__ == "__main__":
    main()
