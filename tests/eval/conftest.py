"""Fixtures for the evaluation tests: the tiny pipeline, a fake judge with the real one's API,
random-weighted FID Inception and CLIP files (the real ones cannot be downloaded here)."""

import json

import pytest
import torch
from torch import nn
from slimdiff.testing import clip_alphabet


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other jobs for the cores)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class FakeJudge(nn.Module):
    """The judge's contract (`features`, `per_image`, `score`) with a fixed random conv as feature
    extractor. An attribute is "confirmed" when a pixel statistic passes a threshold: meaningless,
    but a deterministic function of the pixels, which is what the determinism tests need."""

    def __init__(self, dim: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, dim, 3, padding=1)
        self.pca = None
        self.eval()

    def features(self, images: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, D)
        return torch.tanh(self.conv(images)).mean(dim=(2, 3))

    def per_image(self, images: torch.Tensor, scenes) -> dict:
        import numpy as np

        assert images.shape[0] == len(scenes) and images.dtype == torch.float32
        bright = (images.max(dim=1).values > 0.5).float().mean(dim=(1, 2)).numpy()  # (N,) share of bright pixels
        n = len(scenes)
        ok_colour, ok_count = (bright > 0.05).astype(float), (bright > 0.2).astype(float)
        out = {"hits": ok_colour + ok_count, "attrs": np.full(n, 2.0), "all_correct": (bright > 0.3).astype(float),
               "prob": bright, "logprob": np.log(np.clip(bright, 1e-12, 1))}
        for fam in ("count", "layout", "colour", "shape", "size"):
            out[f"hits_{fam}"], out[f"attrs_{fam}"] = np.zeros(n), np.zeros(n)
        out["hits_colour"], out["attrs_colour"] = ok_colour, np.ones(n)
        out["hits_count"], out["attrs_count"] = ok_count, np.ones(n)
        return out

    def score(self, images: torch.Tensor, scenes) -> dict:
        from slimdiff.toy.judge import summarize

        return summarize(self.per_image(images, scenes))


@pytest.fixture(scope="session")
def fake_judge():
    from slimdiff.eval.toy import pca_basis

    judge = FakeJudge()
    pca_basis(judge, n=64)  # the fixed feature standardisation, fitted on 64 rendered scenes
    return judge


@pytest.fixture(scope="session")
def tiny_pipe_dir(tmp_path_factory):
    from slimdiff.testing import tiny_pipeline

    return tiny_pipeline(tmp_path_factory.mktemp("tiny") / "pipe", seed=0)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_pipe_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipe_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def inception_file(tmp_path_factory):
    """A random-weighted FID Inception-v3 state dict (fp16, without batch-norm counters, as old files)."""
    from slimdiff.eval.inception import FID_WEIGHTS_NAME, FIDInceptionV3

    torch.manual_seed(0)
    net = FIDInceptionV3()
    for m in net.modules():  # He init keeps activations alive through ~90 ReLU layers
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    state = {k: v.half() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("inception") / FID_WEIGHTS_NAME
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A random-weighted CLIP (hidden 16, 32x32 images) with a byte-level tokenizer, saved locally."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    d = tmp_path_factory.mktemp("clip")
    chars = clip_alphabet()
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    proc = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok,
    )
    eos = vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=eos - 1,
                         eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(d)
    proc.save_pretrained(d)
    return d
