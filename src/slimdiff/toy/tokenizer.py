"""A word-level tokenizer over the toy world's vocabulary, saved so transformers loads it offline.

It is a `tokenizers` WordLevel model wrapped in `transformers.PreTrainedTokenizerFast`, with
CLIP's conventions: every sequence is `<|startoftext|> words... <|endoftext|>` and padded with
`<|endoftext|>` to `model_max_length`, which is what `StableDiffusionPipeline` asks of its
tokenizer (`padding="max_length"`, `truncation=True`, empty negative prompts).
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from slimdiff.toy.world import vocabulary

BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "<|unk|>"
MAX_LENGTH = 24  # tokens incl. BOS/EOS; the longest caption (three objects) has 19 words


def build_tokenizer(max_length: int = MAX_LENGTH) -> PreTrainedTokenizerFast:
    """The toy tokenizer: ids 0..2 are UNK, BOS, EOS, then the world's words in order."""
    vocab = {UNK: 0, BOS: 1, EOS: 2}
    for word in vocabulary():
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # splits on whitespace and punctuation
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=EOS,  # CLIP pads with its end token
        model_max_length=max_length,
    )
