"""Optimization profiles derived from the mode registry and a manifest (pure Python)."""
import pytest

from dsocr.engines.profiles import DimRange, ProfileOptions, graph_profiles, typical_prompt
from dsocr.runtime.backends.trt import PAST_PAD
from dsocr.runtime.errors import InputError
from dsocr.runtime.manifest import GraphSpec, KVSpec, Manifest, TensorSpec
from dsocr.runtime.modes import MAX_TILES

L, H, HD, D, S = 2, 10, 128, 1280, 8192


def vision(size):
    return GraphSpec("vision", f"vision_{size}.onnx", [TensorSpec("pixel_values", "float32", ["batch", 3, size, size])],
                     [TensorSpec("image_features", "float32", ["batch", 100, D])], size=size)


def manifest(modes=("small", "gundam"), max_seq_len=S):
    past = [f"past_{w}.{i}" for i in range(L) for w in ("key", "value")]
    dec_in = [TensorSpec("inputs_embeds", "float32", ["batch", "seq", D]),
              TensorSpec("cos", "float32", ["batch", "seq", HD]), TensorSpec("sin", "float32", ["batch", "seq", HD]),
              TensorSpec("attention_mask", "float32", ["batch", 1, "seq", "total"])]
    dec_in += [TensorSpec(n, "float32", ["batch", "past", H, HD]) for n in past]
    graphs = {
        "vision_640": vision(640), "vision_1024": vision(1024),
        "embed": GraphSpec("embed", "embed.onnx", [TensorSpec("input_ids", "int64", ["batch", "seq"])],
                           [TensorSpec("inputs_embeds", "float32", ["batch", "seq", D])]),
        "decoder": GraphSpec("decoder", "decoder.onnx", dec_in, [TensorSpec("logits", "float32", ["batch", 1024])]),
    }
    return Manifest(modes=list(modes), precision="fp32", graphs=graphs, kv=KVSpec(L, H, HD, "float32", max_seq_len),
                    hidden_size=D, vocab_size=1024, rope_theta=1e4, special_tokens={}, prompts={}, tokenizer="t",
                    layout_file="l")


def test_vision_batches():
    m = manifest()
    (tiles,) = graph_profiles(m, "vision_640")
    assert tiles.shapes["pixel_values"] == ((1, 3, 640, 640), (6, 3, 640, 640), (MAX_TILES, 3, 640, 640))
    (glob,) = graph_profiles(m, "vision_1024")
    assert {s[0] for s in glob.shapes["pixel_values"]} == {1}
    (small_only,) = graph_profiles(manifest(modes=("small",)), "vision_640")  # no crop mode: batch 1
    assert small_only.shapes["pixel_values"][2][0] == 1


def test_embed_covers_prompt_and_steps():
    (p,) = graph_profiles(manifest(), "embed")
    assert p.shapes["input_ids"] == ((1, 1), (1, typical_prompt(manifest())), (1, S))


def test_decoder_two_profiles_never_zero_length():
    decode, prefill = graph_profiles(manifest(), "decoder")
    assert (decode.name, prefill.name) == ("decode", "prefill")
    assert decode.shapes["inputs_embeds"] == ((1, 1, D), (1, 1, D), (1, 1, D))
    for p, past_max in ((decode, PAST_PAD + S), (prefill, PAST_PAD + S - 1)):  # decode: a slot's whole region
        lo, opt, hi = p.shapes["past_key.0"]
        assert lo[1] == PAST_PAD >= 1 and hi[1] == past_max  # the dummy slot keeps past non-empty
        assert p.shapes["attention_mask"][2][3] == past_max + 1
        for shapes in p.shapes.values():
            assert all(min(s) >= 1 for s in shapes) and shapes[0] <= shapes[1] <= shapes[2]
    assert prefill.shapes["inputs_embeds"][2] == (1, S, D)
    assert set(prefill.shapes) == {t.name for t in manifest().graphs["decoder"].inputs}


def test_decoder_single_profile_and_limits():
    (one,) = graph_profiles(manifest(), "decoder", ProfileOptions(decoder_profiles=1, max_prompt=2048))
    assert one.shapes["inputs_embeds"] == ((1, 1, D), (1, 1, D), (1, 2048, D))
    assert one.shapes["past_key.0"][2][1] == PAST_PAD + S  # it decodes too: the full bound
    small = manifest(max_seq_len=64)
    for p, past_max in zip(graph_profiles(small, "decoder"), (PAST_PAD + 64, PAST_PAD + 63)):
        assert p.shapes["past_value.1"][2][1] == past_max
        assert p.shapes["cos"][1][1] <= 64


def test_options_are_validated():
    with pytest.raises(InputError):
        ProfileOptions(decoder_profiles=3)
    with pytest.raises(InputError):
        ProfileOptions(max_tiles=10)
    with pytest.raises(InputError):
        DimRange(0, 1, 2)
    with pytest.raises(InputError):
        DimRange(1, 3, 2)


def with_step(m):
    """The manifest plus a decode-step decoder graph (role decoder_step, the decoder's I/O)."""
    dec = m.graphs["decoder"]
    step = GraphSpec("decoder_step", "decoder_step.onnx", dec.inputs, dec.outputs)
    return Manifest(**{**m.__dict__, "graphs": {**m.graphs, "decoder_step": step}})


def test_slots_batch_the_decode_profiles_only():
    m = with_step(manifest())
    opts = ProfileOptions(slots=8)
    decode, prefill = graph_profiles(m, "decoder", opts)
    assert decode.shapes["inputs_embeds"] == ((1, 1, D), (8, 1, D), (8, 1, D))
    assert decode.shapes["past_key.1"][2] == (8, PAST_PAD + S, H, HD)  # what a pass over 8 slots binds
    assert decode.shapes["attention_mask"][2] == (8, 1, 1, PAST_PAD + S + 1)
    assert {s[0] for shapes in prefill.shapes.values() for s in shapes} == {1}  # one page prefills at a time
    (step,) = graph_profiles(m, "decoder_step", opts)
    assert step.name == "decode" and step.shapes == decode.shapes
    (embed,) = graph_profiles(m, "embed", opts)
    assert embed.shapes["input_ids"] == ((1, 1), (8, typical_prompt(m)), (8, S))


def test_prefill_chunk_and_page_batch():
    m = manifest()
    _, prefill = graph_profiles(m, "decoder", ProfileOptions(prefill_chunk=256))
    assert prefill.shapes["inputs_embeds"] == ((1, 1, D), (1, 256, D), (1, 256, D))
    (one,) = graph_profiles(m, "decoder", ProfileOptions(decoder_profiles=1, slots=4, prefill_chunk=64))
    assert one.shapes["inputs_embeds"] == ((1, 1, D), (4, 1, D), (4, 64, D))
    opts = ProfileOptions(pages=4)
    (glob,) = graph_profiles(m, "vision_1024", opts)
    assert glob.shapes["pixel_values"] == ((1, 3, 1024, 1024), (1, 3, 1024, 1024), (4, 3, 1024, 1024))
    (tiles,) = graph_profiles(m, "vision_640", opts)
    assert tiles.shapes["pixel_values"][2][0] == 4 * MAX_TILES


def test_a_layout_with_other_dims_is_refused_by_name():
    m = manifest()
    dec = m.graphs["decoder"]
    odd = GraphSpec("decoder_step", "s.onnx", dec.inputs[:4] + [TensorSpec("kv", "float32", ["layers", "slots"])],
                    dec.outputs)
    m = Manifest(**{**m.__dict__, "graphs": {**m.graphs, "decoder_step": odd}})
    with pytest.raises(InputError, match=r"kv has symbolic dims \['layers', 'slots'\]"):
        graph_profiles(m, "decoder_step")


@pytest.mark.parametrize("bad", [dict(slots=0), dict(pages=0), dict(slots=257), dict(prefill_chunk=0)])
def test_batch_options_are_validated(bad):
    with pytest.raises(InputError, match=next(iter(bad))):
        ProfileOptions(**bad)
