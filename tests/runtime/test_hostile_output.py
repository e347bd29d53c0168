"""The output directory is the user's (issue 10, items 2, 5, 8): only our own temp files are deleted,
one run at a time holds it, a page's files appear together, disk-full / read-only / impossible -o
end with a clear message and never lose a finished page, and results follow the umask."""
import errno
import json
import os

import pytest
from click.testing import CliRunner
from PIL import Image

import dsocr.runtime.postprocess as pp
from dsocr.runtime import batch as B
from dsocr.runtime import cli
from dsocr.runtime.batch import LOCK_FILE, WorkItem, run_batch
from dsocr.runtime.errors import OutputBusyError, OutputError
from dsocr.runtime.postprocess import render_markdown

RAW = "# Page\n<|ref|>image<|/ref|><|det|>[[0, 0, 499, 499]]<|/det|>\n"


def ocr(image):
    return render_markdown(RAW, image)


@pytest.fixture
def pages(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a", "b", "c"):
        Image.new("RGB", (32, 32), "white").save(src / f"{name}.png")
    return [WorkItem(src / f"{n}.png") for n in ("a", "b", "c")]


def test_cleanup_deletes_only_our_temp_files_never_through_symlinks(pages, tmp_path):
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "notes").mkdir()
    user = {out / ".draft.md.tmp": "mine", out / "notes" / ".x.tmp": "mine", out / "images" / ".cache.tmp": "mine",
            out / ".dsocr-notHEX-chars.tmp": "mine"}
    for f, text in user.items():
        f.write_text(text)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / ".dsocr-0123456789ab.tmp").write_text("keep")  # our name pattern, but in the user's folder
    (out / ".dsocr-aaaaaaaaaaaa.tmp").symlink_to(precious / ".dsocr-0123456789ab.tmp")  # a link named like ours
    (out / ".dsocr-bbbbbbbbbbbb.tmp").write_text("ours, stale")
    (out / "images" / ".dsocr-cccccccccccc.tmp").write_text("ours, stale")
    run_batch(pages[:1], ocr, out, progress=False)
    assert all(f.read_text() == text for f, text in user.items())
    assert (precious / ".dsocr-0123456789ab.tmp").read_text() == "keep"
    assert (out / ".dsocr-aaaaaaaaaaaa.tmp").is_symlink()  # not ours: not even the link is removed
    assert not (out / ".dsocr-bbbbbbbbbbbb.tmp").exists() and not (out / "images" / ".dsocr-cccccccccccc.tmp").exists()


def test_images_dir_that_is_a_symlink_is_not_cleaned(pages, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".dsocr-0123456789ab.tmp").write_text("keep")
    (out / "images").symlink_to(elsewhere)
    B.remove_stale_temp(out)
    assert (elsewhere / ".dsocr-0123456789ab.tmp").read_text() == "keep"


def test_a_second_run_on_the_same_directory_is_refused_while_the_first_runs(pages, tmp_path):
    """Race through the project's own seam: the second run starts while the first is between pages."""
    out = tmp_path / "out"
    seen, second = [], []

    def first_page_done(item, result):
        seen.append(item.stem)
        if len(seen) == 1:
            with pytest.raises(OutputBusyError, match="in use by another dsocr run \\(pid \\d+\\)"):
                run_batch(pages, lambda im: (second.append(1), ocr(im))[1], out, progress=False)

    counted = []
    summary = run_batch(pages, lambda im: (counted.append(1), ocr(im))[1], out, progress=False,
                        on_page_done=first_page_done)
    assert summary.done == 3 and len(counted) == 3 and not second  # the second run OCR'd nothing
    again = run_batch(pages, ocr, out, progress=False)  # after the first: resumes, nothing redone
    assert (again.done, again.skipped) == (0, 3)
    assert (out / LOCK_FILE).is_file()


def test_lock_is_released_when_a_run_is_interrupted(pages, tmp_path):
    out = tmp_path / "out"

    def interrupt(im):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_batch(pages, interrupt, out, progress=False)
    assert run_batch(pages, ocr, out, progress=False).done == 3


def test_on_page_done_reports_new_and_earlier_pages(pages, tmp_path):
    out = tmp_path / "out"
    run_batch(pages[:1], ocr, out, progress=False)
    calls = []
    run_batch(pages, ocr, out, progress=False, on_page_done=lambda item, r: calls.append((item.stem, r is None)))
    assert calls == [("a", True), ("b", False), ("c", False)]


def _failing_write(monkeypatch, code, after=0):
    real, count = pp._write_temp, []

    def write(directory, data):
        count.append(1)
        if len(count) > after:
            raise OSError(code, os.strerror(code))
        return real(directory, data)

    monkeypatch.setattr(pp, "_write_temp", write)


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "No space left on device; free some space"),
                                         (errno.EROFS, "Read-only file system; the file system is read-only")])
def test_disk_full_or_read_only_stops_with_a_message_and_keeps_finished_pages(pages, tmp_path, monkeypatch,
                                                                              code, words):
    out = tmp_path / "out"
    _failing_write(monkeypatch, code, after=3)  # page a: figure, json, md; then b's first write fails
    with pytest.raises(OutputError, match=words) as e:
        run_batch(pages, ocr, out, progress=False)
    assert "Pages already finished are kept" in str(e.value)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["a.json", "a.md", "images"]
    assert json.loads((out / "a.json").read_text())["figures"] == ["images/a_0.jpg"]
    assert not [p for p in out.rglob("*") if pp.is_temp_name(p.name)]
    monkeypatch.undo()
    assert run_batch(pages, ocr, out, progress=False).done == 2  # resume: a is kept, b and c done now


def test_no_json_without_md_when_the_md_cannot_be_written(pages, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _failing_write(monkeypatch, errno.ENOSPC, after=2)  # the figure and the .json stage, the .md fails
    with pytest.raises(OutputError):
        run_batch(pages[:1], ocr, out, progress=False)
    assert not (out / "a.json").exists() and not (out / "a.md").exists()
    assert not list((out / "images").iterdir())


def test_cli_disk_full_exits_3_with_one_message(pages, tmp_path, monkeypatch):
    import dsocr.runtime.pipeline as P

    class Fake:
        def __init__(self, *a, **k):
            pass

        def mode(self, name):
            return name

        def ocr(self, page, options, on_text=None):
            return ocr(page)

    monkeypatch.setattr(P, "Pipeline", Fake)
    _failing_write(monkeypatch, errno.ENOSPC)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    r = CliRunner().invoke(cli.main, ["run", "--model", str(bundle), str(pages[0].source), "-o", str(tmp_path / "o"),
                                      "--quiet"])
    assert r.exit_code == 3 and "No space left on device" in r.output and "Traceback" not in r.output


def test_impossible_output_directory(tmp_path, pages):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(OutputError, match="a parent of it is a file"):
        run_batch(pages, ocr, afile / "sub", progress=False)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    r = CliRunner().invoke(cli.main, ["run", "--model", str(bundle), str(pages[0].source), "-o", str(afile / "sub")])
    assert r.exit_code == 3 and "a parent of it is a file" in r.output  # refused before the model loads


def test_errors_file_that_cannot_be_written_is_an_output_error(pages, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_open = os.open

    def no_space(path, flags, mode=0o777):
        if str(path).endswith("errors.jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, mode)

    monkeypatch.setattr(B.os, "open", no_space)
    with pytest.raises(OutputError, match="recording the failure of a"):
        run_batch(pages[:1], lambda im: 1 / 0, out, progress=False)


def test_results_follow_the_umask(pages, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "out"
        run_batch(pages[:1], ocr, out, progress=False)
        run_batch([WorkItem(tmp_path / "in" / "missing.png")], ocr, out, progress=False)
        modes = {p.name: p.stat().st_mode & 0o777 for p in [*out.iterdir(), *(out / "images").iterdir()]}
        assert modes == {"a.md": 0o644, "a.json": 0o644, "a_0.jpg": 0o644, "images": 0o755, "errors.jsonl": 0o644,
                         LOCK_FILE: 0o644}
    finally:
        os.umask(old)


def test_temp_names_are_short_and_ours():
    tmp_len = len(pp.TEMP_PREFIX) + 12 + len(pp.TEMP_SUFFIX)
    assert tmp_len <= 24 and pp.is_temp_name(".dsocr-0123456789ab.tmp") and not pp.is_temp_name(".x.md.ab12.tmp")
