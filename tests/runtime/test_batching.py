"""Batched decoding equals batch 1: the tiny golden fixture's page decoded in a batch with other pages
(different prompt lengths, joining at different steps) through the exported graphs (ONNX Runtime).

- greedy ids equal the golden ones in all five modes, under every past bound (window, full, gather);
- teacher-forced logits of every slot lie within 1e-4 x max|ref| of the batch-1 path;
- the same comparison fails when one slot's RoPE positions are shifted by one.
"""
import numpy as np
import pytest

from dsocr.runtime.backends.base import Backend
from dsocr.runtime.layout import assemble_prompt, layout_image_embeds, scatter_image_embeds
from dsocr.runtime.modes import get_mode, mode_names
from dsocr.runtime.preprocess import load_image, preprocess
from dsocr.runtime.rope import rope_tables
from dsocr.runtime.runner import BundleRunner

REL_TOL = 1e-4
MODE_NAMES = mode_names("ocr1")  # the tiny fixture is OCR-1
STEPS = 12  # the fixture's greedy_ids / step_logits


@pytest.fixture(scope="module")
def tiny(fixture_dir, tmp_path_factory):
    """(OrtBackend over the tiny fixture's five-mode bundle, golden arrays, {mode: prompt embeds [T, D]})."""
    pytest.importorskip("torch")
    from dsocr.export.bundle import BuildOptions, build_bundle
    from dsocr.export.golden import fixture_checkpoint
    from dsocr.runtime.backends.ort import OrtBackend
    from dsocr.runtime.manifest import read_manifest

    root = tmp_path_factory.mktemp("tiny-batch")
    ckpt = fixture_checkpoint(fixture_dir, root / "ckpt")
    build_bundle(ckpt, root / "bundle", BuildOptions(modes=MODE_NAMES, max_seq_len=2048, progress=False))
    manifest = read_manifest(root / "bundle")
    backend = OrtBackend(root / "bundle", manifest)
    lay = np.load(root / "bundle" / manifest.layout_file)
    gold = dict(np.load(fixture_dir / "golden.npz"))
    page = load_image(fixture_dir / "page.png")
    prompts = {m: _prompt(backend, (lay["image_newline"], lay["view_separator"]), page, gold, m) for m in MODE_NAMES}
    return backend, gold, prompts


def _prompt(backend, layout, page, gold, mode_name):
    mode, ref = get_mode(mode_name), gold[f"{mode_name}.input_ids"]
    views = preprocess(page, mode)
    tiles = backend.vision(views.tiles) if len(views.tiles) else None
    embeds = layout_image_embeds(backend.vision(views.global_view)[0], tiles, views.crop, *layout)
    img = np.flatnonzero(gold[f"{mode_name}.images_seq_mask"])
    ids, mask = assemble_prompt(ref[1:img[0]].tolist(), ref[img[-1] + 1:].tolist(),
                                mode.n_image_tokens(*views.crop), int(ref[img[0]]), int(ref[0]))
    assert (ids == ref).all()
    return scatter_image_embeds(backend.embed(ids[None])[0], mask, embeds)


def _pages(tiny):
    """The five fixture pages plus two noise pages of other lengths: (name, prompt [T, D], join step)."""
    backend, _, prompts = tiny
    rng = np.random.default_rng(0)
    d = backend.manifest.hidden_size
    pages = [(m, prompts[m], 2 * k) for k, m in enumerate(MODE_NAMES)]
    pages.insert(2, ("noise-40", rng.standard_normal((40, d)).astype(np.float32) * 0.1, 1))
    pages.append(("noise-7", rng.standard_normal((7, d)).astype(np.float32) * 0.1, 3))
    return pages


def _capacity(pages):
    return max(len(p) for _, p, _ in pages) + STEPS + 2


def run_batched(runner, pages, feed=None):
    """Continuous batching by hand: page i is prefilled into slot i at step join_i while the others
    decode; every step is one pass over all active slots. feed: {name: ids} teacher-forced
    (default: greedy). -> {name: (ids, logits after each fed id [STEPS, V])}."""
    out = {name: ([], []) for name, _, _ in pages}
    pending: dict[int, int] = {}  # slot -> id to feed back
    for step in range(max(j for _, _, j in pages) + STEPS + 1):
        for slot, (name, prompt, join) in enumerate(pages):
            if join == step:
                logits = runner.prefill_slot(slot, prompt)
                ids = out[name][0]
                ids.append(feed[name][0] if feed else int(np.argmax(logits)))
                pending[slot] = ids[-1]
        live = sorted(s for s in pending if len(out[pages[s][0]][1]) < STEPS)
        if not live:
            continue
        rows = runner.step_slots(live, [pending[s] for s in live])
        for slot, row in zip(live, rows):
            ids, logits = out[pages[slot][0]]
            logits.append(row.copy())
            if len(ids) < STEPS:
                ids.append(feed[pages[slot][0]][len(ids)] if feed else int(np.argmax(row)))
            pending[slot] = ids[-1]
    return {k: (ids[:STEPS], np.stack(lg)) for k, (ids, lg) in out.items()}


def run_alone(backend, prompt, feed):
    runner = BundleRunner(backend, max_seq_len=len(prompt) + STEPS + 1)
    logits = [runner.prefill(prompt).copy()]
    for t in feed:
        logits.append(runner.step(t).copy())
    return np.stack(logits[1:])


def rel_error(got, ref):
    return float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-30))


@pytest.mark.parametrize("policy", ["window", "full", "gather"])
def test_batched_greedy_ids_equal_golden_in_every_mode(tiny, policy):
    backend, gold, _ = tiny
    pages = _pages(tiny)
    runner = BundleRunner(backend, max_seq_len=_capacity(pages), slots=len(pages), policy=policy)
    got = run_batched(runner, pages)
    for mode in MODE_NAMES:
        assert got[mode][0] == gold[f"{mode}.greedy_ids"].tolist(), mode
        assert rel_error(got[mode][1], gold[f"{mode}.step_logits"]) <= REL_TOL, mode


def test_teacher_forced_logits_of_every_slot_match_batch_1(tiny):
    backend, gold, _ = tiny
    pages = _pages(tiny)
    feed = {name: (gold[f"{name}.greedy_ids"].tolist() if name in MODE_NAMES else list(range(3, 3 + STEPS)))
            for name, _, _ in pages}
    runner = BundleRunner(backend, max_seq_len=_capacity(pages), slots=len(pages))
    got = run_batched(runner, pages, feed)
    for name, prompt, _ in pages:
        err = rel_error(got[name][1], run_alone(backend, prompt, feed[name]))
        assert err <= REL_TOL, (name, err)


class ShiftSlot(Backend):
    """Delegates to `inner`, but feeds slot `slot` the RoPE tables of positions + 1 in its one-token
    steps (a shift of every position, prefill included, would change nothing: RoPE is relative)."""

    def __init__(self, inner: Backend, slot: int):
        super().__init__(inner.bundle_dir, inner.manifest)
        self.inner, self.slot = inner, slot

    def _vision_impl(self, graph_file, pixel_values):
        return self.inner._vision_impl(graph_file, pixel_values)

    def _embed_impl(self, input_ids):
        return self.inner._embed_impl(input_ids)

    def _decode_impl(self, embeds, cos, sin, mask, step):
        if self.slot in step.slots and step.new_tokens == 1:
            r = step.slots.index(self.slot)
            pos = step.starts[r] + 1 + np.arange(step.new_tokens)
            c, s = rope_tables(pos[None], self.manifest.kv.head_dim, self.manifest.rope_theta)
            cos, sin = cos.copy(), sin.copy()
            cos[r], sin[r] = c[0], s[0]
        return self.inner._decode_impl(embeds, cos, sin, mask, step)


def test_the_comparison_fails_when_one_slot_is_shifted_by_one_position(tiny):
    backend, gold, _ = tiny
    pages = _pages(tiny)
    feed = {name: (gold[f"{name}.greedy_ids"].tolist() if name in MODE_NAMES else list(range(3, 3 + STEPS)))
            for name, _, _ in pages}
    slot = [name for name, _, _ in pages].index("base")
    runner = BundleRunner(ShiftSlot(backend, slot), max_seq_len=_capacity(pages), slots=len(pages))
    got = run_batched(runner, pages, feed)
    errors = {name: rel_error(got[name][1], run_alone(backend, prompt, feed[name])) for name, prompt, _ in pages}
    assert errors["base"] > 10 * REL_TOL, errors
    assert all(e <= REL_TOL for n, e in errors.items() if n != "base"), errors
