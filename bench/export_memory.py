"""Peak RSS of `build_bundle` (what `dsocr-export build` runs) on the real architecture with the
decoder, SAM and CLIP cut to --layers, against the model's own fp32 size: the shipped export order
(embed, decoders, then vision with the decoder freed) and the order before it (vision first, with the
whole model resident). Each build runs in a fresh process; its peak is that process's ru_maxrss.

    python bench/export_memory.py [--layers 2] [--modes small base] [--json bench/results/export_memory.json]

The full-size figure (12 layers) is the model (13.4 GB fp32) plus the larger of the two phases' extra
measured here: the decoder export's extra does not grow with the layer count (one tensor at a time).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
GIB = 2**30


def _vision_first(model, stage, sizes, bar):
    """The export order before this change: vision graphs first, with every weight resident."""
    from dsocr.export.onnx_export import export_decoder, export_decoder_step, export_embed, export_vision

    graphs = {f"vision_{s}": export_vision(model, s, stage / f"vision_{s}.onnx") for s in sizes}
    graphs["embed"] = export_embed(model, stage / "embed.onnx")
    graphs["decoder"] = export_decoder(model, stage / "decoder.onnx")
    graphs["decoder_step"] = export_decoder_step(model, stage / "decoder_step.onnx")
    return graphs


def child(ckpt: Path, out: Path, modes: list[str], order: str) -> None:
    from dsocr.export import bundle
    from dsocr.export.config import ModelConfig

    if order == "vision-first":
        bundle._write_graphs = _vision_first
    t = time.time()
    bundle.build_bundle(ckpt, out, bundle.BuildOptions(modes=tuple(modes), max_seq_len=2048, overwrite=True,
                                                       progress=False))
    cfg = ModelConfig.from_file(ckpt)
    print(json.dumps({"order": order, "seconds": round(time.time() - t, 1), "config_layers":
                      cfg.decoder.num_hidden_layers,
                      "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB}))


def model_bytes(ckpt: Path) -> int:
    import torch

    from dsocr.export.model.ocr import DeepseekOCR
    from dsocr.export.config import ModelConfig

    with torch.device("meta"):
        m = DeepseekOCR(ModelConfig.from_file(ckpt))
    return sum(p.numel() * 4 for p in m.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--modes", nargs="+", default=["small", "base"])
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", nargs=3, metavar=("CKPT", "OUT", "ORDER"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(Path(a.child[0]), Path(a.child[1]), a.modes, a.child[2])
    import fullsize_prepare

    work = a.workdir or HERE.parent / "build" / f"bench-export-memory-L{a.layers}"
    ckpt = work / "ckpt"
    if not (ckpt / fullsize_prepare.DONE).is_file():
        fullsize_prepare.run_step(["checkpoint", str(ckpt), "--layers", str(a.layers)])
        (ckpt / fullsize_prepare.DONE).write_text("{}")
    rows = []
    for order in ("decoder-first", "vision-first"):
        cmd = [sys.executable, __file__, "--modes", *a.modes, "--child", str(ckpt), str(work / "bundle"), order]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    size = model_bytes(ckpt) / GIB
    result = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
              "layers": a.layers, "modes": a.modes, "model_fp32_gib": size,
              "rows": [dict(r, extra_over_model_gib=r["peak_rss_gib"] - size) for r in rows]}
    print(json.dumps(result, indent=1))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
