"""Prompt checks: a CLIP tokenizer names no unknown word; the toy's word-level one names its unknown words."""

import warnings

import pytest

from slimdiff.sample.prompts import check_prompts, unknown_words


def test_a_clip_tokenizer_warns_of_no_unknown_word(clip_tokenizer):
    assert clip_tokenizer.unk_token_id == clip_tokenizer.eos_token_id  # CLIP's: one id for both
    prompts = ["a small red circle on the left", "a photo of an astronaut riding a horse"]
    assert unknown_words(clip_tokenizer, prompts) == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails
        check_prompts(clip_tokenizer, prompts)


def test_the_toy_tokenizer_names_unknown_words():
    from slimdiff.toy.tokenizer import build_tokenizer

    tok = build_tokenizer()
    assert unknown_words(tok, ["a small zorblax circle", "a small red circle"]) == {"a small zorblax circle": ["zorblax"]}
    with pytest.warns(UserWarning, match=r"'a small zorblax circle': \['zorblax'\]"):
        check_prompts(tok, ["a small zorblax circle"])
