"""`dsocr-export`: build bundles, verify them against PyTorch, check golden fixtures.

Heavy libraries (torch, onnx, tensorrt) are imported inside the commands, so `--help` stays light.
Library errors (DsocrError) become click errors with exit code 1; tolerance failures exit 2.
"""
from __future__ import annotations

from pathlib import Path

import click

from dsocr.runtime.clickutil import library_errors
from dsocr.runtime.modes import MODE_NAMES

MODE_CHOICE = click.Choice(MODE_NAMES + ("all",), case_sensitive=False)


def _modes(values: tuple[str, ...]) -> tuple[str, ...]:
    names = [m.lower() for m in values] or ["small"]
    return MODE_NAMES if "all" in names else tuple(dict.fromkeys(names))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dsocr")
def main() -> None:
    """Turn a DeepSeek-OCR checkpoint into ONNX bundles and TensorRT engines."""


@main.command()
@click.option("--mode", "modes", type=MODE_CHOICE, multiple=True, help="Mode(s) to build (repeatable, or 'all'). Default: small.")
@click.option("--checkpoint", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Hugging Face checkpoint directory (config.json, safetensors, tokenizer.json). Default: the built-in demo.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Bundle directory to write. Default: bundles/<mode>.")
@click.option("--max-seq-len", type=click.IntRange(16, None), default=None, help="KV cache length (default: the model's 8192).")
@click.option("--force", is_flag=True, help="Replace an existing bundle directory.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--engines/--no-engines", default=True, show_default=True,
              help="Also build TensorRT plans (strongly typed) when TensorRT is installed.")
@library_errors
def build(modes, checkpoint, out, max_seq_len, force, quiet, engines) -> None:
    """Export ONNX graphs (+ manifest) for MODE; TensorRT engines too where TensorRT is installed."""
    import tempfile

    from .bundle import DEMO_SOURCE, BuildOptions, build_bundle

    modes = _modes(modes)
    out = out or Path("bundles") / ("-".join(modes) if len(modes) < 5 else "all")
    opts = BuildOptions(modes=modes, max_seq_len=max_seq_len, overwrite=force, progress=not quiet)
    with tempfile.TemporaryDirectory(prefix="dsocr-demo-") as tmp:
        if checkpoint is None:
            from .demo import write_demo_checkpoint

            click.echo("no --checkpoint: using the built-in demo checkpoint (reduced sizes; its text is meaningless)")
            checkpoint, source = write_demo_checkpoint(Path(tmp) / "demo"), DEMO_SOURCE
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


@main.command("check-golden")
@click.option("--fixture", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Golden fixture directory (config.json, keys.txt, page.png, golden.npz).")
@click.option("--backend", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True,
              help="Run dsocr's PyTorch model, or export ONNX graphs and run them with ONNX Runtime.")
@click.option("--mode", "modes", type=MODE_CHOICE, multiple=True, help="Modes to check (default: all).")
@library_errors
def check_golden(fixture, backend, modes) -> None:
    """Reproduce a golden fixture in every mode; exit 2 if any tolerance is missed."""
    from .golden import format_table, run_golden

    modes = _modes(modes) if modes else MODE_NAMES
    rows = run_golden(fixture, backend, modes, on_mode=lambda m: click.echo(f"checking {m} ...", err=True))
    click.echo(format_table(rows))
    failed = [r for r in rows if not r.ok]
    if failed:
        click.echo(f"{len(failed)} of {len(rows)} checks FAILED", err=True)
        click.get_current_context().exit(2)
    click.echo(f"all {len(rows)} checks passed ({backend})")


if __name__ == "__main__":  # pragma: no cover
    main()
