"""Prompt checks before generation: text that is not UTF-8 is refused, unknown words are named.

    check_prompts(pipe.tokenizer, ["a red circle", "a purple hexagon"])
    # UserWarning: 1 prompt(s) hold words the tokenizer does not know (each becomes <|unk|>):
    #   'a purple hexagon': ['purple', 'hexagon']

A word-level tokenizer (the toy world's) maps every word outside its vocabulary to one unknown
token, so a prompt can silently lose its meaning; byte-level BPE tokenizers (CLIP's) know every
string and are never warned about (their end-of-text token, which shares the unknown token's id,
is a special token, not a word of the prompt).
"""

from __future__ import annotations

import warnings
from typing import Sequence

MAX_SHOWN = 5  # prompts named in one warning


def check_prompts(tokenizer, prompts: Sequence[str]) -> None:
    """ValueError for a prompt that is not text or not valid Unicode (undecodable command-line
    bytes arrive as lone surrogates); a warning naming the words `tokenizer` does not know."""
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise ValueError(f"prompt {i} is a {type(prompt).__name__}, not text: {prompt!r}")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"prompt {i} {prompt!r} holds bytes that are not UTF-8 text; "
                             f"write prompts in UTF-8") from None
    unknown = unknown_words(tokenizer, prompts) if tokenizer is not None else {}
    if unknown:
        shown = "; ".join(f"{p!r}: {w}" for p, w in list(unknown.items())[:MAX_SHOWN])
        more = f" (and {len(unknown) - MAX_SHOWN} more)" if len(unknown) > MAX_SHOWN else ""
        warnings.warn(f"{len(unknown)} prompt(s) hold words the tokenizer does not know (each becomes "
                      f"{tokenizer.unk_token}): {shown}{more}", UserWarning, stacklevel=3)


def unknown_words(tokenizer, prompts: Sequence[str]) -> dict[str, list[str]]:
    """prompt -> the words of it that a fast tokenizer encodes as its unknown token (in order).

    Empty for slow tokenizers and tokenizers without an unknown token."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    unk_id = getattr(tokenizer, "unk_token_id", None)
    if backend is None or unk_id is None:
        return {}
    found: dict[str, list[str]] = {}
    for prompt in dict.fromkeys(prompts):
        # without the special tokens: CLIP's end-of-text token has the unknown token's id
        enc = backend.encode(prompt, add_special_tokens=False)
        words = [prompt[a:b] for i, (a, b) in zip(enc.ids, enc.offsets) if i == unk_id and b > a]
        if words:
            found[prompt] = words
    return found
