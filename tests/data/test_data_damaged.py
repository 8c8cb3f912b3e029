"""Damaged data files are named: a corrupt image (imagefolder, webdataset) and a truncated shard."""

import io
import json
import tarfile

import pytest
from PIL import Image

from slimdiff.data import build_dataset


def png_bytes(colour, size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def write_tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, parts in samples.items():
            for ext, data in parts.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_a_corrupt_image_in_an_image_folder_is_named(tmp_path):
    good, bad = png_bytes(1), png_bytes(2)
    (tmp_path / "a.png").write_bytes(good)
    (tmp_path / "b.png").write_bytes(bad[: len(bad) // 3])  # truncated
    (tmp_path / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": n, "text": "x"}) + "\n" for n in ("a.png", "b.png")))
    ds = build_dataset(str(tmp_path), resolution=16)
    assert ds[0]["pixel_values"].shape == (3, 16, 16)
    with pytest.raises(ValueError, match=r"data item 1: .*b\.png is not a readable image"):
        ds[1]


def test_a_truncated_shard_is_reported_and_a_corrupt_sample_named(tmp_path):
    samples = {f"{i:03d}": {"png": png_bytes(i), "txt": b"a red circle"} for i in range(3)}
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
