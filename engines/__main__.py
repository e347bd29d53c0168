"""`python -m dsocr.engines`: check a bundle against TensorRT's ONNX support, build its engines.

Needs no torch, so it runs where only the runtime and TensorRT are installed (the Jetson image).
TensorRT is imported inside `build` only; `--help` and `check` stay light.
"""
from __future__ import annotations

from pathlib import Path

import click

from dsocr.runtime.clickutil import library_errors

BUNDLE = click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
                      help="Bundle directory (manifest.json and ONNX graphs).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """TensorRT engines for a dsocr bundle."""


@main.command()
@BUNDLE
@click.option("--warnings/--no-warnings", default=True, show_default=True, help="Also list warnings.")
@library_errors
def check(bundle: Path, warnings: bool) -> None:
    """List what TensorRT 10.3 / 11.x's ONNX parser would refuse; exit 2 on any error."""
    from .parser_support import check_bundle, errors

    results = check_bundle(bundle)
    n_err = 0
    for key, issues in results.items():
        shown = issues if warnings else errors(issues)
        n_err += len(errors(issues))
        click.echo(f"{key}: {len(errors(issues))} error(s), {len(issues) - len(errors(issues))} warning(s)")
        for issue in shown:
            click.echo(f"  {issue}")
    if n_err:
        click.get_current_context().exit(2)


@main.command()
@BUNDLE
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the plans and engines.json go (default: <bundle>/engines).")
@click.option("--workspace-gb", type=click.FloatRange(0.1, 1024), default=4.0, show_default=True)
@click.option("--decoder-profiles", type=click.Choice(["1", "2"]), default="2", show_default=True,
              help="2: separate decode and prefill profiles; 1: one profile for both.")
@click.option("--max-prompt", type=click.IntRange(1, None), default=None,
              help="Longest prefill the decoder plan admits (default: the bundle's max_seq_len).")
@click.option("--slots", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Sequences one decode step advances (decode profiles admit batch 1..slots).")
@click.option("--pages", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Pages whose views one vision call takes (vision profiles admit a page batch).")
@click.option("--prefill-chunk", type=click.IntRange(1, None), default=None,
              help="Most new tokens per prefill call (default: --max-prompt); longer prompts go in chunks.")
@click.option("--no-timing-cache", is_flag=True, help="Do not load or save <out>/timing.cache.")
@click.option("--if-stale", is_flag=True,
              help="Do nothing when the engines already fit this TensorRT, this GPU and the bundle's graphs.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@library_errors
def build(bundle, out, workspace_gb, decoder_profiles, max_prompt, slots, pages, prefill_chunk, no_timing_cache,
          if_stale, quiet) -> None:
    """Build a strongly typed TensorRT plan for every graph of BUNDLE and write engines.json."""
    from .build import EngineBuildOptions, build_engines, engines_current
    from .profiles import ProfileOptions

    if if_stale and engines_current(bundle, out):
        click.echo("engines are current for this TensorRT, GPU and bundle: nothing to build")
        return

    opts = EngineBuildOptions(workspace_gb=workspace_gb, timing_cache=not no_timing_cache, progress=not quiet,
                              profiles=ProfileOptions(decoder_profiles=int(decoder_profiles), max_prompt=max_prompt,
                                                      slots=slots, pages=pages, prefill_chunk=prefill_chunk))
    record = build_engines(bundle, out, opts)
    gpu = record["gpu"]
    click.echo(f"built {len(record['plans'])} plan(s) with TensorRT {record['tensorrt_version']} for "
               f"{gpu['name']} (sm_{gpu['compute_capability'].replace('.', '')})")


if __name__ == "__main__":  # pragma: no cover
    main()
