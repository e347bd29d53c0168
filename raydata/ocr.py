"""OcrPages: the callable class for `Dataset.map_batches` (one Pipeline and BatchEngine per actor).

Every page of a batch is submitted to the engine at once, so `batch` slots decode together. A page
that fails becomes a row with `error` set and status "error"; the batch goes on. With out_dir, each
page's files are written there exactly as `dsocr run` writes them (figures, `<stem>.json`, then
`<stem>.md`, atomically), and a page whose `.md` is already there (an earlier run, or a task retried
after its actor died) is not written again.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dsocr.runtime.decoding import GenerationOptions
from dsocr.runtime.postprocess import render_markdown, save_page
from dsocr.runtime.preprocess import load_image

from .pages import NO_PAGE

COLUMNS = ("source", "page", "stem", "markdown", "boxes", "stop_reason", "n_tokens", "error", "status")


class OcrPages:
    def __init__(self, bundle: str, mode: str | None = None, backend: str = "ort", batch: int = 1,
                 prompt: str = "document", max_new_tokens: int = 8192, ngram_size: int = 20, ngram_window: int = 50,
                 device: str = "cpu", threads: int | None = None, out_dir: str | None = None):
        from dsocr.runtime.engine import BatchEngine
        from dsocr.runtime.pipeline import Pipeline, RunOptions

        gen = GenerationOptions(max_new_tokens=max_new_tokens, ngram_size=ngram_size, ngram_window=ngram_window)
        self.options = RunOptions(mode=mode, prompt=prompt, generation=gen)
        pipe = Pipeline(bundle, backend=backend, device=device, threads=threads)
        pipe.mode(self.options.mode)  # a wrong mode fails the actor at start, not page by page
        self.engine = BatchEngine(pipe, max_batch=batch).start()
        self.out_dir = Path(out_dir) if out_dir is not None else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [{k: batch[k][i] for k in batch} for i in range(len(batch["source"]))]
        jobs = [self._submit(r) for r in rows]
        out = [self._finish(r, job) for r, job in zip(rows, jobs)]
        return {c: [o[c] for o in out] for c in COLUMNS}

    def _submit(self, row: dict[str, Any]):
        if str(row["status"]) != "todo" or self._done(str(row["stem"])):
            return None
        try:
            page = load_image(bytes(row["image"]))
            return page, self.engine.submit(page, self.options)
        except Exception as e:  # noqa: BLE001 - an unreadable image is this page's error
            return e

    def _done(self, stem: str) -> bool:
        return self.out_dir is not None and (self.out_dir / f"{stem}.md").exists()

    def _finish(self, row: dict[str, Any], job) -> dict[str, Any]:
        out = {"source": str(row["source"]), "page": int(row["page"]), "stem": str(row["stem"]), "markdown": "",
               "boxes": "", "stop_reason": "", "n_tokens": 0, "error": str(row["error"]), "status": str(row["status"])}
        if job is None:
            if out["status"] == "todo":  # written before this task was retried
                out.update(status="skipped", markdown=(self.out_dir / f"{out['stem']}.md").read_text(encoding="utf-8"))
            return out
        try:
            if isinstance(job, Exception):
                raise job
            page, future = job
            raw, gen = future.result()
            result = render_markdown(raw, page).with_generation(gen).with_figure_prefix(f"{out['stem']}_")
            if self.out_dir is not None:
                page_index = None if out["page"] == NO_PAGE else out["page"]
                save_page(result, self.out_dir, out["stem"], extra={"source": out["source"], "page": page_index})
        except Exception as e:  # noqa: BLE001 - one bad page must not fail the job
            out.update(error=f"{type(e).__name__}: {e}", status="error")
            return out
        boxes = {"width": result.width, "height": result.height, "boxes": [b.to_dict() for b in result.boxes]}
        out.update(markdown=result.markdown, boxes=json.dumps(boxes), stop_reason=str(gen.stop_reason),
                   n_tokens=len(gen.ids), status="done")
        return out

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close(cancel_pending=True, timeout=5)
