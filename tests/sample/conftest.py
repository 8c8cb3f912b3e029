import pytest

from slimdiff.testing import tiny_clip_tokenizer


@pytest.fixture
def clip_tokenizer(tmp_path):
    """A fast byte-level CLIP tokenizer (its unknown and end-of-text tokens share one id, as CLIP's)."""
    from transformers import CLIPTokenizerFast

    slow = tiny_clip_tokenizer(tmp_path / "clip-tok")
    return CLIPTokenizerFast(str(tmp_path / "clip-tok" / "vocab.json"), str(tmp_path / "clip-tok" / "merges.txt"),
                             model_max_length=slow.model_max_length)
