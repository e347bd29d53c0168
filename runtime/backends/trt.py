"""TensorRT backend: the plans of `<bundle>/engines/` (engines.json), run with execute_async_v3.

Letters: B slots, n slots in a pass, T new tokens, P cached tokens, S max_seq_len, H heads, hd head dim.
Residency: every engine I/O lives in device buffers (polygraphy.cuda DeviceArray); numpy arrays are
copied in and results copied out on one CUDA stream.

The KV cache lives on the device: per layer one key and one value buffer [B, PAST_PAD + S, H, hd]
for the host cache's B slots, allocated once and zeroed. Each slot's region starts with a dummy entry
that the attention mask always hides, so the bound past is never empty (see engines/profiles.py).
The host KVCache handed to decode() only keeps the bookkeeping (lengths; kv_policy "device": its
KVStep has no host past or staging); its arrays are not written. A cache that arrives holding
entries (length > 0) that this backend did not write is uploaded once; handing the backend another
cache first copies the previous cache's entries back into its host arrays, so sequences may
alternate (at a copy's cost).

A pass binds past_* / present_* by pointer arithmetic on those buffers (as the ORT backend's IOBinding):
- one slot (every prefill, and batch 1): past_* = the prefix of the slot's region,
  [1, PAST_PAD + P, H, hd]; present_* = base + (PAST_PAD + P) rows, written in place (no copy).
- n > 1 slots, T = 1 (the decode profile admits B = 1..N, max_decode_batch): ONE execution over the
  consecutive regions lo..hi of the slots, past_* [hi - lo + 1, PAST_PAD + S, H, hd] at region lo
  (the "full" bound: the only dense binding that spans several regions; a region between two slots
  of the pass that takes no part gets a padding row: zero inputs, a mask that shows it only its new
  token; its outputs are dropped). The mask puts -inf (finfo.min) on the dummy column and on every
  column a slot has not written, so stale or zeroed rows get weight exactly 0. present_* go to a
  staging buffer [hi - lo + 1, 1, H, hd] per layer, and each slot's row is copied device-to-device
  on the stream to base + (PAST_PAD + len_b) rows. Slots spread over more than N regions go in
  groups of at most N regions (one execution each); a shape no profile admits (engines built before
  the decode profile reached PAST_PAD + S) falls back to one pass per slot.
Trade-off (nothing here was measured; no GPU in CI): the full bound copies no past and needs no
second buffer, but its attention reads all S positions of every bound region, where gathering the
slots' prefixes into a staging past [n, PAST_PAD + max len_b, H, hd] would read only the longest
slot but copy n * P rows per layer each step (or keep a window in step, as kv_cache does on the
host) and hold a second copy of the cache. Both write new entries through staging: the scatter is
2 * layers * n row copies per step. The full bound is the simpler correct one; its attention cost
grows with S, so a runner sized to the pages (max_seq_len) keeps it small. Batch 1 stays on the
prefix binding: it is the same pass with B = 1 and P = the slot's length, and it reads P rather than
S positions and writes present in place (no scatter), less work by construction.
TensorRT wants 256-byte aligned tensor addresses: a cache row (H * hd * itemsize) must be a multiple
of 256 bytes (DeepSeek-OCR: 10 * 128 * 4 = 5120).
"""
from __future__ import annotations

import ctypes
import functools
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from ..engines_file import (ENGINES_DIR, ENGINES_FORMAT, ENGINES_FORMAT_VERSION, ENGINES_NAME,  # noqa: F401
                            EnginesRecord, inside, read_engines)
from ..errors import BackendUnavailableError, DsocrError, EngineMismatchError, InputError, ManifestError
from ..kv_cache import KVCache, KVStep
from ..manifest import Manifest, sha256_file
from ..rope import NEG_INF
from .base import Backend

PAST_PAD = 1  # dummy, always-masked cache slot in front of the real entries
INSTALL = "pip install 'dsocr[trt]'"
REBUILD = "rebuild with dsocr-export build (or: python -m dsocr.engines build --bundle BUNDLE)"


def import_trt():
    try:
        import tensorrt
    except ImportError as e:
        raise BackendUnavailableError(f"TensorRT is not installed: {INSTALL} (on Jetson it comes with JetPack)") from e
    return tensorrt


def _import_cuda():
    try:
        from polygraphy import cuda
    except ImportError as e:
        raise BackendUnavailableError(f"polygraphy (CUDA buffers for TensorRT) is not installed: {INSTALL}") from e
    return cuda


def gpu_info(device: int = 0) -> tuple[str, str]:
    """(name, compute capability "M.m") of a CUDA device: cuda-python, else libcudart, else nvidia-smi."""
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        err, props = cudart.cudaGetDeviceProperties(device)
        if int(err) == 0:
            name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
            return name.split("\x00")[0].strip(), f"{props.major}.{props.minor}"
    except ImportError:
        pass
    try:  # libcudart via ctypes: cudaDevAttrComputeCapabilityMajor/Minor = 75/76; cudaDeviceProp starts with name[256]
        lib = _import_cuda().wrapper().handle
        major, minor, props = ctypes.c_int(), ctypes.c_int(), ctypes.create_string_buffer(1 << 14)
        if (lib.cudaDeviceGetAttribute(ctypes.byref(major), 75, device) == 0
                and lib.cudaDeviceGetAttribute(ctypes.byref(minor), 76, device) == 0
                and getattr(lib, "cudaGetDeviceProperties_v2", lib.cudaGetDeviceProperties)(props, device) == 0):
            return props.raw[:256].split(b"\x00")[0].decode(errors="replace").strip(), f"{major.value}.{minor.value}"
    except Exception:  # noqa: BLE001 - no usable libcudart: try nvidia-smi
        pass
    try:
        out = subprocess.run(["nvidia-smi", f"--id={device}", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        name, cc = (s.strip() for s in out.strip().splitlines()[0].rsplit(",", 1))
        float(cc)
        return name, cc
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        raise BackendUnavailableError("cannot identify the GPU: install cuda-python or make nvidia-smi work") from e


def check_engine_manifest(engines_json: dict | str | Path, trt_version: str, gpu_name: str | None,
                          compute_capability: str) -> dict[str, Any]:
    """Refuse plans built for another TensorRT version or GPU (EngineMismatchError); return the manifest.

    Pure Python (no TensorRT import). The record is validated against its schema first (ManifestError
    naming the field). A GPU name of None or "unknown" skips the name comparison; the compute
    capability is always compared.
    """
    rec = (EnginesRecord.from_dict(engines_json, ENGINES_NAME) if isinstance(engines_json, dict)
           else read_engines(engines_json))
    check_engine_record(rec, trt_version, gpu_name, compute_capability)
    return rec.to_dict()


def check_engine_record(rec: EnginesRecord, trt_version: str, gpu_name: str | None, compute_capability: str) -> None:
    built_v, built_name, built_cc = rec.tensorrt_version, rec.gpu_name, rec.compute_capability
    norm = lambda name: re.sub(r"\s+", " ", str(name)).strip().casefold()  # noqa: E731
    names_known = all(n and norm(n) != "unknown" for n in (gpu_name, built_name))
    if (built_v != str(trt_version) or built_cc != str(compute_capability)
            or (names_known and norm(built_name) != norm(gpu_name))):
        sm = lambda cc: "sm_" + str(cc).replace(".", "")  # noqa: E731
        raise EngineMismatchError(
            f"engines were built with TensorRT {built_v} for GPU {built_name} ({sm(built_cc)}); this machine has "
            f"TensorRT {trt_version} / GPU {gpu_name or 'unknown'} ({sm(compute_capability)}): {REBUILD}"
        )


def _fits(shape, bounds) -> bool:
    lo, _, hi = bounds
    return len(shape) == len(lo) and all(a <= s <= b for s, a, b in zip(shape, lo, hi))


class _Engine:
    """One plan; an execution context per optimization profile, made on first use."""

    def __init__(self, trt, runtime, path: Path, profiles: list[dict], stream):
        self.path, self.profiles, self.stream, self._contexts = path, profiles, stream, {}
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise EngineMismatchError(f"TensorRT could not deserialize {path}; {REBUILD}")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}

    def context(self, shapes: dict[str, tuple]):
        """The context whose profile admits `shapes`, with those input shapes set."""
        index = next((i for i, p in enumerate(self.profiles)
                      if all(_fits(s, p[n]) for n, s in shapes.items() if n in p)), None)
        if index is None:
            raise InputError(f"{self.path.name}: input shapes {shapes} lie outside every optimization profile "
                             f"{self.profiles} (rebuild the engines with larger limits)")
        ctx = self._contexts.get(index)
        if ctx is None:
            ctx = self.engine.create_execution_context()
            if not ctx.set_optimization_profile_async(index, self.stream.ptr):
                raise DsocrError(f"{self.path.name}: cannot select optimization profile {index}")
            self._contexts[index] = ctx
        for name, shape in shapes.items():
            if not ctx.set_input_shape(name, tuple(int(d) for d in shape)):
                raise InputError(f"{self.path.name}: TensorRT refused shape {tuple(shape)} for {name}")
        return ctx

    def most_rows(self, shapes: dict[str, tuple]) -> int:
        """The largest batch (leading dim) one profile admits for `shapes` with their other dims (0: none)."""
        best = 0
        for p in self.profiles:
            named = [n for n in shapes if n in p]
            b = min((p[n][2][0] for n in named), default=0)
            if b >= 1 and all(_fits((b,) + tuple(shapes[n][1:]), p[n]) for n in named):
                best = max(best, b)
        return best

    def run(self, ctx, addresses: dict[str, int]) -> None:
        for name, ptr in addresses.items():
            ctx.set_tensor_address(name, int(ptr))
        if not ctx.execute_async_v3(self.stream.ptr):
            raise DsocrError(f"TensorRT execution of {self.path.name} failed (see the TensorRT log)")


class TrtBackend(Backend):
    name = "tensorrt"
    kv_policy = "device"  # the KV entries live in device buffers; the host cache only counts

    def __init__(self, bundle_dir: str | Path, manifest: Manifest, engines_dir: str | Path | None = None):
        super().__init__(bundle_dir, manifest)
        trt, self._cuda = import_trt(), _import_cuda()
        self.engines_dir = Path(engines_dir) if engines_dir else self.bundle_dir / ENGINES_DIR
        path = self.engines_dir / ENGINES_NAME
        if not path.is_file():
            raise ManifestError(f"{self.engines_dir} has no {ENGINES_NAME}: build the TensorRT engines first "
                                f"(python -m dsocr.engines build --bundle {self.bundle_dir})")
        name, cc = gpu_info()
        self.record = read_engines(path)
        check_engine_record(self.record, trt.__version__, name, cc)
        self.engines = self.record.to_dict()
        self._check_listed(path)
        self._check_plans()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._stream = self._cuda.Stream()
        self._by_file = {spec.file: key for key, spec in manifest.graphs.items()}
        self._plans = {key: _Engine(trt, self._runtime, self.record.plan_path(self.engines_dir, key), e.profiles,
                                    self._stream)
                       for key, e in self.record.plans.items()}
        self._buffers: dict[str, tuple] = {}  # key -> (DeviceArray, dtype)
        self._kv, self._kv_owner = None, None

    def _check_listed(self, engines_json: Path) -> None:
        """Engines inside the bundle: engines.json and every plan must be listed in manifest.files."""
        rel = inside(self.bundle_dir, self.engines_dir)
        if rel is None:  # an engines directory the user named outside the bundle: its own hashes decide
            return
        prefix = "" if rel == "." else rel + "/"
        wanted = {prefix + ENGINES_NAME: sha256_file(engines_json)}
        wanted.update({prefix + e.file: e.sha256 for e in self.record.plans.values()})
        for name, digest in wanted.items():
            entry = self.manifest.files.get(name)
            if entry is None:
                raise ManifestError(f"{name} is not listed in the bundle's manifest.files; {REBUILD}")
            if entry["sha256"] != digest:
                raise ManifestError(f"{name} does not match its SHA-256 in the bundle manifest; {REBUILD}")

    def _check_plans(self) -> None:
        plans = self.record.plans
        for key, spec in self.manifest.graphs.items():
            entry = plans.get(key)
            if entry is None:
                raise EngineMismatchError(f"no TensorRT plan for graph {key!r} in {self.engines_dir}; {REBUILD}")
            if entry.onnx_sha256 != self.manifest.files.get(spec.file, {}).get("sha256"):
                raise EngineMismatchError(f"plan {entry.file} was built from another {spec.file}; {REBUILD}")
            plan = self.record.plan_path(self.engines_dir, key)
            if not plan.is_file() or sha256_file(plan) != entry.sha256:
                raise ManifestError(f"plan {entry.file} is missing or does not match its SHA-256 in "
                                    f"{ENGINES_NAME}; {REBUILD}")

    # -- device buffers ------------------------------------------------------------------------
    def _buffer(self, key: str, shape: tuple, dtype: np.dtype):
        """A device buffer for `key`, grown (never shrunk) to hold `shape`."""
        dtype = np.dtype(dtype)
        buf, have = self._buffers.get(key, (None, None))
        if buf is None or have != dtype:
            buf = self._cuda.DeviceArray(shape=tuple(shape), dtype=dtype)
            self._buffers[key] = (buf, dtype)
        return buf.resize(tuple(shape))

    def _upload(self, key: str, host: np.ndarray):
        host = np.ascontiguousarray(host)
        return self._buffer(key, host.shape, host.dtype).copy_from(host, stream=self._stream)

    def _download(self, buf, shape: tuple, dtype: np.dtype) -> np.ndarray:
        host = np.empty(shape, dtype=dtype)
        buf.copy_to(host, stream=self._stream)
        self._stream.synchronize()
        return host

    def _run_one(self, key: str, in_name: str, x: np.ndarray, out_name: str) -> np.ndarray:
        eng = self._plans[key]
        x = np.ascontiguousarray(x, dtype=eng.dtypes[in_name])
        ctx = eng.context({in_name: x.shape})
        din = self._upload(f"{key}:{in_name}", x)
        shape = tuple(ctx.get_tensor_shape(out_name))
        dout = self._buffer(f"{key}:{out_name}", shape, eng.dtypes[out_name])
        eng.run(ctx, {in_name: din.ptr, out_name: dout.ptr})
        return self._download(dout, shape, eng.dtypes[out_name]).astype(np.float32, copy=False)

    # -- hooks ---------------------------------------------------------------------------------
    def _vision_impl(self, graph_file: str, pixel_values: np.ndarray) -> np.ndarray:
        key = self._by_file[graph_file]
        most = max(p["pixel_values"][2][0] for p in self._plans[key].profiles)  # max batch over profiles
        chunks = [pixel_values[i:i + most] for i in range(0, len(pixel_values), most)]
        return np.concatenate([self._run_one(key, "pixel_values", c, "image_features") for c in chunks])

    def _embed_impl(self, input_ids: np.ndarray) -> np.ndarray:
        n, t = input_ids.shape
        if n == 1:
            return self._run_one("embed", "input_ids", input_ids, "inputs_embeds")
        flat = input_ids.reshape(1, n * t)  # the embedding is per token: [n, T] runs as one row (batch-1 profile)
        most = max(p["input_ids"][2][1] for p in self._plans["embed"].profiles)
        parts = [self._run_one("embed", "input_ids", flat[:, k:k + most], "inputs_embeds")
                 for k in range(0, n * t, most)]
        return np.concatenate(parts, axis=1).reshape(n, t, -1)

    def _device_cache(self, cache: KVCache) -> tuple[list, list]:
        """Device K/V buffers [B, PAST_PAD + S, H, hd] per layer, in step with `cache` (B slots)."""
        kv, dtype = self.manifest.kv, self._plans["decoder"].dtypes["present_key.0"]
        row = kv.num_heads * kv.head_dim * np.dtype(dtype).itemsize
        if row % 256:
            raise DsocrError(f"a KV row of {row} bytes breaks TensorRT's 256-byte address alignment for present_*")
        if self._kv_owner is not None and self._kv_owner is not cache:
            self._transfer(self._kv_owner, dtype, row, to_device=False)  # hand-over: entries back to the host
            self._kv_owner = None
        have = self._kv[0][0].shape if self._kv is not None else (0, 0)
        if have[0] < cache.batch or have[1] < PAST_PAD + cache.max_seq_len:
            self._kv = None
            shape = (cache.batch, PAST_PAD + cache.max_seq_len, kv.num_heads, kv.head_dim)
            self._kv = tuple([self._cuda.DeviceArray(shape=shape, dtype=dtype) for _ in range(kv.num_layers)]
                             for _ in range(2))
            self._zero(self._kv[0] + self._kv[1], shape, dtype)
        if self._kv_owner is None:
            self._transfer(cache, dtype, row, to_device=True)  # entries written elsewhere: upload once
            self._kv_owner = cache
        return self._kv

    def _zero(self, buffers: list, shape: tuple, dtype: np.dtype) -> None:
        """Zero every slot region: a batched pass reads (masked) rows no slot wrote, never NaN garbage.
        One region goes up from the host, the others are device-to-device copies of it."""
        copy, kind = self._cuda.wrapper().memcpy, self._cuda.MemcpyKind
        zeros = np.zeros(shape[1:], dtype)  # [PAST_PAD + S, H, hd]
        first = buffers[0].ptr
        copy(first, zeros.ctypes.data, zeros.nbytes, kind.HostToDevice, self._stream.ptr)
        for dev in buffers:
            for b in range(shape[0]):
                at = dev.ptr + b * zeros.nbytes
                if at != first:
                    copy(at, first, zeros.nbytes, kind.DeviceToDevice, self._stream.ptr)
        self._stream.synchronize()

    def _slot_base(self, dev, slot: int, row: int) -> int:
        """Device address of slot `slot`'s region (its dummy entry first) in a K or V buffer."""
        return dev.ptr + slot * dev.shape[1] * row

    def _transfer(self, cache: KVCache, dtype: np.dtype, row: int, to_device: bool) -> None:
        """Copy each slot's valid prefix [b, :len_b] between its host arrays and the device cache."""
        copy, kind = self._cuda.wrapper().memcpy, self._cuda.MemcpyKind
        for b, n in enumerate(int(x) for x in cache.lengths):
            for dev, host in zip(self._kv[0] + self._kv[1], cache.key + cache.value) if n else ():
                at = self._slot_base(dev, b, row) + PAST_PAD * row
                if to_device:
                    part = np.ascontiguousarray(host[b, :n], dtype=dtype)
                    copy(at, part.ctypes.data, part.nbytes, kind.HostToDevice, self._stream.ptr)
                else:
                    part = np.empty(host[b, :n].shape, dtype)
                    copy(part.ctypes.data, at, part.nbytes, kind.DeviceToHost, self._stream.ptr)
                    self._stream.synchronize()
                    host[b, :n] = part

    # -- decoding --------------------------------------------------------------------------------
    def _past_shapes(self, rows: int, t: int, past: int) -> dict[str, tuple]:
        """Decoder input shapes of a pass over `rows` slot regions, T = t, past_* [rows, PAST_PAD + past, H, hd]."""
        kv, d = self.manifest.kv, self.manifest.hidden_size
        shapes = {"inputs_embeds": (rows, t, d), "cos": (rows, t, kv.head_dim), "sin": (rows, t, kv.head_dim),
                  "attention_mask": (rows, 1, t, PAST_PAD + past + t)}
        shapes.update({f"past_{w}.{i}": (rows, PAST_PAD + past, kv.num_heads, kv.head_dim)
                       for i in range(kv.num_layers) for w in ("key", "value")})
        return shapes

    @functools.cached_property
    def max_decode_batch(self) -> int | None:
        """The most slots the decode profile admits for a batched pass (1 for engines built batch 1, or
        built before the decode profile reached PAST_PAD + S); fixed by the plans, read every pass."""
        return max(1, self._plans["decoder"].most_rows(self._past_shapes(1, 1, self.manifest.kv.max_seq_len)))

    def _decode_impl(self, embeds, cos, sin, mask, step: KVStep) -> np.ndarray:
        keys, _ = self._device_cache(step.cache)
        n, t = embeds.shape[0], embeds.shape[1]
        if n == 1:
            slot = step.slots[0]
            return self._pass(slot, 1, [0], int(step.starts[0]), embeds, cos, sin, mask, step)
        full = keys[0].shape[1] - PAST_PAD  # the capacity of every slot region
        most = self._plans["decoder"].most_rows(self._past_shapes(1, t, full))
        out = np.empty((n, self.manifest.vocab_size), np.float32)
        for rows in _spans(step.slots, max(most, 1)):
            slots = [step.slots[r] for r in rows]
            lo, b = min(slots), max(slots) - min(slots) + 1
            past = int(step.starts[rows[0]]) if b == 1 else full
            out[rows] = self._pass(lo, b, rows, past, embeds, cos, sin, mask, step)
        return out

    def _pass(self, lo: int, b: int, rows: list[int], past: int, embeds, cos, sin, mask, step: KVStep) -> np.ndarray:
        """ONE engine execution over the consecutive slot regions lo..lo+b-1 -> logits [len(rows), V] of the
        pass rows `rows` (slot lo + at[r]; a region between them that takes no part gets a padding row).
        past_* [b, PAST_PAD + past, H, hd] at region lo; present_*: b = 1 in place, else staging scattered."""
        eng, kv, t = self._plans["decoder"], self.manifest.kv, embeds.shape[1]
        at = np.asarray([step.slots[r] for r in rows]) - lo  # [m] region of each pass row
        feeds = {"inputs_embeds": _spread(embeds[rows], at, b), "cos": _spread(cos[rows], at, b),
                 "sin": _spread(sin[rows], at, b),
                 "attention_mask": _device_mask(mask[rows], at, b, step.past_len, past)}
        feeds = {n: np.ascontiguousarray(a, dtype=eng.dtypes[n]) for n, a in feeds.items()}
        ctx = eng.context(self._past_shapes(b, t, past))
        addr = {n: self._upload(f"decoder:{n}", a).ptr for n, a in feeds.items()}
        dtype = eng.dtypes["present_key.0"]
        row, starts = kv.num_heads * kv.head_dim * dtype.itemsize, step.starts[rows]
        scatter = []  # (staging row address, slot region address of its first new entry)
        for i in range(kv.num_layers):
            for w, dev in zip(("key", "value"), (self._kv[0][i], self._kv[1][i])):
                addr[f"past_{w}.{i}"] = self._slot_base(dev, lo, row)
                if b == 1:  # rows [PAST_PAD + start, PAST_PAD + start + T) of the slot's region, in place
                    addr[f"present_{w}.{i}"] = self._slot_base(dev, lo, row) + (PAST_PAD + int(starts[0])) * row
                    continue
                stage = self._buffer(f"decoder:present_{w}.{i}", (b, t, kv.num_heads, kv.head_dim), dtype)
                addr[f"present_{w}.{i}"] = stage.ptr
                scatter += [(stage.ptr + int(a) * t * row, self._slot_base(dev, lo + int(a), row)
                             + (PAST_PAD + int(p)) * row) for a, p in zip(at, starts)]
        logits = self._buffer("decoder:logits", (b, self.manifest.vocab_size), eng.dtypes["logits"])
        addr["logits"] = logits.ptr
        eng.run(ctx, addr)
        copy, d2d = self._cuda.wrapper().memcpy, self._cuda.MemcpyKind.DeviceToDevice
        for src, dst in scatter:  # on the stream, after the pass: slot r's T new rows at PAST_PAD + len_r
            copy(dst, src, t * row, d2d, self._stream.ptr)
        out = self._download(logits, (b, self.manifest.vocab_size), eng.dtypes["logits"])
        return out[at].astype(np.float32, copy=False)


def _spans(slots: list[int], most: int) -> list[list[int]]:
    """Pass rows grouped by slot order so that each group's slots lie within `most` consecutive regions."""
    groups: list[list[int]] = []
    for r in sorted(range(len(slots)), key=lambda r: slots[r]):
        if groups and slots[r] - slots[groups[-1][0]] < most:
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


def _spread(a: np.ndarray, at: np.ndarray, b: int) -> np.ndarray:
    """a [m, ...] -> [b, ...] with row r at at[r] and zeros in the padding rows."""
    if len(at) == b:
        return a if (at == np.arange(b)).all() else a[np.argsort(at)]
    out = np.zeros((b,) + a.shape[1:], a.dtype)
    out[at] = a
    return out


def _device_mask(mask: np.ndarray, at: np.ndarray, b: int, past_len: int, past: int) -> np.ndarray:
    """The runtime's mask rows [m, 1, T, past_len + T] -> [b, 1, T, PAST_PAD + past + T] for the bound past:
    the dummy entry and every past column beyond what a row's mask shows are hidden; a padding row sees only
    its own new tokens (causal), so its softmax stays finite."""
    t = mask.shape[2]
    keep = min(past, past_len)
    if keep < past_len and (mask[..., keep:past_len] > NEG_INF / 2).any():
        raise InputError(f"the attention mask shows past positions beyond the {past} the pass binds")
    out = np.full((b, 1, t, PAST_PAD + past + t), NEG_INF, np.float32)
    out[..., PAST_PAD + past:] = np.where(np.tri(t, dtype=bool), np.float32(0), NEG_INF)
    out[at, :, :, PAST_PAD:PAST_PAD + keep] = mask[..., :keep]
    out[at, :, :, PAST_PAD + past:] = mask[..., past_len:]
    return out
