"""TensorRT backend: the plans of `<bundle>/engines/` (engines.json), run with execute_async_v3.

Letters: B slots, T new tokens, P cached tokens, S max_seq_len, H heads, hd head dim.
Residency: every engine I/O lives in device buffers (polygraphy.cuda DeviceArray); numpy arrays are
copied in and results copied out on one CUDA stream.

The KV cache lives on the device: per layer one key and one value buffer [B, PAST_PAD + S, H, hd]
for the host cache's B slots, allocated once. Each slot's region starts with a dummy entry (zeros)
that the attention mask always hides: a pass over slot b (one slot per pass: the decoder profiles
are batch 1, so BundleRunner splits a pass over n slots into n) binds past_* to the region's base
with shape [1, PAST_PAD + P, H, hd] (so the past is never empty, see engines/profiles.py), and
present_* outputs to base + (PAST_PAD + P) rows, where the decoder
writes the T new entries in place (pointer arithmetic on the preallocated buffer; the same design as
the ORT backend's IOBinding). The host KVCache handed to decode() then only keeps the bookkeeping
(its length); its arrays are not written. A cache that arrives holding entries (length > 0) that
this backend did not write is uploaded once; handing the backend another cache first copies the
previous cache's entries back into its host arrays, so sequences may alternate (at a copy's cost).
TensorRT wants 256-byte aligned tensor addresses: a cache row (H * hd * itemsize) must be a multiple
of 256 bytes (DeepSeek-OCR: 10 * 128 * 4 = 5120).
"""
from __future__ import annotations

import ctypes
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

    def run(self, ctx, addresses: dict[str, int]) -> None:
        for name, ptr in addresses.items():
            ctx.set_tensor_address(name, int(ptr))
        if not ctx.execute_async_v3(self.stream.ptr):
            raise DsocrError(f"TensorRT execution of {self.path.name} failed (see the TensorRT log)")


class TrtBackend(Backend):
    name = "tensorrt"

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
        self._logits: np.ndarray | None = None

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
            zeros = np.zeros((PAST_PAD, kv.num_heads, kv.head_dim), dtype)  # masked, but never NaN garbage
            self._kv = tuple([self._cuda.DeviceArray(shape=shape, dtype=dtype) for _ in range(kv.num_layers)]
                             for _ in range(2))
            copy, kind = self._cuda.wrapper().memcpy, self._cuda.MemcpyKind
            for dev in self._kv[0] + self._kv[1]:
                for b in range(cache.batch):
                    copy(dev.ptr + b * shape[1] * row, zeros.ctypes.data, zeros.nbytes, kind.HostToDevice,
                         self._stream.ptr)
            self._stream.synchronize()
        if self._kv_owner is None:
            self._transfer(cache, dtype, row, to_device=True)  # entries written elsewhere: upload once
            self._kv_owner = cache
        return self._kv

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

    @property
    def max_decode_batch(self) -> int | None:
        return 1  # the decoder profiles are batch 1 (engines/profiles.py)

    def _decode_impl(self, embeds, cos, sin, mask, step: KVStep) -> np.ndarray:
        cache = step.cache
        if embeds.shape[0] != 1:
            raise InputError(f"the TensorRT backend decodes one slot per pass (got {embeds.shape[0]})")
        start, slot = int(step.starts[0]), step.slots[0]
        eng, kv = self._plans["decoder"], self.manifest.kv
        keys, values = self._device_cache(cache)
        pad = np.full(mask.shape[:-1] + (PAST_PAD,), NEG_INF, dtype=np.float32)
        feeds = {"inputs_embeds": embeds, "cos": cos, "sin": sin, "attention_mask": np.concatenate([pad, mask], -1)}
        feeds = {n: np.ascontiguousarray(a, dtype=eng.dtypes[n]) for n, a in feeds.items()}
        past = (1, PAST_PAD + start, kv.num_heads, kv.head_dim)
        shapes = {n: a.shape for n, a in feeds.items()}
        shapes.update({f"past_{w}.{i}": past for i in range(kv.num_layers) for w in ("key", "value")})
        ctx = eng.context(shapes)
        addr = {n: self._upload(f"decoder:{n}", a).ptr for n, a in feeds.items()}
        row = kv.num_heads * kv.head_dim * eng.dtypes["present_key.0"].itemsize
        for i in range(kv.num_layers):
            for w, dev in (("key", keys[i]), ("value", values[i])):
                base = self._slot_base(dev, slot, row)
                addr[f"past_{w}.{i}"] = base  # [1, PAST_PAD + start, H, hd]: the prefix of the slot's region
                addr[f"present_{w}.{i}"] = base + (PAST_PAD + start) * row  # rows [PAST_PAD+start, PAST_PAD+stop)
        logits = self._buffer("decoder:logits", (1, self.manifest.vocab_size), eng.dtypes["logits"])
        addr["logits"] = logits.ptr
        eng.run(ctx, addr)
        self._logits = self._download(logits, (1, self.manifest.vocab_size), eng.dtypes["logits"])
        return self._logits.astype(np.float32, copy=False)
