"""check-golden: reproduce a golden fixture (official outputs of a reduced model) with dsocr's own
preprocessing, layout, runner and decode loop, on the PyTorch model or on the exported ONNX graphs.

Fixture format: see shared/fixtures/README.md. OCR-1 (tiny/): config.json, keys.txt, page.png, golden.npz
keyed by mode. OCR-2 (ocr2-tiny/): config.json, keys.txt, page_<case>.png, golden.npz keyed by case
(`tiles`, `single`), all in the one `ocr2` mode. The generation is read from keys.txt.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from dsocr.runtime.backends.base import Backend
from dsocr.runtime.errors import InputError
from dsocr.runtime.layout import assemble_prompt, layout_image_embeds, layout_views, scatter_image_embeds
from dsocr.runtime.modes import check_generation, get_mode, mode_names
from dsocr.runtime.preprocess import load_image, preprocess
from dsocr.runtime.runner import BundleRunner

PIXEL_TOL = 1e-5  # abs, pixels sampled every 8th
REL_TOL = 1e-4  # x max|ref|, embeddings and logits


@dataclass(frozen=True)
class Row:
    mode: str
    quantity: str
    error: float  # max abs error (pixels) or max abs / max|ref| (floats); mismatches for ids
    tol: float
    ok: bool


def _float_row(mode, name, got, ref, rel=True) -> Row:
    if got.shape != ref.shape:
        return Row(mode, name, float("inf"), 0.0, False)
    err = float(np.abs(got - ref).max()) if ref.size else 0.0
    tol = REL_TOL if rel else PIXEL_TOL
    if rel:
        err /= max(float(np.abs(ref).max()), 1e-30)
    return Row(mode, name, err, tol, err <= tol)


def _ids_row(mode, name, got, ref) -> Row:
    got, ref = np.asarray(got), np.asarray(ref)
    bad = int((got != ref).sum()) if got.shape == ref.shape else max(got.size, ref.size)
    return Row(mode, name, float(bad), 0.0, bad == 0)


def check_mode(backend: Backend, layout: tuple[np.ndarray, np.ndarray], page, gold: dict, mode_name: str) -> list[Row]:
    mode, g = get_mode(mode_name), (lambda k: gold[f"{mode_name}.{k}"])
    views = preprocess(page, mode)
    rows = _view_rows(views, gold, mode_name)
    global_feats = backend.vision(views.global_view)[0]
    tile_feats = backend.vision(views.tiles) if len(views.tiles) else None
    embeds = layout_image_embeds(global_feats, tile_feats, views.crop, *layout)
    rows.append(_float_row(mode_name, "image_embeds", embeds, g("image_embeds")))
    return rows + _check_prompt_and_decode(backend, mode, views.crop, embeds, gold, mode_name)


def _view_rows(views, gold: dict, key: str) -> list[Row]:
    """Pixels (every 8th) of the global view and the tiles, and the crop grid."""
    g = lambda k: gold[f"{key}.{k}"]  # noqa: E731
    rows = [_float_row(key, "global_view", views.global_view[:, :, ::8, ::8], g("global_view"), rel=False)]
    if f"{key}.local_views" in gold:
        rows.append(_float_row(key, "local_views", views.tiles[:, :, ::8, ::8], g("local_views"), rel=False))
    rows.append(_ids_row(key, "images_spatial_crop", np.array([views.crop]), g("images_spatial_crop")))
    return rows


def _check_prompt_and_decode(backend: Backend, mode, crop, embeds: np.ndarray, gold: dict, key: str) -> list[Row]:
    """Prompt ids and mask from the mode's token count, then prefill and greedy steps."""
    g = lambda k: gold[f"{key}.{k}"]  # noqa: E731
    ref_ids, ref_mask = g("input_ids"), g("images_seq_mask")
    img_pos = np.flatnonzero(ref_mask)
    image_id = int(ref_ids[img_pos[0]])
    before, after = ref_ids[1 : img_pos[0]].tolist(), ref_ids[img_pos[-1] + 1 :].tolist()  # text part of the prompt
    ids, mask = assemble_prompt(before, after, mode.n_image_tokens(*crop), image_id, int(ref_ids[0]))
    rows = [_ids_row(key, "input_ids", ids, ref_ids), _ids_row(key, "images_seq_mask", mask, ref_mask)]
    prompt = scatter_image_embeds(backend.embed(ids[None])[0], mask, embeds)
    return rows + _check_decode(backend, prompt, gold, key)


def _check_decode(backend: Backend, prompt: np.ndarray, gold: dict, mode_name: str) -> list[Row]:
    ref_steps = gold[f"{mode_name}.step_logits"]
    runner = BundleRunner(backend, max_seq_len=len(prompt) + len(ref_steps) + 1)
    logits = runner.prefill(prompt).copy()
    rows = [_float_row(mode_name, "prefill_last_logits", logits, gold[f"{mode_name}.prefill_last_logits"])]
    ids, steps = [], []
    for _ in range(len(ref_steps)):  # greedy, no repetition filter (as the fixture)
        ids.append(int(np.argmax(logits)))
        logits = runner.step(ids[-1]).copy()
        steps.append(logits)
    rows.append(_float_row(mode_name, "step_logits", np.stack(steps), ref_steps))
    rows.append(_ids_row(mode_name, "greedy_ids", ids, gold[f"{mode_name}.greedy_ids"]))
    return rows


def fixture_checkpoint(fixture_dir: Path, out_dir: Path) -> Path:
    """Rebuild the fixture's checkpoint (rule weights for every key of keys.txt) plus a demo tokenizer."""
    from dsocr.export.demo_tokenizer import build_demo_tokenizer

    from .weights import read_keys_txt, write_rule_checkpoint

    config = json.loads((fixture_dir / "config.json").read_text(encoding="utf-8"))
    ckpt = write_rule_checkpoint(out_dir, read_keys_txt(fixture_dir / "keys.txt"), config)
    vocab = int(config.get("vocab_size") or config["language_config"]["vocab_size"])
    build_demo_tokenizer(vocab).save(str(ckpt / "tokenizer.json"))
    return ckpt


def make_backend(kind: str, ckpt: Path, work: Path, modes: tuple[str, ...]) -> tuple[Backend, tuple]:
    """(backend, (image_newline or None, view_separator)) for 'torch' or 'onnx'."""
    if kind == "torch":
        from .model.ocr import DeepseekOCR
        from .torch_backend import TorchBackend

        backend = TorchBackend(DeepseekOCR.from_pretrained(ckpt))
        return backend, backend.layout_vectors()
    if kind == "onnx":
        from dsocr.runtime.backends.ort import OrtBackend
        from dsocr.runtime.pipeline import BundleAssets

        from .bundle import BuildOptions, build_bundle

        bundle = work / "bundle"
        build_bundle(ckpt, bundle, BuildOptions(modes=modes, progress=False))
        assets = BundleAssets.load(bundle)
        return OrtBackend(bundle, assets.manifest), assets.layout
    raise InputError(f"unknown backend {kind!r}; choose torch or onnx")


FIXTURE_FILES = ("config.json", "keys.txt", "golden.npz")


def fixture_generation(fixture_dir: str | Path) -> str:
    """"ocr1" or "ocr2": from the fixture's keys.txt, as for a checkpoint (weights.detect_generation)."""
    from .weights import detect_generation, read_keys_txt

    fixture = Path(fixture_dir)
    for name in FIXTURE_FILES:
        if not (fixture / name).is_file():
            raise InputError(f"{fixture} is not a golden fixture: {name} is missing")
    return detect_generation(read_keys_txt(fixture / "keys.txt"))


def run_golden(fixture_dir: str | Path, backend: str = "torch", modes: tuple[str, ...] | None = None,
               on_mode: Callable[[str], None] | None = None) -> list[Row]:
    """Check a fixture of either generation; `modes` (OCR-1: default all its modes; OCR-2: only `ocr2`)."""
    fixture = Path(fixture_dir)
    if fixture_generation(fixture) == "ocr2":
        return run_golden_ocr2(fixture, backend, modes, on_mode)
    modes = tuple(modes or mode_names("ocr1"))
    for m in modes:
        check_generation(get_mode(m), "ocr1")
    if not (fixture / "page.png").is_file():
        raise InputError(f"{fixture} is not a golden fixture: page.png is missing")
    gold = dict(np.load(fixture / "golden.npz"))
    page = load_image(fixture / "page.png")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="dsocr-golden-") as tmp:
        ckpt = fixture_checkpoint(fixture, Path(tmp) / "ckpt")
        be, layout = make_backend(backend, ckpt, Path(tmp), modes)
        for m in modes:
            if on_mode:
                on_mode(m)
            rows += check_mode(be, layout, page, gold, m)
    return rows


# ------------------------------------------------------------------------------------------- OCR-2
OCR2_MODE = "ocr2"
OCR2_CASES = ("tiles", "single")  # golden.npz key prefixes; page_<case>.png


def check_case_ocr2(backend: Backend, layout: tuple, page, gold: dict, case: str) -> list[Row]:
    """One OCR-2 case: views, flat image embeddings (tiles, global, separator), prompt, decode."""
    mode = get_mode(OCR2_MODE)
    views = preprocess(page, mode)
    rows = _view_rows(views, gold, case)
    global_feats = backend.vision(views.global_view)[0]
    tile_feats = backend.vision(views.tiles) if len(views.tiles) else None
    embeds = layout_views(mode.newlines, global_feats, tile_feats, views.crop, *layout)
    rows.append(_float_row(case, "image_embeds", embeds, gold[f"{case}.image_embeds"]))
    return rows + _check_prompt_and_decode(backend, mode, views.crop, embeds, gold, case)


def run_golden_ocr2(fixture: Path, backend: str = "torch", modes: tuple[str, ...] | None = None,
                    on_mode: Callable[[str], None] | None = None) -> list[Row]:
    for m in modes or ():
        check_generation(get_mode(m), "ocr2")
    gold = dict(np.load(fixture / "golden.npz"))
    cases = [c for c in OCR2_CASES if f"{c}.image_embeds" in gold]
    if not cases:
        raise InputError(f"{fixture}/golden.npz has none of the OCR-2 cases {', '.join(OCR2_CASES)}")
    for c in cases:
        if not (fixture / f"page_{c}.png").is_file():
            raise InputError(f"{fixture} is not an OCR-2 golden fixture: page_{c}.png is missing")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="dsocr-golden-") as tmp:
        ckpt = fixture_checkpoint(fixture, Path(tmp) / "ckpt")
        be, layout = make_backend(backend, ckpt, Path(tmp), (OCR2_MODE,))
        for c in cases:
            if on_mode:
                on_mode(c)
            rows += check_case_ocr2(be, layout, load_image(fixture / f"page_{c}.png"), gold, c)
    return rows


def format_table(rows: list[Row]) -> str:
    lines = [f"{'mode':<8} {'quantity':<22} {'max error':>12} {'tolerance':>10}  result"]
    for r in rows:
        lines.append(f"{r.mode:<8} {r.quantity:<22} {r.error:>12.3e} {r.tol:>10.1e}  {'ok' if r.ok else 'FAIL'}")
    return "\n".join(lines)
