"""ONNX Runtime backend: CPU by default, CUDA / TensorRT execution providers when asked and present.

The decoder runs through IOBinding: past_* inputs are bound to what the KVStep gives (views of the
preallocated cache: its prefix for one slot, the slots' full rows or a gathered copy for several)
and present_* outputs to the cache rows they fill (one slot: written in place, no per-step copy) or
to the step's staging buffers (several slots: scattered by KVStep.commit); logits land in one
reused buffer per batch size.

Vision runs shrink ORT's CPU arena when they end: their activations are GB-sized (SAM's global
attention at 1024 px: [12, 4096, 4096] fp32 per tensor) and would otherwise stay reserved while the
decoder runs (full size, 1024 px: 6.6 -> 1.6 GiB resident after the call, same latency;
bench/vision_arena.py).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from ..errors import BackendUnavailableError, InputError, ManifestError
from ..kv_cache import KVStep
from ..manifest import GraphSpec, Manifest
from .base import Backend

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


TELEMETRY_ENV = "DSOCR_ORT_TELEMETRY"  # "1": leave ONNX Runtime's telemetry on (off by default)


def import_ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendUnavailableError(
            "onnxruntime is not installed: pip install 'dsocr[ort]' (or 'dsocr[ort-gpu]' for CUDA)"
        ) from e
    if os.environ.get(TELEMETRY_ENV) != "1" and hasattr(onnxruntime, "disable_telemetry_events"):
        onnxruntime.disable_telemetry_events()  # ORT's documented switch; opt in with DSOCR_ORT_TELEMETRY=1
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


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(int32)": "int32", "tensor(bool)": "bool", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}


def check_contract(graph: str, spec: GraphSpec, session) -> None:
    """Refuse a graph whose input/output names or dtypes differ from the manifest's contract."""
    for kind, want, have in (("inputs", spec.inputs, session.get_inputs()), ("outputs", spec.outputs, session.get_outputs())):
        if not want:  # a manifest without I/O specs (in-memory manifests) has nothing to check
            continue
        w = {t.name: t.dtype for t in want}
        h = {a.name: _ORT_TYPES.get(a.type, a.type) for a in have}
        if set(w) != set(h):
            missing, extra = sorted(set(w) - set(h)), sorted(set(h) - set(w))
            raise ManifestError(f"graph {graph} ({spec.file}) does not match the manifest's {kind}: "
                                f"missing {missing or 'none'}, unexpected {extra or 'none'}")
        bad = sorted(n for n in w if w[n] != h[n])
        if bad:
            raise ManifestError(f"graph {graph} ({spec.file}): {kind} {bad} have dtypes "
                                f"{[h[n] for n in bad]}, the manifest says {[w[n] for n in bad]}")


class SessionCache:
    """graph file -> onnxruntime.InferenceSession for one bundle, created on first use (thread-safe)
    and checked against the manifest's I/O contract. One cache can serve many OrtBackends: sessions
    are read-only and `InferenceSession.run` is thread-safe (each backend keeps its own IOBinding).

    threads: intra-op threads (default: ORT's, one per physical core); session_config: extra ORT
    session config entries, e.g. {"session.intra_op.allow_spinning": "0"} on a shared machine;
    configure(options, file): a hook that edits a copy of the SessionOptions per graph file
    (profiling, optimisation level, ...) before its session is created.
    """

    def __init__(self, bundle_dir: str | Path, manifest: Manifest, device: str = "cpu", threads: int | None = None,
                 session_config: Mapping[str, str] | None = None,
                 configure: Callable[[object, str], None] | None = None):
        self.bundle_dir, self.manifest, self.device = Path(bundle_dir), manifest, device
        self.ort = import_ort()
        self.providers = _providers(self.ort, device)
        self.threads = int(threads) if threads else None
        self._config = dict(session_config or {})
        self._configure = configure
        self._sessions: dict[str, object] = {}
        self._lock = threading.Lock()

    def options(self, file: str):
        opts = self.ort.SessionOptions()
        opts.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            opts.intra_op_num_threads = self.threads
        for key, value in self._config.items():
            opts.add_session_config_entry(str(key), str(value))
        if self._configure is not None:
            self._configure(opts, file)
        return opts

    def get(self, file: str):
        with self._lock:
            if file not in self._sessions:
                session = self.ort.InferenceSession(str(self.bundle_dir / file), sess_options=self.options(file),
                                                    providers=self.providers)
                for name, spec in self.manifest.graphs.items():
                    if spec.file == file:
                        check_contract(name, spec, session)
                self._sessions[file] = session
            return self._sessions[file]

    def load_all(self, keys: Iterable[str] | None = None) -> None:
        """Create the sessions of graphs `keys` (default: every graph) now, so that a bad graph fails
        here rather than mid-page."""
        for key in (self.manifest.graphs if keys is None else keys):
            self.get(self.manifest.graphs[key].file)

    def items(self) -> list[tuple[str, object]]:
        with self._lock:
            return list(self._sessions.items())

    def close(self) -> None:
        with self._lock:
            self._sessions.clear()


class OrtBackend(Backend):
    name = "ort"

    def __init__(self, bundle_dir: str | Path, manifest: Manifest, device: str = "cpu", threads: int | None = None,
                 session_config: Mapping[str, str] | None = None, sessions: SessionCache | None = None,
                 step_graph: bool | None = None):
        """sessions: a SessionCache to share with other backends of the same bundle (then device,
        threads and session_config are the cache's); default: a cache of this backend's own.
        step_graph: run one-token passes on the bundle's `decoder_step` graph (MoE "gather": only the
        selected experts); default: when the bundle targets it at ONNX Runtime on the CPU (the
        weight-only variants; an fp32 step graph would hold a second copy of the decoder weights)."""
        super().__init__(bundle_dir, manifest)
        self.sessions = sessions or SessionCache(bundle_dir, manifest, device, threads, session_config)
        self._ort = self.sessions.ort
        self._vision_run = self._ort.RunOptions()
        self._vision_run.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        if step_graph is None:
            targets = manifest.source.get("targets", {}) if isinstance(manifest.source, dict) else {}
            step_graph = "onnxruntime-cpu" in (targets.get("decoder_step") or ())
        self.step_graph = bool(step_graph) and "decoder_step" in manifest.graphs
        self._bindings: dict[str, tuple[object, object]] = {}  # graph key -> (session, IOBinding), made on first use
        self._binding = None  # the IOBinding of the pass being bound
        self._logits: dict[int, np.ndarray] = {}  # batch -> [batch, V], reused

    def graph_keys(self) -> list[str]:
        """The graphs this backend runs: vision, embed, the decoder (and the step graph when it uses one)."""
        skip = set() if self.step_graph else {"decoder_step"}
        return [k for k in self.manifest.graphs if k not in skip]

    def close(self) -> None:
        self._bindings, self._binding = {}, None
        self._logits = {}

    def _vision_impl(self, graph_file: str, pixel_values: np.ndarray) -> np.ndarray:
        return self.sessions.get(graph_file).run(["image_features"], {"pixel_values": pixel_values}, self._vision_run)[0]

    def _embed_impl(self, input_ids: np.ndarray) -> np.ndarray:
        return self.sessions.get(self.manifest.graphs["embed"].file).run(["inputs_embeds"], {"input_ids": input_ids})[0]

    def _bind(self, name: str, array: np.ndarray, output: bool = False) -> np.ndarray:
        """Bind `array`'s memory (a contiguous view, else a copy that the caller keeps alive)."""
        if not array.flags.c_contiguous:
            if output:
                raise InputError(f"{name}: output buffers must be contiguous")
            array = np.ascontiguousarray(array)
        bind = self._binding.bind_output if output else self._binding.bind_input
        bind(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
        return array

    def _decode_impl(self, embeds, cos, sin, mask, step: KVStep) -> np.ndarray:
        key = "decoder_step" if self.step_graph and embeds.shape[1] == 1 else "decoder"
        if key not in self._bindings:
            session = self.sessions.get(self.manifest.graphs[key].file)
            self._bindings[key] = (session, session.io_binding())
        session, b = self._bindings[key]
        self._binding = b
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        keep = [self._bind(n, np.ascontiguousarray(a, dtype=np.float32)) for n, a in
                (("inputs_embeds", embeds), ("cos", cos), ("sin", sin), ("attention_mask", mask))]
        for i in range(step.num_layers):
            pk, pv = step.past(i)
            sk, sv = step.present(i)
            keep += [self._bind(f"past_key.{i}", pk), self._bind(f"past_value.{i}", pv)]
            self._bind(f"present_key.{i}", sk, output=True)
            self._bind(f"present_value.{i}", sv, output=True)
        batch = embeds.shape[0]
        logits = self._logits.get(batch)
        if logits is None:
            logits = self._logits[batch] = np.empty((batch, self.manifest.vocab_size), dtype=np.float32)
        self._bind("logits", logits, output=True)
        session.run_with_iobinding(b)
        del keep
        return logits
