"""`dsocr`: run a bundle on images and PDFs (markdown, boxes JSON, figure crops per page).

onnxruntime / tensorrt are imported inside the commands, so `--help` stays light.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .clickutil import library_errors
from .errors import OutputError
from .modes import MODE_NAMES

DEFAULT_MAX_PAGES = 10_000  # = batch.DEFAULT_MAX_PAGES (batch is imported lazily)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dsocr")
def main() -> None:
    """Run DeepSeek-OCR bundles (built by dsocr-export) on images and PDFs."""


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange that also refuses NaN (every comparison with NaN is false, so FloatRange lets it in)."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if rv != rv:
            self.fail(f"{value!r} is not a number", param, ctx)
        return rv


EXIT_FAILED_PAGES, EXIT_OUTPUT, EXIT_INTERRUPTED = 1, 3, 130


class OutputUnusable(click.ClickException):
    exit_code = EXIT_OUTPUT


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def clamp_threads(threads: int | None) -> int | None:
    cores = available_cores()
    if threads is not None and threads > cores:
        click.echo(f"--threads {threads} is more than the {cores} core(s) available; using {cores}", err=True)
        return cores
    return threads


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--model", "bundle", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Bundle directory (manifest.json, graphs, tokenizer).")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out"), show_default=True,
              help="Output directory: <page>.md, <page>.json (boxes), images/ (figure crops). Resumes if re-run.")
@click.option("--mode", type=click.Choice(MODE_NAMES, case_sensitive=False), default=None,
              help="Resolution mode (default: the bundle's first).")
@click.option("--prompt", default="document", show_default=True,
              help="Template (document, ocr, free, figure, describe, locate) or a text containing <image>.")
@click.option("--ref", default=None, help="Referring expression for --prompt locate.")
@click.option("--max-new-tokens", type=click.IntRange(1, 1 << 20), default=8192, show_default=True)
@click.option("--ngram-size", type=click.IntRange(0, 1024), default=20, show_default=True,
              help="No-repeat n-gram size (0: off).")
@click.option("--ngram-window", type=click.IntRange(1, 1 << 20), default=50, show_default=True)
@click.option("--dpi", type=FiniteFloatRange(36, 600), default=144, show_default=True, help="PDF rendering resolution.")
@click.option("--max-pages", type=click.IntRange(1, 1_000_000), default=DEFAULT_MAX_PAGES, show_default=True,
              help="Most pages (PDF pages, image frames) read from one input file; a longer file is recorded "
                   "in errors.jsonl and skipped.")
@click.option("--backend", type=click.Choice(["ort", "tensorrt"]), default="ort", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True,
              help="ONNX Runtime execution provider.")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="Intra-op threads (default: all cores; more than the cores available are clamped).")
@click.option("--batch", type=click.IntRange(1, 256), default=None,
              help="Pages decoded together (slots of one KV cache). Default: from the bundle's KV bytes per "
                   "slot and the available memory (see `dsocr info`); 1 with --stream or --backend tensorrt "
                   "(whose batch-1 decoder profiles run the slots one pass each).")
@click.option("--stream", is_flag=True, help="Print the model's text as it is generated (one page at a time).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@library_errors
def run(inputs, bundle, out, mode, prompt, ref, max_new_tokens, ngram_size, ngram_window, dpi, max_pages, backend,
        device, threads, batch, stream, quiet) -> None:
    """OCR INPUTS (images, PDFs, directories) into OUT, one result per page, written atomically.

    A directory gives the PDFs and images directly in it (not subfolders). Exit status: 0 every page
    done; 1 some pages failed (see OUT/errors.jsonl) or a bad bundle or input; 2 a usage error; 3 OUT
    cannot be written (disk full, read-only) or another run is using it; 130 interrupted (Ctrl-C).
    """
    ctx = click.get_current_context()
    try:
        summary = _run(inputs, bundle, out, mode, prompt, ref, max_new_tokens, ngram_size, ngram_window, dpi,
                       max_pages, backend, device, clamp_threads(threads), batch, stream, quiet)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; finished pages are kept in {out}: run the same command again to resume", err=True)
        ctx.exit(EXIT_INTERRUPTED)
    except OutputError as e:
        raise OutputUnusable(str(e)) from e
    click.echo(f"{summary.done} page(s) done, {summary.skipped} already done, {summary.failed} failed -> {out}")
    if summary.failed:
        click.echo(f"see {out / 'errors.jsonl'}", err=True)
        ctx.exit(EXIT_FAILED_PAGES)


def _run(inputs, bundle, out, mode, prompt, ref, max_new_tokens, ngram_size, ngram_window, dpi, max_pages, backend,
         device, threads, batch, stream, quiet):
    from .batch import collect_inputs, prepare_output_dir, run_batch
    from .decoding import GenerationOptions
    from .pipeline import Pipeline, RunOptions

    items = collect_inputs(inputs, max_pages=max_pages)  # nothing to read: InputError before the model loads
    prepare_output_dir(out)  # an impossible -o fails before the model loads
    gen = GenerationOptions(max_new_tokens=max_new_tokens, ngram_size=ngram_size, ngram_window=ngram_window)
    options = RunOptions(mode=mode, prompt=prompt, ref=ref, generation=gen)
    if batch is not None and batch > 1 and stream:
        raise click.UsageError("--batch > 1 works without --stream (streamed text comes one page at a time)")
    pipe = Pipeline(bundle, backend=backend, device=device, threads=threads)
    pipe.mode(options.mode)  # a wrong mode fails before any page is read
    if batch is None:
        from .engine import default_batch

        manifest = getattr(pipe, "manifest", None)  # None: a pipeline-like object, one page at a time
        batch = 1 if stream or backend == "tensorrt" or manifest is None else default_batch(
            manifest, pipe.runner.max_seq_len)
    if batch == 1:
        on_text = (lambda s: (sys.stdout.write(s), sys.stdout.flush())) if stream else None
        return run_batch(items, lambda page: pipe.ocr(page, options, on_text=on_text), out, progress=not quiet,
                         dpi=dpi)
    return _run_batched(pipe, options, items, out, batch, dpi, quiet)


def _run_batched(pipe, options, items, out: Path, batch: int, dpi: float, quiet: bool):
    """run_batch over a started BatchEngine of `batch` slots, fed ahead by LookaheadOCR."""
    from .batch import load_page, run_batch
    from .engine import LookaheadOCR

    engine = pipe.engine(batch).start()
    todo = [it for it in dict.fromkeys(items) if not (out / f"{it.stem}.md").exists()]
    ocr = LookaheadOCR(engine, options, (lambda it=it: load_page(it, dpi) for it in todo))
    try:
        return run_batch(items, ocr, out, progress=not quiet, dpi=dpi, status=ocr.status)
    finally:
        engine.close(cancel_pending=True)


@main.command()
@click.option("--model", "bundle", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--no-verify", is_flag=True, help="Skip the SHA-256 check of every file.")
@library_errors
def info(bundle, no_verify) -> None:
    """Show a bundle's manifest (modes, precision, graphs, KV cache) after checking its files."""
    from .manifest import read_manifest

    m = read_manifest(bundle, verify_files=not no_verify)
    click.echo(f"bundle {bundle}: format {m.format_version}, dsocr {m.dsocr_version}, precision {m.precision}")
    click.echo(f"modes: {', '.join(m.modes)}; source: {m.source.get('checkpoint')}")
    click.echo(f"kv cache: {m.kv.num_layers} layers x {m.kv.num_heads} heads x {m.kv.head_dim}, {m.kv.dtype}, "
               f"max {m.kv.max_seq_len} positions ({m.kv.layout})")
    from .engine import available_memory, default_batch, kv_bytes_per_slot

    avail = available_memory()
    click.echo(f"kv bytes per slot: {kv_bytes_per_slot(m) / 2**20:.1f} MiB; default --batch {default_batch(m)} "
               f"(available memory {avail / 2**30:.1f} GiB)" if avail else
               f"kv bytes per slot: {kv_bytes_per_slot(m) / 2**20:.1f} MiB; default --batch 1 (available memory unknown)")
    for name, g in m.graphs.items():
        size = sum(e["bytes"] for f, e in m.files.items() if f == g.file or f.startswith(g.file + "."))
        click.echo(f"  {name:<12} {g.file:<22} {size / 2**20:9.1f} MiB  {g.precision}")
    click.echo("files verified (SHA-256)" if not no_verify else "files not verified")


if __name__ == "__main__":  # pragma: no cover
    main()
