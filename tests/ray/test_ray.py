"""dsocr.ray on a local Ray cluster (CPU, 2 CPUs): the same files as `dsocr run`, error rows, resume,
an actor killed mid-job."""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from dsocr.runtime.batch import iter_inputs, run_batch  # noqa: E402
from dsocr.runtime.decoding import GenerationOptions  # noqa: E402
from dsocr.runtime.pipeline import Pipeline, RunOptions  # noqa: E402

MAX_NEW_TOKENS = 4


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, log_to_driver=False,
             namespace="dsocr-tests")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, sample_pdf, sample_page):
    """8 pages: the 2-page sample PDF, a 4-page PDF, two images; and a corrupt PDF."""
    import pymupdf

    d = tmp_path_factory.mktemp("inputs")
    shutil.copy(sample_pdf, d / "a_sample.pdf")
    doc = pymupdf.open()
    for i in range(4):
        page = doc.new_page(width=420, height=595)
        page.insert_text((40, 80 + 30 * i), f"Page {i + 1}: dsocr on Ray Data", fontsize=18)
    doc.save(d / "b_four.pdf")
    shutil.copy(sample_page, d / "c_page.png")
    from PIL import Image

    Image.open(sample_page).rotate(90, expand=True).save(d / "d_rotated.png")
    (d / "e_broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj garbage that is no PDF at all\n")
    return d


def ocr_kwargs(bundle) -> dict:
    return dict(bundle=str(bundle), max_new_tokens=MAX_NEW_TOKENS, threads=1)


def dsocr_run(bundle, inputs, out):
    pipe = Pipeline(bundle, threads=1)
    opts = RunOptions(generation=GenerationOptions(max_new_tokens=MAX_NEW_TOKENS))
    return run_batch(iter_inputs([inputs]), lambda page: pipe.ocr(page, opts), out, progress=False, dpi=144)


def page_files(out: Path) -> dict[str, str]:
    return {f.name: f.read_text() for f in sorted(out.iterdir()) if f.suffix in (".md", ".json")}


def test_two_actors_write_what_dsocr_run_writes_and_resume(local_ray, demo_bundle, inputs, tmp_path):
    from dsocr.ray.job import run_job

    expected = dsocr_run(demo_bundle, inputs, tmp_path / "run")
    assert (expected.done, expected.failed) == (8, 1)
    summary = run_job([inputs], tmp_path / "ray", ocr_kwargs(demo_bundle), address=None, actors=2, batch_size=1,
                      num_cpus=0.5)
    assert (summary.done, summary.skipped, summary.failed) == (8, 0, 1)
    got, want = page_files(tmp_path / "ray"), page_files(tmp_path / "run")
    assert len(want) == 16 and got == want  # every .md and .json byte for byte
    (err,) = [json.loads(line) for line in (tmp_path / "ray" / "errors.jsonl").read_text().splitlines()]
    assert err["stem"] == "e_broken" and err["error"] == "PDFError" and "corrupt" in err["message"]

    (tmp_path / "ray" / "b_four_p0002.md").unlink()  # resume: only the missing page runs again
    again = run_job([inputs], tmp_path / "ray", ocr_kwargs(demo_bundle), address=None, actors=2, batch_size=1,
                    num_cpus=0.5)
    assert (again.done, again.skipped, again.failed) == (1, 7, 1)
    assert page_files(tmp_path / "ray") == want


@pytest.mark.slow
def test_parquet_example_columns(local_ray, demo_bundle, inputs, tmp_path):
    from dsocr.ray import OcrPages, list_sources, pages_of

    ds = ray.data.from_items([{"path": p} for p in list_sources([inputs])])
    ds = ds.flat_map(pages_of, fn_kwargs={"dpi": 144})
    ds = ds.map_batches(OcrPages, fn_constructor_kwargs=ocr_kwargs(demo_bundle),
                        compute=ray.data.ActorPoolStrategy(size=2), batch_size=2, num_cpus=0.5)
    ds.write_parquet(str(tmp_path / "pq"))
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "pq")
    assert set(table.column_names) == {"source", "page", "stem", "markdown", "boxes", "stop_reason", "n_tokens",
                                       "error", "status"}
    rows = table.to_pylist()
    assert len(rows) == 9 and sorted(r["status"] for r in rows).count("done") == 8
    (bad,) = [r for r in rows if r["status"] == "error"]
    assert bad["stem"] == "e_broken" and bad["error"].startswith("PDFError")
    good = [r for r in rows if r["status"] == "done"]
    assert all(json.loads(r["boxes"])["width"] > 0 and r["n_tokens"] == MAX_NEW_TOKENS for r in good)


def _kill_one_ocr_actor(stop: threading.Event, killed: list) -> None:
    """SIGKILL the first OCR actor process seen (Ray titles it `ray::MapWorker(MapBatches(OcrPages))...`)
    once it has been busy for a moment."""
    import psutil

    while not stop.is_set() and not killed:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if "OcrPages" in " ".join(proc.info["cmdline"] or ()) and proc.pid != os.getpid():
                time.sleep(3.0)  # let it load the bundle and get into a page
                os.kill(proc.pid, signal.SIGKILL)
                killed.append(proc.pid)
                return
        time.sleep(0.2)


@pytest.mark.slow
def test_an_actor_killed_mid_job_loses_no_page_and_writes_none_twice(local_ray, demo_bundle, inputs, tmp_path):
    from dsocr.ray.job import run_job

    dsocr_run(demo_bundle, inputs, tmp_path / "run")
    want = page_files(tmp_path / "run")
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_one_ocr_actor, args=(stop, killed), daemon=True)
    killer.start()
    try:
        summary = run_job([inputs], tmp_path / "ray", ocr_kwargs(demo_bundle), address=None, actors=2,
                          batch_size=1, num_cpus=0.5)
    finally:
        stop.set()
        killer.join(30)
    assert killed, "no OCR actor was found to kill"
    assert summary.done + summary.skipped == 8 and summary.failed == 1  # each page exactly once
    assert page_files(tmp_path / "ray") == want
    assert not list((tmp_path / "ray").glob(".*.tmp"))
    assert len((tmp_path / "ray" / "errors.jsonl").read_text().splitlines()) == 1
