"""No input stops a batch or silently loses pages (issue 10, items 3 and 7): lying PDFs, non-UTF-8 and
long names, multi-frame images, empty folders, Ctrl-C and absurd options."""
import json
import os
import re
from pathlib import Path

import pymupdf
import pytest
from click.testing import CliRunner
from PIL import Image

from dsocr.runtime import cli
from dsocr.runtime.batch import WorkItem, collect_inputs, iter_inputs, run_batch
from dsocr.runtime.errors import InputError
from dsocr.runtime.postprocess import render_markdown


def ocr(image):
    return render_markdown("# Page\n", image)


def one_page_pdf(path: Path) -> bytes:
    doc = pymupdf.open()
    doc.new_page(width=144, height=144).insert_text((10, 40), "p0")
    data = doc.tobytes(garbage=0, deflate=False)
    doc.close()
    path.write_bytes(data)
    return data


def errors_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "errors.jsonl").read_text(encoding="utf-8").splitlines()]


def test_pdf_with_a_lying_page_count_is_one_record_and_the_batch_goes_on(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    raw = one_page_pdf(tmp_path / "one.pdf")
    (src / "lies.pdf").write_bytes(re.sub(rb"/Count 1\b", b"/Count 1000000000", raw))
    Image.new("RGB", (32, 32), "white").save(src / "z_ok.png")
    items = list(iter_inputs([src]))  # listing never raises
    summary = run_batch(items, ocr, tmp_path / "out", progress=False)
    assert (summary.done, summary.failed) == (1, 1)
    [err] = errors_of(tmp_path / "out")
    assert err["stem"] == "lies" and err["error"] == "PDFError" and "page tree is corrupt" in err["message"]


def test_pdf_whose_kids_repeat_one_page_200000_times(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    raw = one_page_pdf(tmp_path / "one.pdf")
    kids = re.search(rb"/Kids\s*\[\s*(\d+ 0 R)\s*\]", raw)
    bomb = raw.replace(kids.group(0), b"/Kids[" + b" ".join([kids.group(1)] * 200_000) + b"]")
    (src / "kids.pdf").write_bytes(re.sub(rb"/Count \d+", b"/Count 200000", bomb))
    Image.new("RGB", (32, 32), "white").save(src / "z_ok.png")
    items = list(iter_inputs([src], max_pages=1000))
    assert len(items) == 2  # kids.pdf: one failing item (corrupt or over --max-pages), never 200,000
    summary = run_batch(items, ocr, tmp_path / "out", progress=False)
    assert (summary.done, summary.failed) == (1, 1)
    assert errors_of(tmp_path / "out")[0]["stem"] == "kids"


def test_max_pages_limits_a_long_pdf_with_a_clear_message(tmp_path):
    doc = pymupdf.open()
    for i in range(5):
        doc.new_page(width=72, height=72)
    doc.save(tmp_path / "long.pdf")
    doc.close()
    [item] = list(iter_inputs([tmp_path / "long.pdf"], max_pages=4))
    summary = run_batch([item], ocr, tmp_path / "out", progress=False)
    assert summary.failed == 1
    assert "has 5 pages, more than the limit of 4 (--max-pages)" in summary.errors[0]["message"]
    assert len(list(iter_inputs([tmp_path / "long.pdf"], max_pages=5))) == 5
    with pytest.raises(InputError, match="max_pages"):
        list(iter_inputs([tmp_path / "long.pdf"], max_pages=0))


def test_non_utf8_names_are_escaped_and_never_crash_the_batch(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    good = Path(os.fsdecode(str(src).encode() + b"/caf\xe9.png"))
    bad = Path(os.fsdecode(str(src).encode() + b"/bro\xffken.png"))
    Image.new("RGB", (32, 32), "white").save(good)
    bad.write_bytes(b"not an image")
    out = tmp_path / "out"
    for _ in range(2):  # a re-run must not die at the same file either
        summary = run_batch(iter_inputs([src]), ocr, out, progress=False)
        assert summary.total == 2 and summary.failed == 1
    assert (out / "caf%E9.md").is_file()
    assert json.loads((out / "caf%E9.json").read_text(encoding="utf-8"))["source"].endswith("caf%E9.png")
    records = errors_of(out)
    assert [r["stem"] for r in records] == ["bro%FFken", "bro%FFken"]
    assert records[0]["source"].endswith("bro%FFken.png") and "bro%FFken.png" in records[0]["message"]


def test_a_legal_244_byte_name_is_written_and_longer_stems_are_shortened(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    name244 = "x" * 240 + ".png"
    Image.new("RGB", (32, 32), "white").save(src / name244)
    name255 = "y" * 251 + ".tif"
    Image.new("RGB", (32, 32), "white").save(src / name255, save_all=True,
                                             append_images=[Image.new("RGB", (32, 32), "black")])
    out = tmp_path / "out"
    summary = run_batch(iter_inputs([src]), lambda im: "<|ref|>image<|/ref|><|det|>[[0,0,999,999]]<|/det|>", out,
                        progress=False)
    assert (summary.done, summary.failed) == (3, 0), summary.errors
    assert (out / ("x" * 240 + ".md")).is_file() and (out / "images" / ("x" * 240 + "_0.jpg")).is_file()
    long_md = sorted(p.name for p in out.glob("y*.md"))
    assert len(long_md) == 2 and all(len(n.encode()) <= 255 and "~" in n for n in long_md)


def test_multi_page_tiff_and_animated_gif_give_one_page_per_frame(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    frames = [Image.new("RGB", (40 + 8 * i, 30), (60 * i, 0, 0)) for i in range(3)]
    frames[0].save(src / "scan.tiff", save_all=True, append_images=frames[1:])
    pal = [Image.new("RGB", (20, 20), c) for c in ("red", "blue")]
    pal[0].save(src / "anim.gif", save_all=True, append_images=pal[1:], duration=100, loop=0)
    Image.new("RGB", (10, 10)).save(src / "single.tif")
    items = list(iter_inputs([src]))
    assert [i.stem for i in items] == ["anim_p0000", "anim_p0001", "scan_p0000", "scan_p0001", "scan_p0002",
                                       "single"]
    sizes = []
    run_batch(items, lambda im: (sizes.append(im.size), "# x")[1], tmp_path / "out", progress=False)
    assert sizes[2:5] == [(40, 30), (48, 30), (56, 30)]  # each TIFF page, not three times the first


def test_folder_with_nothing_to_read_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "sub" / "deep.png")  # subfolders are not searched
    with pytest.raises(InputError, match="nothing to read"):
        collect_inputs([tmp_path])
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    r = CliRunner().invoke(cli.main, ["run", "--model", str(bundle), str(tmp_path), "-o", str(tmp_path / "o")])
    assert r.exit_code == 1 and "nothing to read" in r.output


class FakePipeline:
    """Stands in for Pipeline in CLI tests: records its arguments; ocr() can be told to raise."""
    made: list = []
    raise_on_ocr: type | None = None

    def __init__(self, bundle, backend="ort", device="cpu", threads=None):
        FakePipeline.made.append({"threads": threads})

    def mode(self, name):
        return name

    def ocr(self, page, options, on_text=None):
        if FakePipeline.raise_on_ocr:
            raise FakePipeline.raise_on_ocr()
        return render_markdown("# fake\n", page)


@pytest.fixture
def fake_cli(tmp_path, monkeypatch):
    import dsocr.runtime.pipeline as P

    FakePipeline.made, FakePipeline.raise_on_ocr = [], None
    monkeypatch.setattr(P, "Pipeline", FakePipeline)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    page = tmp_path / "page.png"
    Image.new("RGB", (16, 16), "white").save(page)

    def invoke(*args):
        return CliRunner().invoke(cli.main, ["run", "--model", str(bundle), str(page), "-o", str(tmp_path / "out"),
                                             "--quiet", *args])
    return invoke


def test_ctrl_c_exits_130(fake_cli):
    FakePipeline.raise_on_ocr = KeyboardInterrupt
    r = fake_cli()
    assert r.exit_code == 130 and "interrupted" in r.output


def test_dpi_nan_is_refused(fake_cli):
    r = fake_cli("--dpi", "nan")
    assert r.exit_code == 2 and "'nan' is not a number" in r.output and not FakePipeline.made


@pytest.mark.parametrize("args", [["--threads", "100000"], ["--ngram-size", "100000000"],
                                  ["--max-new-tokens", "99999999999"], ["--max-pages", "0"]])
def test_absurd_numbers_are_usage_errors(fake_cli, args):
    r = fake_cli(*args)
    assert r.exit_code == 2 and "Invalid value" in r.output and not FakePipeline.made


def test_more_threads_than_cores_are_clamped_with_a_message(fake_cli, monkeypatch):
    monkeypatch.setattr(cli, "available_cores", lambda: 2)
    r = fake_cli("--threads", "512")
    assert r.exit_code == 0, r.output
    assert "--threads 512 is more than the 2 core(s) available; using 2" in r.output
    assert FakePipeline.made == [{"threads": 2}]


def test_one_work_item_per_page_even_for_unreadable_files(tmp_path):
    (tmp_path / "broken.gif").write_bytes(b"GIF89a garbage")
    [item] = list(iter_inputs([tmp_path / "broken.gif"]))
    assert item == WorkItem(tmp_path / "broken.gif") and item.error is not None
