"""`dsocr-export`: build bundles (fp32 and precision variants), verify them against PyTorch, compare a
variant with fp32, check golden fixtures.

Heavy libraries (torch, onnx, tensorrt) are imported inside the commands, so `--help` stays light.
Library errors (DsocrError) become click errors with exit code 1; tolerance failures exit 2.
"""
from __future__ import annotations

from pathlib import Path

import click

from dsocr.runtime.clickutil import library_errors
from dsocr.runtime.modes import MODE_NAMES, mode_names

MODE_CHOICE = click.Choice(MODE_NAMES + ("all",), case_sensitive=False)
PRECISION_CHOICES = ("fp32", "fp16", "int8", "int8-weight", "int4-weight")  # dsocr.calibration.variants.PRECISIONS


def _modes(values: tuple[str, ...]) -> tuple[str, ...]:
    names = [m.lower() for m in values] or ["small"]
    return mode_names("ocr1") if "all" in names else tuple(dict.fromkeys(names))  # all: every OCR-1 mode


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dsocr")
def main() -> None:
    """Turn a DeepSeek-OCR checkpoint into ONNX bundles and TensorRT engines."""


@main.command()
@click.option("--mode", "modes", type=MODE_CHOICE, multiple=True, help="Mode(s) to build (repeatable, or 'all' OCR-1 modes); "
                   "ocr2 builds DeepSeek-OCR-2. Default: small.")
@click.option("--checkpoint", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Hugging Face checkpoint directory (config.json, safetensors, tokenizer.json). Default: the built-in demo.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Bundle directory to write. Default: bundles/<mode>.")
@click.option("--max-seq-len", type=click.IntRange(16, None), default=None, help="KV cache length (default: the model's 8192).")
@click.option("--force", is_flag=True, help="Replace an existing bundle directory.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--engines/--no-engines", default=True, show_default=True,
              help="Also build TensorRT plans (strongly typed) when TensorRT is installed.")
@click.option("--precision", "precisions", type=click.Choice(PRECISION_CHOICES), multiple=True,
              help="fp32 (default) and/or variants written next to it as <out>-<precision> (repeatable): fp16, "
                   "int8 (Q/DQ) for TensorRT and ONNX Runtime; int8-weight, int4-weight (MatMulNBits) for CPUs.")
@click.option("--calib", "calib", type=click.Path(exists=True, path_type=Path), multiple=True,
              help="Calibration pages: PDFs, images or directories (repeatable). Default: built-in synthetic pages.")
@click.option("--calib-pages", type=click.IntRange(1, 10000), default=8, show_default=True,
              help="Synthetic pages when no --calib is given (or the most pages read from --calib).")
@click.option("--calib-method", type=click.Choice(["max", "percentile", "entropy"]), default="max", show_default=True,
              help="Activation range statistic for int8.")
@click.option("--calib-cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Calibration cache directory (default: $DSOCR_CALIB_CACHE or ~/.cache/dsocr/calibration).")
@library_errors
def build(modes, checkpoint, out, max_seq_len, force, quiet, engines, precisions, calib, calib_pages, calib_method,
          calib_cache) -> None:
    """Export ONNX graphs (+ manifest) for MODE; TensorRT engines too where TensorRT is installed."""
    modes = _modes(modes)
    out = out or Path("bundles") / ("-".join(modes) if len(modes) < 5 else "all")
    variants = [p for p in dict.fromkeys(precisions) if p != "fp32"]
    if variants and out.exists() and not force:
        _check_reusable(out, modes)
        click.echo(f"using the existing fp32 bundle {out} (--force rebuilds it)")
    else:
        _build_fp32(modes, checkpoint, out, max_seq_len, force, quiet, engines)
    if variants:
        _build_variants(out, variants, calib, calib_pages, calib_method, calib_cache, force, quiet, engines)


def _check_reusable(out: Path, modes) -> None:
    from dsocr.runtime.manifest import read_manifest

    m = read_manifest(out, verify_files=False)
    if m.precision != "fp32" or not set(modes) <= set(m.modes):
        raise click.ClickException(f"{out} is a {m.precision} bundle for mode(s) {', '.join(m.modes)}, not an fp32 one "
                                   f"for {', '.join(modes)}; pass --force to rebuild it or choose another --out")


def _build_fp32(modes, checkpoint, out, max_seq_len, force, quiet, engines) -> None:
    import tempfile

    from .bundle import DEMO_SOURCE, BuildOptions, build_bundle

    opts = BuildOptions(modes=modes, max_seq_len=max_seq_len, overwrite=force, progress=not quiet)
    with tempfile.TemporaryDirectory(prefix="dsocr-demo-") as tmp:
        if checkpoint is None:
            from .demo import write_demo_checkpoint

            generation = _generation(modes)
            label = {"ocr1": "DeepSeek-OCR", "ocr2": "DeepSeek-OCR-2"}[generation]
            click.echo(f"no --checkpoint: using the built-in demo checkpoint ({label}; reduced sizes, "
                       "its text is meaningless)")
            checkpoint, source = write_demo_checkpoint(Path(tmp) / "demo", generation=generation), DEMO_SOURCE
        else:
            source = None
        manifest = build_bundle(checkpoint, out, opts, source=source)
    sizes = sum((out / f).stat().st_size for f in manifest.files)
    click.echo(f"wrote {out} ({len(manifest.files)} files, {sizes / 2**20:.1f} MiB), modes: {', '.join(manifest.modes)}")
    if not engines:
        return
    if not _tensorrt_available():
        click.echo("TensorRT is not installed here: built the ONNX bundle only (run it with `dsocr run`).")
        return
    from dsocr.engines.build import build_engines

    result = build_engines(out)
    click.echo(f"built TensorRT engines into {out / 'engines'}: {', '.join(result.get('plans', {})) or 'none'}")


def _generation(modes) -> str:
    """The one model generation of `modes` (a bundle is built for one; OCR-1 and OCR-2 do not mix)."""
    from dsocr.runtime.modes import get_mode

    gens = sorted({get_mode(m).generation for m in modes})
    if len(gens) > 1:
        raise click.ClickException(f"modes {', '.join(modes)} mix model generations ({', '.join(gens)}); "
                                   "build an OCR-1 bundle and an OCR-2 bundle separately")
    return gens[0]


def _build_variants(fp32_dir, variants, calib, calib_pages, method, cache, force, quiet, engines) -> None:
    from dsocr.calibration.pages import calibration_pages
    from dsocr.calibration.variants import PrecisionOptions, build_variants

    pages, label = calibration_pages(calib, synthetic=calib_pages, limit=calib_pages if calib else None)
    click.echo(f"calibration pages: {label}")
    opts = PrecisionOptions(method=method, cache_dir=cache, overwrite=force, progress=not quiet)

    def done(precision, target, manifest):
        size = sum(e["bytes"] for e in manifest.files.values()) / 2**20
        kept = {g: d.get("fp32_groups") for g, d in manifest.source["precision_detail"].items() if d.get("fp32_groups")}
        click.echo(f"wrote {target} ({precision}, {size:.1f} MiB); kept fp32: {kept or 'defaults only'}")
        on_trt = all("tensorrt" in t for t in manifest.source["targets"].values())
        if engines and on_trt and _tensorrt_available():
            from dsocr.engines.build import build_engines

            build_engines(target)
            click.echo(f"built TensorRT engines into {target / 'engines'}")

    build_variants(fp32_dir, variants, pages, opts, label, on_done=done)


def _tensorrt_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


@main.command()
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Checkpoint to compare with (default: the one the bundle was built from).")
@click.option("--page", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Page image to run (default: the shipped sample page).")
@click.option("--steps", type=click.IntRange(0, 512), default=8, show_default=True, help="Greedy decode steps compared.")
@library_errors
def verify(bundle, checkpoint, page, steps) -> None:
    """Compare a bundle's graphs with the PyTorch model (table of errors); exit 2 on a miss."""
    from .verify import format_diffs, verify_bundle

    diffs = verify_bundle(bundle, checkpoint, page, steps)
    click.echo(format_diffs(diffs))
    if not all(d.ok for d in diffs):
        click.get_current_context().exit(2)


@main.command()
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="The precision variant to check.")
@click.option("--against", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="The fp32 bundle it was made from.")
@click.option("--pages", type=click.Path(exists=True, path_type=Path), multiple=True,
              help="PDFs, images or directories (repeatable). Default: built-in synthetic pages.")
@click.option("--synthetic", type=click.IntRange(1, 1000), default=7, show_default=True,
              help="Synthetic pages when no --pages are given.")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Synthetic page seed (calibration uses seed 0, so the default pages are unseen ones).")
@click.option("--mode", "modes", type=MODE_CHOICE, multiple=True, help="Modes to compare (default: all the bundle has).")
@click.option("--max-new-tokens", type=click.IntRange(1, 8192), default=32, show_default=True,
              help="Greedy ids per page (fp32's run; the variant is teacher-forced on them).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the full report (per page, with texts) as JSON.")
@click.option("--min-top1", type=click.FloatRange(0, 1), default=None,
              help="Exit 2 when a mode's top-1 agreement is below this share.")
@library_errors
def compare(bundle, against, pages, synthetic, seed, modes, max_new_tokens, json_path, min_top1) -> None:
    """Compare a precision variant with its fp32 bundle: logits cosine, top-1 agreement, text edit distance."""
    from tqdm import tqdm

    from dsocr.calibration.pages import calibration_pages
    from dsocr.calibration.report import compare_bundles, format_report

    page_list, label = calibration_pages(pages, synthetic=synthetic, seed=seed)
    modes = _modes(modes) if modes else None
    with tqdm(total=len(page_list) * (len(modes) if modes else 1), unit="page", disable=None) as bar:
        report = compare_bundles(bundle, against, page_list, modes, max_new_tokens, pages_label=label,
                                 on_page=bar.update)
    click.echo(format_report(report))
    if json_path:
        json_path.write_text(report.to_json(), encoding="utf-8")
        click.echo(f"wrote {json_path}")
    if min_top1 is not None and any(m.top1 < min_top1 for m in report.modes):
        click.echo(f"top-1 agreement below {min_top1:.2%}", err=True)
        click.get_current_context().exit(2)


@main.command("check-golden")
@click.option("--fixture", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Golden fixture directory (config.json, keys.txt, page*.png, golden.npz); OCR-1 or OCR-2, "
                   "told apart by its keys.")
@click.option("--backend", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True,
              help="Run dsocr's PyTorch model, or export ONNX graphs and run them with ONNX Runtime.")
@click.option("--mode", "modes", type=MODE_CHOICE, multiple=True, help="Modes to check (default: all).")
@library_errors
def check_golden(fixture, backend, modes) -> None:
    """Reproduce a golden fixture in every mode; exit 2 if any tolerance is missed."""
    from .golden import format_table, run_golden

    modes = _modes(modes) if modes else None  # None: every mode (case) of the fixture's generation
    rows = run_golden(fixture, backend, modes, on_mode=lambda m: click.echo(f"checking {m} ...", err=True))
    click.echo(format_table(rows))
    failed = [r for r in rows if not r.ok]
    if failed:
        click.echo(f"{len(failed)} of {len(rows)} checks FAILED", err=True)
        click.get_current_context().exit(2)
    click.echo(f"all {len(rows)} checks passed ({backend})")


if __name__ == "__main__":  # pragma: no cover
    main()
