"""BatchEngine's contract: futures, streaming, a bounded queue, cancel, close."""
import threading

import pytest

from dsocr.runtime.decoding import GenerationOptions
from dsocr.runtime.engine import BatchEngine, EngineClosedError, QueueFullError
from dsocr.runtime.errors import InputError, ModeError
from dsocr.runtime.pipeline import Pipeline, RunOptions

OPTS = RunOptions(generation=GenerationOptions(max_new_tokens=6))


@pytest.fixture(scope="module")
def pipe(demo_bundle):
    return Pipeline(demo_bundle)


def test_results_equal_the_pipeline_run_alone(pipe, sample_page):
    from dsocr.runtime.preprocess import load_image

    page = load_image(sample_page)
    alone = pipe.generate(page, OPTS)
    chunks = []
    engine = BatchEngine(pipe, max_batch=2).start()
    futures = [engine.submit(page, OPTS, on_text=chunks.append if i == 0 else None) for i in range(2)]
    results = [f.result(timeout=120) for f in futures]
    engine.close()
    for raw, res in results:
        assert raw == alone[0] and res.ids == alone[1].ids and res.stop_reason == alone[1].stop_reason
    assert "".join(chunks) == alone[0]
    st = engine.stats()
    assert (st.pages_done, st.tokens_generated, st.queued, st.active) == (2, 2 * len(alone[1].ids), 0, 0)


def test_queue_bound_and_cancel_of_a_queued_page(pipe, sample_page):
    engine = BatchEngine(pipe, max_queue=1)  # not started: pages stay queued
    first = engine.submit(sample_page, OPTS)
    with pytest.raises(QueueFullError, match="max_queue=1"):
        engine.submit(sample_page, OPTS)
    assert engine.cancel(first) and first.cancelled()
    second = engine.submit(sample_page, OPTS)  # room again
    engine.close()  # not started: close drains on this thread
    assert second.done() and second.result()[1].stop_reason in {"eos", "max_tokens", "loop"}
    with pytest.raises(EngineClosedError):
        engine.submit(sample_page, OPTS)


def test_cancel_of_a_running_page_frees_it(pipe, sample_page):
    started = threading.Event()
    engine = BatchEngine(pipe).start()
    long = RunOptions(generation=GenerationOptions(max_new_tokens=400, loop_detection=False))
    fut = engine.submit(sample_page, long, on_text=lambda s: started.set())
    assert started.wait(120)
    assert engine.cancel(fut)
    raw, res = fut.result(timeout=120)
    assert res.stop_reason == "cancelled"
    engine.close()


def test_bad_submissions_fail_at_once(pipe, sample_page):
    engine = BatchEngine(pipe)
    with pytest.raises(ModeError):
        engine.submit(sample_page, RunOptions(mode="base"))  # the demo bundle is small-only
    with pytest.raises(InputError):
        BatchEngine(pipe, max_batch=0)
    with pytest.raises(InputError):
        BatchEngine(pipe, max_queue=-1)


def test_a_failing_page_sets_its_future_and_the_engine_goes_on(pipe, sample_page):
    engine = BatchEngine(pipe).start()
    bad = engine.submit(b"not an image", OPTS)
    good = engine.submit(sample_page, OPTS)
    with pytest.raises(InputError):
        bad.result(timeout=120)
    assert good.result(timeout=120)[1].ids
    engine.close()
