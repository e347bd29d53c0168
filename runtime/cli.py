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
@click.option("--max-new-tokens", type=click.IntRange(1, 1 << 20), default=None,
              help="Most ids generated per page (default: the bundle's; 8192 for a real checkpoint, 256 for the demo).")
@click.option("--ngram-size", type=click.IntRange(0, 1024), default=None,
              help="No-repeat n-gram size (0: off; default: the bundle's, 20).")
@click.option("--ngram-window", type=click.IntRange(1, 1 << 20), default=None,
              help="N-gram ban window (default: the bundle's, 50).")
@click.option("--looped", type=click.Choice(["keep", "drop"]), default="keep", show_default=True,
              help="Pages the loop guard stopped: keep them, or drop their text (their JSON says looped and dropped; "
                   "a PDF's document leaves them out).")
@click.option("--layouts", is_flag=True, help="Also write layouts/<page>.jpg: the page with its boxes and labels drawn.")
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
                   "(engines built with --slots N decode up to N slots in one pass). Weight-only bundles: "
                   "batched ids may differ from --batch 1 where two tokens nearly tie (kernel rounding).")
@click.option("--stream", is_flag=True, help="Print the model's text as it is generated (one page at a time).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@library_errors
def run(inputs, bundle, out, mode, prompt, ref, max_new_tokens, ngram_size, ngram_window, looped, layouts, dpi,
        max_pages, backend, device, threads, batch, stream, quiet) -> None:
    """OCR INPUTS (images, PDFs, directories) into OUT, one result per page, written atomically.

    A directory gives the PDFs and images directly in it (not subfolders). A PDF also gets
    OUT/<name>.md, its pages joined by the official page-split marker, once all its pages are done.
    Exit status: 0 every page done; 1 some pages failed (see OUT/errors.jsonl) or a bad bundle or
    input; 2 a usage error; 3 OUT cannot be written (disk full, read-only) or another run is using
    it; 130 interrupted (Ctrl-C).
    """
    ctx = click.get_current_context()
    try:
        summary, n_looped, docs, waiting = _run(
            inputs, bundle, out, mode, prompt, ref, max_new_tokens, ngram_size, ngram_window, looped, layouts, dpi,
            max_pages, backend, device, clamp_threads(threads), batch, stream, quiet)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; finished pages are kept in {out}: run the same command again to resume", err=True)
        ctx.exit(EXIT_INTERRUPTED)
    except OutputError as e:
        raise OutputUnusable(str(e)) from e
    click.echo(f"{summary.done} page(s) done, {summary.skipped} already done, {summary.failed} failed -> {out}")
    if n_looped:
        click.echo(f"{n_looped} page(s) stopped by the loop guard ({'dropped' if looped == 'drop' else 'kept'})",
                   err=True)
    if docs or waiting:
        click.echo(f"{len(docs)} document(s) written" + (f", {len(waiting)} waiting for failed pages" if waiting else ""))
    if summary.failed:
        click.echo(f"see {out / 'errors.jsonl'}", err=True)
        ctx.exit(EXIT_FAILED_PAGES)


def _run(inputs, bundle, out, mode, prompt, ref, max_new_tokens, ngram_size, ngram_window, looped, layouts, dpi,
         max_pages, backend, device, threads, batch, stream, quiet):
    from .batch import collect_inputs, prepare_output_dir, run_batch
    from .documents import apply_looped, check_names, write_documents
    from .pipeline import Pipeline, RunOptions

    items = collect_inputs(inputs, max_pages=max_pages)  # nothing to read: InputError before the model loads
    check_names(items)
    prepare_output_dir(out)  # an impossible -o fails before the model loads
    if batch is not None and batch > 1 and stream:
        raise click.UsageError("--batch > 1 works without --stream (streamed text comes one page at a time)")
    pipe = Pipeline(bundle, backend=backend, device=device, threads=threads)
    gen = pipe.generation_options(max_new_tokens=max_new_tokens, ngram_size=ngram_size, ngram_window=ngram_window)
    options = RunOptions(mode=mode, prompt=prompt, ref=ref, generation=gen)
    pipe.mode(options.mode)  # a wrong mode fails before any page is read
    if pipe.is_demo:
        click.echo(f"{bundle} is a demo bundle (the built-in demo checkpoint): its text is meaningless; "
                   f"build one from deepseek-ai/DeepSeek-OCR for real OCR. {gen.max_new_tokens} new tokens a page.",
                   err=True)
    if batch is None:
        from .engine import default_batch

        manifest = getattr(pipe, "manifest", None)  # None: a pipeline-like object, one page at a time
        batch = 1 if stream or backend == "tensorrt" or manifest is None else default_batch(
            manifest, pipe.runner.max_seq_len)
    engine = None
    if batch == 1:
        on_text = (lambda s: (sys.stdout.write(s), sys.stdout.flush())) if stream else None
        page_ocr, status = (lambda page: pipe.ocr(page, options, on_text=on_text)), None
    else:  # a started BatchEngine of `batch` slots, fed ahead by LookaheadOCR
        from .batch import load_page
        from .engine import LookaheadOCR

        engine = pipe.engine(batch).start()
        todo = [it for it in dict.fromkeys(items) if not (out / f"{it.stem}.md").exists()]
        page_ocr = LookaheadOCR(engine, options, (lambda it=it: load_page(it, dpi) for it in todo))
        status = page_ocr.status
    n_looped = 0

    def ocr(page):
        nonlocal n_looped
        result = page_ocr(page)
        n_looped += result.looped
        return apply_looped(result, looped)

    writer = None
    if layouts:
        from .layouts import LayoutWriter

        writer = LayoutWriter(out, dpi)
    try:
        summary = run_batch(items, ocr, out, progress=not quiet, dpi=dpi, on_page=writer, status=status)
    finally:
        if engine is not None:
            engine.close(cancel_pending=True)
    if writer is not None:
        writer.catch_up(items)
    docs, waiting = write_documents(items, out)
    return summary, n_looped, docs, waiting


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


@main.command()
@click.option("--model", "bundle", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Bundle directory (manifest.json, graphs, tokenizer).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--batch", type=click.IntRange(1, None), default=1, show_default=True, help="Decode slots.")
@click.option("--max-queue", type=click.IntRange(1, None), default=64, show_default=True,
              help="Requests waiting for a slot; one more is answered 429.")
@click.option("--backend", type=click.Choice(["ort", "tensorrt"]), default="ort", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True,
              help="ONNX Runtime execution provider.")
@click.option("--threads", type=click.IntRange(1, None), default=None, help="Intra-op threads (default: all cores).")
@click.option("--served-model-name", default=None,
              help="The model name clients send (default: the bundle's directory name).")
@click.option("--request-timeout", type=click.FloatRange(0.001, None), default=600, show_default=True,
              help="Seconds a request may wait and decode before it is cancelled (504).")
@click.option("--max-body-mb", type=click.FloatRange(0.01, None), default=32, show_default=True,
              help="Request body limit.")
@click.option("--max-pixels", type=click.IntRange(1, None), default=40_000_000, show_default=True,
              help="Pixels per image, read from its header before decoding.")
@click.option("--allow-remote-media", is_flag=True, help="Fetch http(s) image URLs (refused by default).")
@click.option("--allowed-local-media-path", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Allow file:// image URLs under this directory.")
@click.option("--grace-period", type=click.FloatRange(0, None), default=30, show_default=True,
              help="On SIGTERM: seconds in-flight requests get to finish.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@library_errors
def serve(bundle, host, port, batch, max_queue, backend, device, threads, served_model_name, request_timeout,
          max_body_mb, max_pixels, allow_remote_media, allowed_local_media_path, grace_period, log_level) -> None:
    """Serve a bundle over an OpenAI-compatible HTTP API (POST /v1/chat/completions; needs the `serve` extra)."""
    try:
        from dsocr.serve.options import ServeOptions
        from dsocr.serve.server import serve as run_server
    except ImportError as e:
        raise click.ClickException(f"dsocr serve needs the serve extra: pip install 'dsocr[serve]' ({e})") from e

    opts = ServeOptions(bundle=bundle, host=host, port=port, backend=backend, device=device, threads=threads,
                        batch=batch, max_queue=max_queue, served_model_name=served_model_name,
                        request_timeout_s=request_timeout, max_body_bytes=int(max_body_mb * 2**20),
                        max_pixels=max_pixels, allow_remote_media=allow_remote_media,
                        allowed_local_media_path=allowed_local_media_path, grace_period_s=grace_period,
                        log_level=log_level)
    if run_server(opts) != 0:
        raise click.ClickException(f"the bundle {bundle} could not be loaded (see the log above)")


@main.command("ray-run")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--model", "bundle", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Bundle directory; every node must see it at this path.")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out"), show_default=True,
              help="Output directory: the same files as `dsocr run`, on a filesystem every node sees. Resumes.")
@click.option("--ray", "address", default="auto", show_default=True,
              help="Ray cluster: auto (the running cluster), ray://HOST:PORT, or local (start one here).")
@click.option("--actors", type=click.IntRange(1, None), default=1, show_default=True,
              help="OCR actors (one Pipeline each).")
@click.option("--num-cpus", type=click.FloatRange(0, None), default=None, help="CPUs per actor.")
@click.option("--num-gpus", type=click.FloatRange(0, None), default=None, help="GPUs per actor.")
@click.option("--batch", type=click.IntRange(1, None), default=1, show_default=True, help="Decode slots per actor.")
@click.option("--batch-size", type=click.IntRange(1, None), default=4, show_default=True,
              help="Pages per map_batches call.")
@click.option("--mode", type=click.Choice(MODE_NAMES, case_sensitive=False), default=None)
@click.option("--prompt", default="document", show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(1, None), default=8192, show_default=True)
@click.option("--ngram-size", type=click.IntRange(0, None), default=20, show_default=True)
@click.option("--ngram-window", type=click.IntRange(1, None), default=50, show_default=True)
@click.option("--dpi", type=click.FloatRange(36, 600), default=144, show_default=True)
@click.option("--backend", type=click.Choice(["ort", "tensorrt"]), default="ort", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(1, None), default=None, help="Intra-op threads per actor.")
@click.option("--quiet", is_flag=True, help="No Ray progress bars.")
@library_errors
def ray_run(inputs, bundle, out, address, actors, num_cpus, num_gpus, batch, batch_size, mode, prompt, max_new_tokens,
            ngram_size, ngram_window, dpi, backend, device, threads, quiet) -> None:
    """OCR INPUTS on a Ray cluster into OUT, the same files as `dsocr run` (needs the `ray` extra)."""
    from dsocr.ray.job import run_job

    ocr = dict(bundle=str(Path(bundle).resolve()), mode=mode, backend=backend, batch=batch, prompt=prompt,
               max_new_tokens=max_new_tokens, ngram_size=ngram_size, ngram_window=ngram_window, device=device,
               threads=threads)
    s = run_job(inputs, out, ocr, address=None if address == "local" else address, actors=actors,
                batch_size=batch_size, dpi=dpi, num_cpus=num_cpus, num_gpus=num_gpus, progress=not quiet)
    click.echo(f"{s.done} page(s) done, {s.skipped} already done, {s.failed} failed in {s.seconds:.1f} s -> {out}")
    if s.failed:
        click.echo(f"see {out / 'errors.jsonl'}", err=True)
        click.get_current_context().exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
