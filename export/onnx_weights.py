"""Attach weights to a traced graph without ever holding a second copy of them in memory.

Graphs are traced with `export_params=False`, so parameters arrive as graph inputs named after the
module's state-dict keys. Here they become initializers named by the checkpoint key; a Transpose or
Cast applied directly to a parameter (Linear's W^T, the router's .float()) is folded into the
initializer; values are written one tensor at a time to a single external-data file (large graphs)
or inlined (small ones). Peak memory: the torch model plus one tensor.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import onnx
import torch
from onnx import numpy_helper

FOLDABLE = ("Transpose", "Cast")
ALIGN = 64  # bytes; external tensors start at aligned offsets (mmap-friendly)


@dataclass
class LazyTensor:
    """A parameter plus the folded ops to apply to it: ('T', perm) or ('cast', onnx dtype)."""

    source: torch.Tensor
    ops: list = field(default_factory=list)

    def materialize(self) -> np.ndarray:
        t = self.source.detach()
        a = t.float().numpy() if t.is_floating_point() else t.numpy()
        for kind, arg in self.ops:
            a = np.transpose(a, arg) if kind == "T" else a.astype(onnx.helper.tensor_dtype_to_np_dtype(arg))
        return np.ascontiguousarray(a)


def _fold(graph: onnx.GraphProto, lazy: dict[str, LazyTensor], names: dict[str, str]) -> None:
    """Fold Transpose/Cast nodes whose only input is a (lazy) parameter, repeatedly."""
    changed = True
    while changed:
        changed = False
        for node in list(graph.node):
            if node.op_type not in FOLDABLE or len(node.input) != 1 or node.input[0] not in lazy:
                continue
            src = lazy[node.input[0]]
            if node.op_type == "Transpose":
                perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
                perm = perm or list(range(src.source.dim()))[::-1]
                op, suffix = ("T", perm), "__T"
            else:
                to = next(a.i for a in node.attribute if a.name == "to")
                op, suffix = ("cast", to), f"__{onnx.TensorProto.DataType.Name(to).lower()}"
            new_name = names[node.input[0]] + suffix
            lazy[new_name] = LazyTensor(src.source, src.ops + [op])
            names[new_name] = new_name
            _rename_uses(graph, node.output[0], new_name)
            graph.node.remove(node)
            changed = True


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name == old:
                n.input[i] = new
    for o in graph.output:
        if o.name == old:
            o.name = new


def attach_weights(proto: onnx.ModelProto, params: Mapping[str, torch.Tensor], rename: Callable[[str], str],
                   data_path: Path | None) -> None:
    """Turn parameter inputs into initializers (external data in `data_path`, or inline when None)."""
    g = proto.graph
    lazy, names = {}, {}
    for inp in list(g.input):
        if inp.name in params:
            key = rename(inp.name)
            _rename_uses(g, inp.name, key)
            lazy[key], names[key] = LazyTensor(params[inp.name]), key
            g.input.remove(inp)
    _fold(g, lazy, names)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    order = [k for k in lazy if k in used]
    if data_path is None:
        g.initializer.extend(numpy_helper.from_array(lazy[k].materialize(), k) for k in order)
        return
    with open(data_path, "wb") as f:
        for k in order:
            arr = lazy[k].materialize()
            pad = (-f.tell()) % ALIGN
            f.write(b"\0" * pad)
            offset = f.tell()
            f.write(arr.data)  # the array's own buffer: no second copy (tobytes() would make one)
            t = onnx.TensorProto()
            t.name, t.data_type = k, onnx.helper.np_dtype_to_tensor_dtype(arr.dtype)
            t.dims.extend(arr.shape)
            t.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(arr.nbytes))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            g.initializer.append(t)
            del arr
