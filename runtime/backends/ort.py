"""ONNX Runtime backend: CPU by default, CUDA / TensorRT execution providers when asked and present.

The decoder runs through IOBinding: past_* inputs are bound to views of the preallocated cache and
present_* outputs to the cache slots they fill, so ORT writes new K/V in place (no per-step copies
for batch 1), and logits land in one reused buffer.

Vision runs shrink ORT's CPU arena when they end: their activations are GB-sized (SAM's global
attention at 1024 px: [12, 4096, 4096] fp32 per tensor) and would otherwise stay reserved while the
decoder runs (full size, 1024 px: 6.6 -> 1.6 GiB resident after the call, same latency;
bench/vision_arena.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import BackendUnavailableError, InputError
from ..kv_cache import KVCache
from ..manifest import Manifest
from .base import Backend

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def import_ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendUnavailableError(
            "onnxruntime is not installed: pip install 'dsocr[ort]' (or 'dsocr[ort-gpu]' for CUDA)"
        ) from e
    return onnxruntime


def _providers(ort, device: str) -> list[str]:
    if device not in PROVIDERS:
        raise InputError(f"unknown ONNX Runtime device {device!r}; choose one of {sorted(PROVIDERS)}")
    wanted = PROVIDERS[device]
    if wanted not in ort.get_available_providers():
        raise BackendUnavailableError(
            f"{wanted} is not available in this onnxruntime build (have: {ort.get_available_providers()}); "
            "install onnxruntime-gpu for cuda/tensorrt"
        )
    return [wanted, "CPUExecutionProvider"] if wanted != "CPUExecutionProvider" else [wanted]


class OrtBackend(Backend):
    name = "ort"

    def __init__(self, bundle_dir: str | Path, manifest: Manifest, device: str = "cpu", threads: int | None = None,
                 session_config: Mapping[str, str] | None = None):
        """threads: intra-op threads (default: ORT's, one per physical core); session_config: extra ORT
        session config entries, e.g. {"session.intra_op.allow_spinning": "0"} on a shared machine."""
        super().__init__(bundle_dir, manifest)
        self._ort = import_ort()
        self._providers = _providers(self._ort, device)
        self._options = self._ort.SessionOptions()
        self._options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            self._options.intra_op_num_threads = int(threads)
        for key, value in (session_config or {}).items():
            self._options.add_session_config_entry(str(key), str(value))
        self._vision_run = self._ort.RunOptions()
        self._vision_run.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self._sessions: dict[str, object] = {}
        self._decoder = self._session(manifest.graphs["decoder"].file)
        self._binding = self._decoder.io_binding()
        self._logits: np.ndarray | None = None

    def _session(self, file: str):
        if file not in self._sessions:
            self._sessions[file] = self._ort.InferenceSession(
                str(self.bundle_dir / file), sess_options=self._options, providers=self._providers
            )
        return self._sessions[file]

    def _vision_impl(self, graph_file: str, pixel_values: np.ndarray) -> np.ndarray:
        return self._session(graph_file).run(["image_features"], {"pixel_values": pixel_values}, self._vision_run)[0]

    def _embed_impl(self, input_ids: np.ndarray) -> np.ndarray:
        return self._session(self.manifest.graphs["embed"].file).run(["inputs_embeds"], {"input_ids": input_ids})[0]

    def _bind(self, name: str, array: np.ndarray, output: bool = False) -> np.ndarray:
        """Bind `array`'s memory (a contiguous view, else a copy that the caller keeps alive)."""
        if not array.flags.c_contiguous:
            if output:
                raise InputError(f"{name}: output views must be contiguous (use batch 1)")
            array = np.ascontiguousarray(array)
        bind = self._binding.bind_output if output else self._binding.bind_input
        bind(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
        return array

    def _decode_impl(self, embeds, cos, sin, mask, cache: KVCache, start: int, stop: int) -> np.ndarray:
        b = self._binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        keep = [self._bind(n, np.ascontiguousarray(a, dtype=np.float32)) for n, a in
                (("inputs_embeds", embeds), ("cos", cos), ("sin", sin), ("attention_mask", mask))]
        for i in range(cache.num_layers):
            pk, pv = cache.past(i)
            sk, sv = cache.slot(i, start, stop)
            keep += [self._bind(f"past_key.{i}", pk), self._bind(f"past_value.{i}", pv)]
            self._bind(f"present_key.{i}", sk, output=True)
            self._bind(f"present_value.{i}", sv, output=True)
        batch = embeds.shape[0]
        if self._logits is None or self._logits.shape[0] != batch:
            self._logits = np.empty((batch, self.manifest.vocab_size), dtype=np.float32)
        self._bind("logits", self._logits, output=True)
        self._decoder.run_with_iobinding(b)
        del keep
        return self._logits
