"""Official prompt templates and the split around `<image>`."""
import pytest

from dsocr.runtime.errors import InputError
from dsocr.runtime.prompts import PROMPT_NAMES, PROMPTS, get_prompt, prompt_fields, split_prompt


def test_official_texts():
    assert get_prompt("document") == "<image>\n<|grounding|>Convert the document to markdown."
    assert get_prompt("ocr") == "<image>\n<|grounding|>OCR this image."
    assert get_prompt("free") == "<image>\nFree OCR."
    assert get_prompt("figure") == "<image>\nParse the figure."
    assert get_prompt("describe") == "<image>\nDescribe this image in detail."
    assert get_prompt("locate", ref="the title") == "<image>\nLocate <|ref|>the title<|/ref|> in the image."
    assert set(PROMPT_NAMES) == {"document", "ocr", "free", "figure", "describe", "locate"}


def test_registry_is_read_only():
    with pytest.raises(TypeError):
        PROMPTS["mine"] = "<image>"


def test_fields():
    assert prompt_fields("locate") == ("ref",)
    assert prompt_fields("document") == ()
    assert get_prompt("document", ref=None) == PROMPTS["document"]  # unused fields are ignored


@pytest.mark.parametrize("kw", [{}, {"ref": None}, {"ref": "  "}])
def test_locate_needs_ref(kw):
    with pytest.raises(InputError, match="ref="):
        get_prompt("locate", **kw)


def test_unknown_prompt():
    with pytest.raises(InputError, match="unknown prompt 'poem'.*document"):
        get_prompt("poem")


def test_ref_cannot_smuggle_an_image():
    with pytest.raises(InputError, match="<image>"):
        get_prompt("locate", ref="<image>")


@pytest.mark.parametrize("name", PROMPT_NAMES)
def test_every_template_splits(name):
    before, after = split_prompt(get_prompt(name, ref="x"))
    assert before == "" and after.startswith("\n") and "<image>" not in after


def test_split_strips_like_the_plain_template():
    assert split_prompt("  <image>\nFree OCR.  \n") == ("", "\nFree OCR.")
    assert split_prompt("Look: <image> here") == ("Look: ", " here")


@pytest.mark.parametrize("text, n", [("no image", 0), ("<image><image>", 2)])
def test_split_needs_exactly_one_image(text, n):
    with pytest.raises(InputError, match=f"found {n}"):
        split_prompt(text)


def test_split_rejects_non_text():
    with pytest.raises(InputError):
        split_prompt(None)
