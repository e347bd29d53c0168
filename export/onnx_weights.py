"""Attach weights to a traced graph without ever holding a second copy of them in memory.

Graphs are traced with `export_params=False`, so parameters arrive as graph inputs named after the
module's state-dict keys. Here they become initializers named by the checkpoint key; a Transpose or
Cast applied directly to a parameter (Linear's W^T, the router's .float()) is folded into the
initializer; values are written one tensor at a time to a single external-data file (large graphs)
or inlined (small ones). Peak memory: the torch model plus one tensor.

A graph may also point tensors at bytes another graph already wrote (`reuse`): the decode-step
graph's stacked experts [E, D, I] are the prefill graph's per-expert W^T [D, I] laid end to end, so
the prefill graph writes each layer's experts of one projection consecutively and the step graph's
stacks reference that region of its data file instead of a second copy (full size: 9.3 GB).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import onnx
import torch
from onnx import numpy_helper

FOLDABLE = ("Transpose", "Cast")
EXPERT = re.compile(r"^(?P<scope>.+\.mlp\.)experts\.(?P<e>\d+)\.(?P<proj>gate|up|down)_proj\.weight__T$")
Placement = tuple[str, int, int]  # external data file name, offset, length in bytes
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

    def spec(self) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of materialize() without computing it."""
        shape = tuple(self.source.shape)
        dtype = np.dtype(np.float32) if self.source.is_floating_point() else self.source.numpy().dtype
        for kind, arg in self.ops:
            shape, dtype = ((tuple(shape[i] for i in arg), dtype) if kind == "T"
                            else (shape, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(arg))))
        return shape, dtype


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


def _grouped(order: list[str]) -> list[str]:
    """`order` with each layer's routed experts of one projection written consecutively, in expert
    order, where the first of them stood (so that they form one [E, D, I] region)."""
    groups: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for k in order:
        m = EXPERT.match(k)
        if m:
            groups.setdefault((m["scope"], m["proj"]), []).append((int(m["e"]), k))
    out, done = [], set()
    for k in order:
        m = EXPERT.match(k)
        if not m:
            out.append(k)
        elif (m["scope"], m["proj"]) not in done:
            done.add((m["scope"], m["proj"]))
            out += [name for _, name in sorted(groups[(m["scope"], m["proj"])])]
    return out


def stacked_regions(placed: Mapping[str, Placement], experts: int) -> dict[str, Placement]:
    """Regions of `placed` (a prefill graph's experts) that hold a whole [E, D, I] stack: name of the
    decode-step graph's stack ("<scope>stack_<proj>") -> placement, where experts 0..E-1 lie end to end."""
    by: dict[tuple[str, str], dict[int, Placement]] = {}
    for k, where in placed.items():
        m = EXPERT.match(k)
        if m:
            by.setdefault((m["scope"], m["proj"]), {})[int(m["e"])] = where
    out = {}
    for (scope, proj), es in by.items():
        if sorted(es) != list(range(experts)):
            continue
        (loc, first, size), parts = es[0], [es[e] for e in range(experts)]
        if all(p[0] == loc and p[2] == size and p[1] == first + e * size for e, p in enumerate(parts)):
            out[f"{scope}stack_{proj}"] = (loc, first, experts * size)
    return out


def _external(name: str, shape, dtype, where: Placement) -> onnx.TensorProto:
    """An initializer whose bytes lie at `where` (onnx's set_external_data needs the bytes in raw_data
    first, the very copy this module avoids)."""
    t = onnx.TensorProto()
    t.name, t.data_type = name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    t.dims.extend(shape)
    t.data_location = onnx.TensorProto.EXTERNAL
    for key, value in zip(("location", "offset", "length"), map(str, where)):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def attach_weights(proto: onnx.ModelProto, params: Mapping[str, torch.Tensor], rename: Callable[[str], str],
                   data_path: Path | None, reuse: Mapping[str, Placement] | None = None) -> dict[str, Placement]:
    """Turn parameter inputs into initializers (external data in `data_path`, or inline when None);
    a tensor named in `reuse` points at those bytes of another file of the same folder instead of
    being written (its size is checked). -> where each tensor written to `data_path` lies."""
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
        return {}
    placed: dict[str, Placement] = {}
    reuse = reuse or {}
    with open(data_path, "wb") as f:
        for k in _grouped(order):
            if k in reuse:
                shape, dtype = lazy[k].spec()
                if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != reuse[k][2]:
                    raise ValueError(f"{k}: {reuse[k][2]} bytes to reuse, the tensor has {shape} {dtype}")
                g.initializer.append(_external(k, shape, dtype, reuse[k]))
                continue
            arr = lazy[k].materialize()
            pad = (-f.tell()) % ALIGN
            f.write(b"\0" * pad)
            placed[k] = (data_path.name, f.tell(), arr.nbytes)
            f.write(arr.data)  # the array's own buffer: no second copy (tobytes() would make one)
            g.initializer.append(_external(k, arr.shape, arr.dtype, placed[k]))
            del arr
    return placed
