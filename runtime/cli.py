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
@click.option("--max-new-tokens", type=click.IntRange(1, None), default=None,
              help="Most ids generated per page (default: the bundle's; 8192 for a real checkpoint, 256 for the demo).")
@click.option("--ngram-size", type=click.IntRange(0, None), default=None,
              help="No-repeat n-gram size (0: off; default: the bundle's, 20).")
@click.option("--ngram-window", type=click.IntRange(1, None), default=None, help="N-gram ban window (default: the bundle's, 50).")
@click.option("--looped", type=click.Choice(["keep", "drop"]), default="keep", show_default=True,
              help="Pages the loop guard stopped: keep them, or drop their text (their JSON says looped and dropped; "
                   "a PDF's document leaves them out).")
@click.option("--layouts", is_flag=True, help="Also write layouts/<page>.jpg: the page with its boxes and labels drawn.")
@click.option("--dpi", type=click.FloatRange(36, 600), default=144, show_default=True, help="PDF rendering resolution.")
@click.option("--backend", type=click.Choice(["ort", "tensorrt"]), default="ort", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True,
              help="ONNX Runtime execution provider.")
@click.option("--threads", type=click.IntRange(1, None), default=None, help="Intra-op threads (default: all cores).")
@click.option("--stream", is_flag=True, help="Print the model's text as it is generated.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@library_errors
def run(inputs, bundle, out, mode, prompt, ref, max_new_tokens, ngram_size, ngram_window, looped, layouts, dpi,
        backend, device, threads, stream, quiet) -> None:
    """OCR INPUTS (images, PDFs, directories) into OUT, one result per page, written atomically.

    A PDF also gets OUT/<name>.md, its pages joined by the official page-split marker, once all its
    pages are done."""
    from .batch import iter_inputs, run_batch
    from .documents import apply_looped, check_names, write_documents
    from .pipeline import Pipeline, RunOptions

    items = list(iter_inputs(inputs))
    check_names(items)
    pipe = Pipeline(bundle, backend=backend, device=device, threads=threads)
    gen = pipe.generation_options(max_new_tokens=max_new_tokens, ngram_size=ngram_size, ngram_window=ngram_window)
    options = RunOptions(mode=mode, prompt=prompt, ref=ref, generation=gen)
    pipe.mode(options.mode)  # a wrong mode fails before any page is read
    if pipe.is_demo:
        click.echo(f"{bundle} is a demo bundle (the built-in demo checkpoint): its text is meaningless; "
                   f"build one from deepseek-ai/DeepSeek-OCR for real OCR. {gen.max_new_tokens} new tokens a page.",
                   err=True)
    on_text = (lambda s: (sys.stdout.write(s), sys.stdout.flush())) if stream else None
    n_looped = 0

    def ocr(page):
        nonlocal n_looped
        result = pipe.ocr(page, options, on_text=on_text)
        n_looped += result.looped
        return apply_looped(result, looped)

    writer = None
    if layouts:
        from .layouts import LayoutWriter

        writer = LayoutWriter(out, dpi)
    summary = run_batch(items, ocr, out, progress=not quiet, dpi=dpi, on_page=writer)
    if writer is not None:
        writer.catch_up(items)
    docs, waiting = write_documents(items, out)
    click.echo(f"{summary.done} page(s) done, {summary.skipped} already done, {summary.failed} failed -> {out}")
    if n_looped:
        click.echo(f"{n_looped} page(s) stopped by the loop guard ({'dropped' if looped == 'drop' else 'kept'})",
                   err=True)
    if docs or waiting:
        click.echo(f"{len(docs)} document(s) written" + (f", {len(waiting)} waiting for failed pages" if waiting else ""))
    if summary.failed:
        click.echo(f"see {out / 'errors.jsonl'}", err=True)
        click.get_current_context().exit(1)


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
    for name, g in m.graphs.items():
        size = sum((Path(bundle) / f).stat().st_size for f in m.files if f.startswith(g.file))
        click.echo(f"  {name:<12} {g.file:<22} {size / 2**20:9.1f} MiB  {g.precision}")
    click.echo("files verified (SHA-256)" if not no_verify else "files not verified")


if __name__ == "__main__":  # pragma: no cover
    main()
