"""dsocr.ray: DeepSeek-OCR over Ray Data (extra `ray`). Ray is imported only where a job runs.

    import ray
    from dsocr.ray import OcrPages, list_sources, pages_of

    ray.init()                                                  # or ray.init("auto") on a cluster
    ds = ray.data.from_items([{"path": p} for p in list_sources(["pdfs/"])])
    ds = ds.flat_map(pages_of, fn_kwargs={"dpi": 144})          # one row per page (PNG bytes)
    ds = ds.map_batches(OcrPages, fn_constructor_kwargs={"bundle": "bundles/small", "batch": 4},
                        compute=ray.data.ActorPoolStrategy(size=2), batch_size=8,
                        num_cpus=1)                            # num_gpus=1 with a GPU backend
    ds.drop_columns(["image"]).write_parquet("out/parquet")      # source, page, markdown, boxes, ...

Columns out of OcrPages: source, page (-1 for an image), stem, markdown, boxes (JSON: page size and
boxes in page pixels), stop_reason, n_tokens, error ("" when none), status (done | skipped | error).
`run_job` is the `dsocr ray-run` job: the same per-page files as `dsocr run`, resumable.
"""
from .ocr import OcrPages
from .pages import list_pages, list_sources, pages_of

__all__ = ["OcrPages", "list_pages", "list_sources", "pages_of", "run_job"]


def __getattr__(name):
    if name == "run_job":
        from .job import run_job

        return run_job
    raise AttributeError(name)
