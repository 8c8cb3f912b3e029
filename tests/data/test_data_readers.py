"""Data readers (toy, imagefolder, webdataset) and the encoding cache, on tiny generated data."""

import csv
import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from slimdiff.data import build_dataset
from slimdiff.data.cache import BatchEncoder, CachedDataset, EncodingCache, sample_latents
from slimdiff.data.common import image_to_tensor
from slimdiff.data.webdataset import expand_shards, split_key


def png_bytes(colour, size=(12, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def write_tar(path, samples):
    """samples: {key: {ext: bytes}}"""
    with tarfile.open(path, "w") as tar:
        for key, parts in samples.items():
            for ext, data in parts.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_image_to_tensor_resizes_shorter_side_and_centre_crops():
    img = np.zeros((8, 12, 3), np.uint8)
    img[:, 4:8] = 255  # a white band in the middle columns
    x = image_to_tensor(img, 8)
    assert x.shape == (3, 8, 8) and x.min() == -1.0 and x.max() == 1.0
    assert x[:, :, 2:6].mean() > 0.9 and x[:, :, 0].max() < -0.9  # the band stays centred
    assert image_to_tensor(Image.new("RGB", (4, 4), (255, 0, 0)), 4)[0].eq(1.0).all()


def test_toy_dataset_is_seeded_and_rendered_on_the_fly():
    a, b = build_dataset("toy", resolution=16, seed=3, toy_size=4), build_dataset("toy", resolution=16, seed=3,
                                                                                     toy_size=4)
    assert len(a) == 4 and a[2]["caption"] == b[2]["caption"]
    assert torch.equal(a[2]["pixel_values"], b[2]["pixel_values"]) and a[2]["pixel_values"].shape == (3, 16, 16)
    assert build_dataset("toy", 16, seed=4, toy_size=4).fingerprint != a.fingerprint


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_imagefolder_reads_metadata(tmp_path, fmt):
    (tmp_path / "sub").mkdir()
    rows = [{"file_name": "a.png", "caption": "a red square"}, {"file_name": "sub/b.png", "caption": "blue"}]
    (tmp_path / "a.png").write_bytes(png_bytes((255, 0, 0)))
    (tmp_path / "sub" / "b.png").write_bytes(png_bytes((0, 0, 255)))
    if fmt == "jsonl":
        (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with open(tmp_path / "metadata.csv", "w", newline="") as f:
            w = csv.DictWriter(f, ["file_name", "caption"])
            w.writeheader()
            w.writerows(rows)
    ds = build_dataset(str(tmp_path), resolution=8, caption_column="caption")
    assert len(ds) == 2 and ds[1]["caption"] == "blue" and ds[1]["pixel_values"].shape == (3, 8, 8)
    assert ds[1]["pixel_values"][2].eq(1.0).all() and ds[0]["index"] == 0
    with pytest.raises(ValueError, match="no column 'text'"):
        build_dataset(str(tmp_path), resolution=8)


def test_imagefolder_without_captions_is_refused(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes((1, 2, 3)))
    with pytest.raises(ValueError, match="has no captions"):
        build_dataset(str(tmp_path), resolution=8)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "gone.png", "text": "x"}) + "\n")
    with pytest.raises(FileNotFoundError, match="gone.png"):
        build_dataset(str(tmp_path), resolution=8)


def test_webdataset_shards_txt_and_json_captions(tmp_path):
    write_tar(tmp_path / "s-000.tar", {"000": {"png": png_bytes((255, 0, 0)), "txt": b"red"},
                                       "d/001": {"jpg": png_bytes((0, 255, 0)), "json": b'{"text": "green"}'}})
    write_tar(tmp_path / "s-001.tar", {"002": {"png": png_bytes((0, 0, 255)), "txt": b"blue\n"}})
    assert split_key("d/001.seg.jpg") == ("d/001", "seg.jpg")
    for source in (str(tmp_path), str(tmp_path / "s-*.tar"), str(tmp_path / "s-{000..001}.tar")):
        assert [p.name for p in expand_shards(source)] == ["s-000.tar", "s-001.tar"]
        ds = build_dataset(source, resolution=8)
        assert [ds[i]["caption"] for i in range(len(ds))] == ["red", "green", "blue"]
    assert ds[1]["pixel_values"][1].gt(0.9).all() and ds[2]["pixel_values"].shape == (3, 8, 8)
    single = build_dataset(str(tmp_path / "s-001.tar"), resolution=8)
    assert len(single) == 1
    with pytest.raises(FileNotFoundError, match="s-002.tar"):
        build_dataset(str(tmp_path / "s-{000..002}.tar"), resolution=8)


def test_webdataset_without_captions_is_refused(tmp_path):
    write_tar(tmp_path / "bad.tar", {"000": {"png": png_bytes((1, 1, 1)), "cls": b"3"}})
    with pytest.raises(ValueError, match="has no captions: sample '000'"):
        build_dataset(str(tmp_path / "bad.tar"), resolution=8)
    write_tar(tmp_path / "bad2.tar", {"000": {"png": png_bytes((1, 1, 1)), "json": b'{"caption": "x"}'}})
    with pytest.raises(ValueError, match="no text field 'text'.*'caption'"):
        build_dataset(str(tmp_path / "bad2.tar"), resolution=8)


class CountingVAE(torch.nn.Module):
    """Stand-in encoder: moments = [mean pixel; log-variance 0] per 2x2 patch, and a call counter."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.config = type("C", (), {"latent_channels": 1})()
        self.calls = 0

    def encode(self, x):
        self.calls += 1
        mean = torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), 2) * self.w  # (B, 1, H/2, W/2)

        class Dist:
            parameters = torch.cat([mean, torch.zeros_like(mean)], 1)  # (B, 2, h, w)

        return type("Out", (), {"latent_dist": Dist})()


class CountingText(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 3)
        self.config = type("C", (), {"use_attention_mask": False, "hidden_size": 3})()
        self.calls = 0

    def forward(self, ids, attention_mask=None):
        self.calls += 1
        return (self.emb(ids),)


def tokenizer(captions, **kw):
    ids = torch.tensor([[len(c) % 50, 1] for c in captions])
    return type("T", (), {"input_ids": ids, "attention_mask": torch.ones_like(ids)})()


tokenizer.model_max_length = 2


def test_cache_stores_encodings_and_skips_both_encoders(tmp_path):
    ds = build_dataset("toy", resolution=8, seed=0, toy_size=3)
    vae, text = CountingVAE(), CountingText()
    cache = EncodingCache(tmp_path, ds.fingerprint, vae, text)
    cached_ds, enc = CachedDataset(ds, cache), BatchEncoder(vae, tokenizer, text, cache)
    m1, t1 = enc([cached_ds[i] for i in range(3)])
    # each item is encoded alone (its encoding then does not depend on the batch it came in)
    assert m1.shape == (3, 2, 4, 4) and t1.shape == (3, 2, 3) and vae.calls == text.calls == 3
    assert all(cache.has(i) for i in range(3))
    items = [cached_ds[i] for i in range(3)]
    assert "pixel_values" not in items[0]  # a cached item is not loaded at all
    m2, t2 = enc(items)
    assert vae.calls == text.calls == 3 and torch.equal(m1, m2) and torch.equal(t1, t2)
    # another encoder (different weights) or data set uses another cache key
    with torch.no_grad():
        vae.w.fill_(2.0)
    assert EncodingCache(tmp_path, ds.fingerprint, vae, text).key != cache.key
    assert EncodingCache(tmp_path, "other", CountingVAE(), text).key != cache.key
    # the latent is sampled from the cached distribution: mean + std * eps, scaled
    z = sample_latents(m1, torch.ones(3, 1, 4, 4), scaling_factor=0.5)
    assert torch.allclose(z, (m1[:, :1] + 1.0) * 0.5)


def noise_png(seed: int, size=(64, 64)) -> bytes:
    """A noisy PNG (a truncated copy of it is detectably short of pixel data)."""
    buf = io.BytesIO()
    Image.effect_noise(size, 60 + seed).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


# damaged files are named: a corrupt image (imagefolder, webdataset) and a truncated shard


def test_a_corrupt_image_in_an_image_folder_is_named(tmp_path):
    good, bad = noise_png(1), noise_png(2)
    (tmp_path / "a.png").write_bytes(good)
    (tmp_path / "b.png").write_bytes(bad[: len(bad) // 3])  # truncated
    (tmp_path / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": n, "text": "x"}) + "\n" for n in ("a.png", "b.png")))
    ds = build_dataset(str(tmp_path), resolution=16)
    assert ds[0]["pixel_values"].shape == (3, 16, 16)
    with pytest.raises(ValueError, match=r"data item 1: .*b\.png is not a readable image"):
        ds[1]


def test_a_truncated_shard_is_reported_and_a_corrupt_sample_named(tmp_path):
    samples = {f"{i:03d}": {"png": noise_png(i), "txt": b"a red circle"} for i in range(3)}
    shard = tmp_path / "s-000.tar"
    write_tar(shard, samples)
    with tarfile.open(shard) as tar:
        start = tar.getmember("002.png").offset_data
    whole = shard.read_bytes()
    for cut, message in ((start + 1000, "damaged or truncated"), (start - 512, "truncated: no end-of-archive")):
        shard.write_bytes(whole[:cut])  # a copy cut inside 002.png, or at its header (reads as 2 samples)
        with pytest.raises(ValueError, match=rf"s-000\.tar is {message}"):
            build_dataset(str(shard), resolution=16)
    samples["001"]["png"] = b"not an image"
    write_tar(shard, samples)
    ds = build_dataset(str(shard), resolution=16)
    with pytest.raises(ValueError, match=r"data item 1: sample '001' of .*s-000\.tar is not a readable image"):
        ds[1]


def test_cache_key_ignores_config_bookkeeping():
    """A VAE built from defaults has `_use_default_values`, a list from a set whose order changes from
    process to process: the key must not depend on it (it did: the disk cache never hit)."""
    from diffusers import AutoencoderKL
    from diffusers.configuration_utils import FrozenDict

    from slimdiff.data.cache import module_fingerprint

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=2)
    key = module_fingerprint(vae)
    vae._internal_dict = FrozenDict({**vae.config, "_use_default_values": ["b", "a"], "_name_or_path": "x"})
    assert module_fingerprint(vae) == key
    vae._internal_dict = FrozenDict({**vae.config, "latent_channels": 3})
    assert module_fingerprint(vae) != key  # a real config change still changes it
