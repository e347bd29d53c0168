"""`dsocr ray-run`: the `dsocr run` job on a Ray cluster. Files -> flat_map(pages_of) ->
map_batches(OcrPages, actors) -> the same per-page files in out_dir (written by the actors, so out_dir
must be on a filesystem every node sees), errors appended to errors.jsonl by the driver. Resumable:
pages whose `<stem>.md` exists are skipped. Rows come back to the driver one at a time (streaming)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from dsocr.runtime.batch import ERRORS_FILE, output_lock, prepare_output_dir, remove_stale_temp
from dsocr.runtime.errors import BackendUnavailableError, InputError

from .pages import NO_PAGE, list_pages, list_sources, pages_of


@dataclass
class JobSummary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.done + self.skipped + self.failed


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise BackendUnavailableError(f"dsocr ray-run needs Ray: pip install 'dsocr[ray]' ({e})") from e
    return ray


def _record_error(out_dir: Path, row: dict[str, Any]) -> dict[str, Any]:
    kind, _, message = str(row["error"]).partition(": ")
    record = {"source": row["source"], "page": None if row["page"] == NO_PAGE else int(row["page"]),
              "stem": row["stem"], "error": kind, "message": message, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with open(out_dir / ERRORS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return record


def build_dataset(pages: list[dict[str, Any]], ocr_kwargs: dict[str, Any], dpi: float, out_dir: str | None,
                  actors: int, batch_size: int, num_cpus: float | None, num_gpus: float | None):
    """The Ray Data pipeline (lazy) over list_pages rows: one row per page with OcrPages' columns.
    Pages are spread over many blocks so that every actor gets work even from one long PDF."""
    from .ocr import OcrPages

    ray = _ray()
    ds = ray.data.from_items(pages, override_num_blocks=max(1, min(len(pages), max(64, 8 * actors))))
    ds = ds.flat_map(pages_of, fn_kwargs={"dpi": dpi, "out_dir": out_dir})
    resources = {k: v for k, v in (("num_cpus", num_cpus), ("num_gpus", num_gpus)) if v is not None}
    return ds.map_batches(OcrPages, fn_constructor_kwargs={**ocr_kwargs, "out_dir": out_dir},
                          compute=ray.data.ActorPoolStrategy(size=actors), batch_size=batch_size, **resources)


def run_job(inputs: Iterable[str | Path], out_dir: str | Path, ocr_kwargs: dict[str, Any], address: str | None = "auto",
            actors: int = 1, batch_size: int = 4, dpi: float = 144, num_cpus: float | None = None,
            num_gpus: float | None = None, progress: bool = False) -> JobSummary:
    """Run on the cluster at `address` ("auto", "ray://host:10001", or None for an already
    initialised / new local Ray). Every page not yet done gets its files in out_dir."""
    ray = _ray()
    sources = list_sources(inputs)
    if not sources:
        raise InputError("no image or PDF among the inputs")
    stems = [Path(s).stem for s in sources]
    if len(set(stems)) != len(stems):
        dup = sorted({s for s in stems if stems.count(s) > 1})
        raise InputError(f"several inputs share the name(s) {', '.join(dup)}: their pages would write the same files")
    out = prepare_output_dir(Path(out_dir).resolve())  # an impossible out_dir: OutputError, as for dsocr run
    with output_lock(out):  # one run per output directory, as run_batch: a second one is refused
        remove_stale_temp(out)
        return _run_locked(ray, sources, out, ocr_kwargs, address, actors, batch_size, dpi, num_cpus, num_gpus,
                           progress)


def _run_locked(ray, sources, out: Path, ocr_kwargs, address, actors, batch_size, dpi, num_cpus, num_gpus,
                progress) -> JobSummary:
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=progress)
    ray.data.DataContext.get_current().enable_progress_bars = progress
    t0 = time.perf_counter()
    summary, seen = JobSummary(), set()
    todo = []
    for page in list_pages(sources):
        if (out / f"{page['stem']}.md").exists():
            summary.skipped += 1
            seen.add(page["stem"])
        else:
            todo.append(page)
    if not todo:
        summary.seconds = time.perf_counter() - t0
        return summary
    ds = build_dataset(todo, dict(ocr_kwargs), dpi, str(out), actors, batch_size, num_cpus, num_gpus)
    for row in ds.iter_rows():
        if row["stem"] in seen:  # Ray retries whole tasks, never re-emits rows; this keeps it so
            continue
        seen.add(row["stem"])
        if row["status"] == "done":
            summary.done += 1
        elif row["status"] == "skipped":
            summary.skipped += 1
        else:
            summary.failed += 1
            summary.errors.append(_record_error(out, row))
    summary.seconds = time.perf_counter() - t0
    return summary
