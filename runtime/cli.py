"""`dsocr`: run a bundle on images and PDFs (markdown, boxes JSON, figure crops per page).

onnxruntime / tensorrt are imported inside the commands, so `--help` stays light.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from .clickutil import library_errors
from .modes import MODE_NAMES


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dsocr")
def main() -> None:
    """Run DeepSeek-OCR bundles (built by dsocr-export) on images and PDFs."""


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
@click.option("--max-new-tokens", type=click.IntRange(1, None), default=8192, show_default=True)
@click.option("--ngram-size", type=click.IntRange(0, None), default=20, show_default=True, help="No-repeat n-gram size (0: off).")
@click.option("--ngram-window", type=click.IntRange(1, None), default=50, show_default=True)
@click.option("--dpi", type=click.FloatRange(36, 600), default=144, show_default=True, help="PDF rendering resolution.")
@click.option("--backend", type=click.Choice(["ort", "tensorrt"]), default="ort", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True,
              help="ONNX Runtime execution provider.")
@click.option("--threads", type=click.IntRange(1, None), default=None, help="Intra-op threads (default: all cores).")
@click.option("--batch", type=click.IntRange(1, 256), default=None,
              help="Pages decoded together (slots of one KV cache). Default: from the bundle's KV bytes per "
                   "slot and the available memory (see `dsocr info`); 1 with --stream or --backend tensorrt "
                   "(whose batch-1 decoder profiles run the slots one pass each).")
@click.option("--stream", is_flag=True, help="Print the model's text as it is generated (one page at a time).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@library_errors
def run(inputs, bundle, out, mode, prompt, ref, max_new_tokens, ngram_size, ngram_window, dpi, backend, device,
        threads, batch, stream, quiet) -> None:
    """OCR INPUTS (images, PDFs, directories) into OUT, one result per page, written atomically."""
    from .batch import iter_inputs, run_batch
    from .decoding import GenerationOptions
    from .pipeline import Pipeline, RunOptions

    gen = GenerationOptions(max_new_tokens=max_new_tokens, ngram_size=ngram_size, ngram_window=ngram_window)
    options = RunOptions(mode=mode, prompt=prompt, ref=ref, generation=gen)
    if batch is not None and batch > 1 and stream:
        raise click.UsageError("--batch > 1 works without --stream (streamed text comes one page at a time)")
    pipe = Pipeline(bundle, backend=backend, device=device, threads=threads)
    pipe.mode(options.mode)  # a wrong mode fails before any page is read
    if batch is None:
        from .engine import default_batch

        batch = 1 if stream or backend == "tensorrt" else default_batch(pipe.manifest, pipe.runner.max_seq_len)
    items = list(iter_inputs(inputs))
    if batch == 1:
        on_text = (lambda s: (sys.stdout.write(s), sys.stdout.flush())) if stream else None
        summary = run_batch(items, lambda page: pipe.ocr(page, options, on_text=on_text), out,
                            progress=not quiet, dpi=dpi)
    else:
        summary = _run_batched(pipe, options, items, out, batch, dpi, quiet)
    click.echo(f"{summary.done} page(s) done, {summary.skipped} already done, {summary.failed} failed -> {out}")
    if summary.failed:
        click.echo(f"see {out / 'errors.jsonl'}", err=True)
        click.get_current_context().exit(1)


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
        size = sum((Path(bundle) / f).stat().st_size for f in m.files if f.startswith(g.file))
        click.echo(f"  {name:<12} {g.file:<22} {size / 2**20:9.1f} MiB  {g.precision}")
    click.echo("files verified (SHA-256)" if not no_verify else "files not verified")


if __name__ == "__main__":  # pragma: no cover
    main()
