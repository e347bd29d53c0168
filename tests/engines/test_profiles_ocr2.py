"""Engine profiles of an OCR-2 bundle: the 768 tile graph takes 1..6 tiles, the 1024 global view one."""
from dsocr.engines.profiles import ProfileOptions, graph_profiles, typical_prompt
from dsocr.runtime.manifest import GraphSpec, KVSpec, Manifest, TensorSpec

D = 1280


def vision(size, n):
    return GraphSpec("vision", f"vision_{size}.onnx", [TensorSpec("pixel_values", "float32", ["batch", 3, size, size])],
                     [TensorSpec("image_features", "float32", ["batch", n, D])], size=size)


def ocr2_manifest():
    graphs = {"vision_768": vision(768, 144), "vision_1024": vision(1024, 256),
              "embed": GraphSpec("embed", "embed.onnx", [TensorSpec("input_ids", "int64", ["batch", "seq"])],
                                 [TensorSpec("inputs_embeds", "float32", ["batch", "seq", D])])}
    return Manifest(modes=["ocr2"], precision="fp32", graphs=graphs, kv=KVSpec(2, 10, 128, "float32", 8192),
                    hidden_size=D, vocab_size=1024, rope_theta=1e4, special_tokens={}, prompts={}, tokenizer="t",
                    layout_file="l", generation="ocr2")


def test_tile_batch_1_to_6_and_global_batch_1():
    m = ocr2_manifest()
    (tiles,) = graph_profiles(m, "vision_768")
    assert tiles.shapes["pixel_values"] == ((1, 3, 768, 768), (6, 3, 768, 768), (6, 3, 768, 768))
    (glob,) = graph_profiles(m, "vision_1024")
    assert glob.shapes["pixel_values"] == ((1, 3, 1024, 1024),) * 3
    (capped,) = graph_profiles(m, "vision_768", ProfileOptions(max_tiles=4))
    assert capped.shapes["pixel_values"][1][0] == capped.shapes["pixel_values"][2][0] == 4


def test_typical_prompt_is_a_2x3_page():
    assert typical_prompt(ocr2_manifest()) == 257 + 6 * 144 + 32
