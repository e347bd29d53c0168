"""Optimization profiles for a bundle's graphs, derived from the mode registry and the manifest.

Letters: B batch (sequences / slots, or views), T new tokens, P cached tokens, S = max_seq_len (the
KV cache length), N = slots (sequences decoded together), G = pages whose views go in one vision call.
A profile maps every input of a graph to its (min, opt, max) shapes; the symbolic dims of the
manifest's TensorSpecs (batch, seq, past, total) are filled from one DimRange each; an input with a
symbolic dim no rule covers is refused (InputError), so a new layout fails here, not in TensorRT.

* vision_{S}: batch 1..G global views (opt 1); the tile graph (the tile size of a crop mode in the
  bundle: Gundam's 640, OCR-2's 768): batch 1..G x the mode's max tiles (Gundam 9, OCR-2 6; at most
  options.max_tiles), opt 6 (a portrait page is 2x3 tiles). The TRT backend splits a larger batch into
  chunks of the profile's max.
* embed: batch 1..N (one token per slot when decoding), seq 1..S (prompt or one step), opt = a
  typical prompt.
* decoder (the prefill graph; also decodes when the bundle has no decoder_step graph): two profiles
  by default, tried in order by the backend:
    0 decode:  B = 1..N slots (opt N), T = 1, past PAST_PAD..PAST_PAD+S, opt at a typical context
               (PAST_PAD+S: a pass over several slots binds their whole cache regions, the "full"
               bound of runtime/backends/trt.py; one slot binds its prefix, at most PAST_PAD+S-1);
    1 prefill: B = 1, T = 1..C (C = prefill_chunk, default max_prompt), past PAST_PAD..PAST_PAD+S-1,
               opt at a typical prompt (or C): a longer prompt is prefilled in chunks of C.
  With decoder_profiles=1 one profile covers both (B = 1..N, T = 1..C, past up to PAST_PAD+S, opt at T = 1).
* decoder_step (the decode-step graph, MoE "gather"): one profile "decode" as above; its cost grows
  with B*T (every token gathers its experts), so it is never used for prefill.

Zero-length past: the first prefill has P = 0, i.e. past_* of shape [B, 0, H, hd]. TensorRT 7 refused
a 0 in profile dims (NVIDIA/TensorRT#337); later releases document empty tensors, but frameworks still
clamp profile minima to 1 (Torch-TensorRT) and a zero-volume binding is an edge case across 10.3 and
11.x. So no dim is ever 0: the device cache keeps PAST_PAD (= 1) dummy slot in front of the real
entries (zeros, never NaN garbage), past_* always covers it (P_trt = PAST_PAD + P >= 1), and the
runtime prepends PAST_PAD columns of -inf (finfo.min) to the additive attention mask, so the dummy key
gets softmax weight exactly 0 and results equal the unpadded graph's. total = P_trt + T.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from dsocr.runtime.backends.trt import PAST_PAD
from dsocr.runtime.errors import InputError
from dsocr.runtime.manifest import GraphSpec, Manifest
from dsocr.runtime.modes import MAX_TILES, get_mode

TYPICAL_TILES = (2, 3)  # w x h tiles of an A4/Letter portrait page in Gundam mode (ARCHITECTURE §1)
OPT_TILE_BATCH = TYPICAL_TILES[0] * TYPICAL_TILES[1]
PROMPT_TEXT = 32  # text tokens around the image in the official prompts (opt only)
GENERATED = 1024  # tokens generated for a typical page (opt of the decode context)
MAX_SLOTS = 256  # most sequences (and pages) a profile admits in one call


@dataclass(frozen=True)
class DimRange:
    min: int
    opt: int
    max: int

    def __post_init__(self):
        if not 1 <= self.min <= self.opt <= self.max:
            raise InputError(f"profile dim needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")


@dataclass(frozen=True)
class ProfileOptions:
    """What the profiles may admit; validated here, once."""

    decoder_profiles: int = 2  # 2: decode + prefill; 1: one profile for both
    max_prompt: int | None = None  # longest prefill (default: max_seq_len)
    max_tiles: int = MAX_TILES
    slots: int = 1  # N: sequences one decode step advances (the runtime's --batch)
    pages: int = 1  # G: pages whose views one vision call takes
    prefill_chunk: int | None = None  # C: most new tokens per prefill call (default: max_prompt)

    def __post_init__(self):
        if self.decoder_profiles not in (1, 2):
            raise InputError(f"decoder_profiles={self.decoder_profiles}: choose 1 or 2")
        if self.max_prompt is not None and self.max_prompt < 1:
            raise InputError(f"max_prompt={self.max_prompt} must be at least 1")
        if not 1 <= self.max_tiles <= MAX_TILES:
            raise InputError(f"max_tiles={self.max_tiles} must lie in 1..{MAX_TILES}")
        for name, top in (("slots", MAX_SLOTS), ("pages", MAX_SLOTS)):
            if not 1 <= getattr(self, name) <= top:
                raise InputError(f"{name}={getattr(self, name)} must lie in 1..{top}")
        if self.prefill_chunk is not None and self.prefill_chunk < 1:
            raise InputError(f"prefill_chunk={self.prefill_chunk} must be at least 1")


@dataclass(frozen=True)
class Profile:
    name: str
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, list[list[int]]]:
        return {k: [list(s) for s in v] for k, v in self.shapes.items()}


def _profile(name: str, spec: GraphSpec, dims: dict[str, DimRange]) -> Profile:
    shapes = {}
    for t in spec.inputs:
        missing = [d for d in t.shape if isinstance(d, str) and d not in dims]
        if missing:
            raise InputError(f"{spec.file}: input {t.name} has symbolic dims {missing} that no profile rule covers")
        shapes[t.name] = tuple(tuple(getattr(dims[d], which) if isinstance(d, str) else int(d) for d in t.shape)
                               for which in ("min", "opt", "max"))
    return Profile(name, shapes)


def typical_prompt(manifest: Manifest) -> int:
    """Prompt length the profiles optimise for: the largest typical image-token count of the bundle's modes."""
    n = max(get_mode(m).n_image_tokens(*(TYPICAL_TILES if get_mode(m).crop else (1, 1))) for m in manifest.modes)
    return n + PROMPT_TEXT


def tile_sizes(manifest: Manifest) -> set[int]:
    """Vision sizes that receive a batch of tiles (the tile side of a crop mode in the bundle)."""
    return {get_mode(m).image_size for m in manifest.modes if get_mode(m).crop}


def tile_batch_max(manifest: Manifest, size: int, options: ProfileOptions) -> int:
    """Most tiles of `size` one page yields in the bundle's crop modes (Gundam 9, OCR-2 6), capped by options."""
    limits = [get_mode(m).max_tiles for m in manifest.modes if get_mode(m).crop and get_mode(m).image_size == size]
    return min(max(limits, default=options.max_tiles), options.max_tiles)


def graph_profiles(manifest: Manifest, key: str, options: ProfileOptions = ProfileOptions()) -> list[Profile]:
    spec = manifest.graphs[key]
    s = manifest.kv.max_seq_len
    one = DimRange(1, 1, 1)
    slots = DimRange(1, options.slots, options.slots)
    if spec.role == "vision":
        g = options.pages
        if spec.size in tile_sizes(manifest):
            top = tile_batch_max(manifest, spec.size, options) * g
            batch = DimRange(1, min(OPT_TILE_BATCH, top), top)
        else:
            batch = DimRange(1, 1, g)
        return [_profile("vision", spec, {"batch": batch})]
    prompt_max = min(options.max_prompt or s, s)
    chunk = min(options.prefill_chunk or prompt_max, prompt_max)
    prompt_opt = min(typical_prompt(manifest), chunk)
    if spec.role == "embed":
        return [_profile("embed", spec, {"batch": slots, "seq": DimRange(1, prompt_opt, s)})]
    if spec.role not in ("decoder", "decoder_step"):
        raise InputError(f"graph {key!r} has unknown role {spec.role!r}")
    prefix_max = PAST_PAD + s - 1  # one slot's prefix: at least one new token remains in the cache
    full = PAST_PAD + s  # several slots: their whole regions, T = 1 (total PAST_PAD + S + 1)
    ctx_opt = min(PAST_PAD + prompt_opt + GENERATED // 2, prefix_max)

    def decoder(name: str, batch: DimRange, seq: DimRange, past_opt: int, past_max: int) -> Profile:
        past = DimRange(PAST_PAD, past_opt, past_max)
        total = DimRange(past.min + seq.min, past.opt + seq.opt, max(PAST_PAD + s, past_max + 1))
        return _profile(name, spec, {"batch": batch, "seq": seq, "past": past, "total": total})

    decode = decoder("decode", slots, one, ctx_opt, full)
    if spec.role == "decoder_step":
        return [decode]
    if options.decoder_profiles == 1:
        return [decoder("decoder", slots, DimRange(1, 1, chunk), ctx_opt, full)]
    return [decode, decoder("prefill", one, DimRange(1, prompt_opt, chunk), PAST_PAD, prefix_max)]
