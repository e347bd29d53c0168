"""A host-memory stand-in for `tensorrt` and `polygraphy.cuda`, so the engine build and the
TrtBackend's binding logic (profiles, pointer offsets into the KV cache, the dummy slot, chunking)
run on CPU. A "plan" is JSON naming its ONNX graph and profiles; executing it runs the graph with
ONNX Runtime, reading each input from and writing each output to the raw address bound to it.
Fresh "device" memory is filled with 0xFF bytes (NaN as float) so reads of unwritten memory show.
`executions` counts engine executions per ONNX file name (tests reset it).
Also `run_steps`, the prefill-then-steps driver the CPU and GPU engine tests share.
"""
from __future__ import annotations

import collections
import ctypes
import json
import os
import types

import numpy as np

ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32, "tensor(bool)": np.bool_}
executions: collections.Counter = collections.Counter()  # ONNX file name -> execute_async_v3 calls


# -- polygraphy.cuda ---------------------------------------------------------------------------------
class DeviceArray:
    def __init__(self, shape=(), dtype=np.float32):
        self.dtype, self._mem, self.shape = np.dtype(dtype), None, ()
        self.resize(shape)

    @property
    def ptr(self) -> int:
        return self._mem.ctypes.data

    def resize(self, shape):
        nbytes = max(int(np.prod(shape)) * self.dtype.itemsize, 1)
        if self._mem is None or nbytes > self._mem.nbytes:
            self._mem = np.full(nbytes, 0xFF, np.uint8)
        self.shape = tuple(shape)
        return self

    def copy_from(self, host, stream=None):
        ctypes.memmove(self.ptr, host.ctypes.data, host.nbytes)
        return self

    def copy_to(self, host, stream=None):
        ctypes.memmove(host.ctypes.data, self.ptr, host.nbytes)
        return host


class Stream:
    ptr = 0

    def synchronize(self):
        pass


class _Wrapper:
    def memcpy(self, dst, src, nbytes, kind, stream_ptr=None):
        ctypes.memmove(dst, src, nbytes)


cuda = types.SimpleNamespace(DeviceArray=DeviceArray, Stream=Stream, wrapper=_Wrapper,
                             MemcpyKind=types.SimpleNamespace(HostToDevice=1, DeviceToHost=2, DeviceToDevice=3))


# -- tensorrt: build side ------------------------------------------------------------------------------
class _Profile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, lo, opt, hi):
        self.shapes[name] = [list(lo), list(opt), list(hi)]


class _Config:
    def __init__(self):
        self.profiles, self.progress_monitor, self.cache = [], None, None

    def set_memory_pool_limit(self, pool, size):
        assert size > 0

    def add_optimization_profile(self, p):
        self.profiles.append(p.shapes)

    def create_timing_cache(self, data):
        return types.SimpleNamespace(serialize=lambda: b"cache:" + bytes(data[:32]))

    def set_timing_cache(self, cache, ignore_mismatch):
        self.cache = cache

    def get_timing_cache(self):
        return self.cache


class _Network:
    onnx = None


class _Parser:
    def __init__(self, network, logger):
        self.network, self.num_errors = network, 0

    def parse_from_file(self, path):
        self.network.onnx = path
        return True


class _Builder:
    def __init__(self, logger):
        pass

    def create_network(self, flags):
        assert flags == 1 << 1, "10.x must ask for a strongly typed network"
        return _Network()

    create_builder_config = staticmethod(_Config)
    create_optimization_profile = staticmethod(_Profile)

    def build_serialized_network(self, network, config):
        mon = config.progress_monitor
        if mon is not None:
            mon.phase_start("Building engine", None, 2)
            for step in range(2):
                mon.step_complete("Building engine", step)
            mon.phase_finish("Building engine")
        return json.dumps({"onnx": network.onnx, "profiles": config.profiles}).encode()


# -- tensorrt: runtime side ----------------------------------------------------------------------------
def _fits(shape, bounds):
    lo, _, hi = bounds
    return all(a <= s <= b for s, a, b in zip(shape, lo, hi))


class _Context:
    def __init__(self, engine):
        self.engine, self.profile, self.shapes, self.addresses = engine, 0, {}, {}

    def set_optimization_profile_async(self, index, stream):
        self.profile = index
        return 0 <= index < len(self.engine.profiles)

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return _fits(shape, self.engine.profiles[self.profile][name])

    def get_tensor_shape(self, name):
        meta = {m.name: m for m in self.engine.session.get_inputs() + self.engine.session.get_outputs()}
        dims = {}
        for m in self.engine.session.get_inputs():
            dims.update({d: s for d, s in zip(m.shape, self.shapes[m.name]) if isinstance(d, str)})
        return tuple(dims[d] if isinstance(d, str) else d for d in meta[name].shape)

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream):
        executions[os.path.basename(self.engine.onnx)] += 1
        sess, feeds = self.engine.session, {}
        for m in sess.get_inputs():
            shape, dtype = self.shapes[m.name], self.engine.dtypes[m.name]
            nbytes = int(np.prod(shape)) * dtype.itemsize
            raw = (ctypes.c_char * nbytes).from_address(self.addresses[m.name])
            feeds[m.name] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        for m, out in zip(sess.get_outputs(), sess.run(None, feeds)):
            assert out.shape == self.get_tensor_shape(m.name)
            ctypes.memmove(self.addresses[m.name], np.ascontiguousarray(out).ctypes.data, out.nbytes)
        return True


class _Engine:
    def __init__(self, plan: dict):
        import onnxruntime as ort

        self.onnx = plan["onnx"]
        self.session = ort.InferenceSession(plan["onnx"], providers=["CPUExecutionProvider"])
        self.profiles = plan["profiles"]
        metas = self.session.get_inputs() + self.session.get_outputs()
        self.names = [m.name for m in metas]
        self.dtypes = {m.name: np.dtype(ORT_TYPES[m.type]) for m in metas}
        self.num_io_tensors = len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_dtype(self, name):
        return self.dtypes[name]

    def create_execution_context(self):
        return _Context(self)


class _Runtime:
    def __init__(self, logger):
        pass

    def deserialize_cuda_engine(self, data: bytes):
        return _Engine(json.loads(data))


class _Logger:
    WARNING = 2

    def __init__(self, level):
        pass


class IProgressMonitor:
    def __init__(self):
        pass


def tensorrt(version: str = "10.3.0.30") -> types.ModuleType:
    mod = types.ModuleType("tensorrt")
    mod.__version__ = version
    mod.Logger, mod.Builder, mod.OnnxParser, mod.Runtime = _Logger, _Builder, _Parser, _Runtime
    mod.IProgressMonitor = IProgressMonitor
    mod.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=1)
    mod.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)
    mod.nptype = lambda dtype: dtype
    return mod


def run_steps(backend, manifest, embeds, tokens, cache=None):
    """Prefill `embeds` [T, D], then feed `tokens` one by one; logits of every pass (and the cache)."""
    from dsocr.runtime.kv_cache import KVCache
    from dsocr.runtime.rope import attention_mask, rope_tables

    kv = manifest.kv
    cache = cache or KVCache(kv.num_layers, kv.num_heads, kv.head_dim, kv.max_seq_len)
    out = []
    for x in [embeds[None]] + [backend.embed(np.array([[t]])) for t in tokens]:
        p, t = cache.length, x.shape[1]
        cos, sin = rope_tables(np.arange(p, p + t)[None], kv.head_dim, manifest.rope_theta)
        out.append(backend.decode(x, cos, sin, attention_mask(p, t), cache).copy())
    return out, cache
