"""Webdataset tar shards read with the standard library's `tarfile` (no extra dependency).

A shard is an uncompressed `.tar` whose members are grouped into samples by key, webdataset's
convention: the key is the member path up to the first dot of its base name, the rest is the
extension (`000123.jpg` + `000123.txt` -> sample `000123`). Each sample needs an image
(jpg/jpeg/png/webp/bmp) and a caption: `KEY.txt`, or `KEY.json` with the caption column (`text`).

`source` is a `.tar` file, a directory (every `*.tar` in it, sorted), a glob (`shards/*.tar`) or
a brace range (`shards/train-{000..009}.tar`). The index (member offsets and captions) is built
once by scanning the tar headers; items are then read by offset, so access is random and cheap.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import tarfile
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from slimdiff.data.common import IMAGE_EXTENSIONS, image_time_ids, image_to_tensor

_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_shards(source: str) -> list[Path]:
    """The shard files named by `source` (file, directory, glob or `{000..009}` range), sorted."""
    path = Path(source)
    if path.is_dir():
        shards = sorted(path.glob("*.tar"))
        if not shards:
            raise FileNotFoundError(f"no *.tar shards in directory {path}")
        return shards
    m = _BRACE.search(source)
    if m:
        lo, hi = m.group(1), m.group(2)
        names = [source[: m.start()] + str(i).zfill(len(lo)) + source[m.end():] for i in range(int(lo), int(hi) + 1)]
        missing = [n for n in names if not os.path.isfile(n)]
        if missing:
            raise FileNotFoundError(f"webdataset shard(s) not found: {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        return [Path(n) for n in names]
    if any(c in source for c in "*?["):
        shards = sorted(Path(p) for p in glob.glob(source))
        if not shards:
            raise FileNotFoundError(f"no webdataset shards match {source!r}")
        return shards
    if not path.is_file():
        raise FileNotFoundError(f"webdataset shard not found: {path}")
    return [path]


def split_key(member_name: str) -> tuple[str, str]:
    """`dir/000123.seg.jpg` -> (`dir/000123`, `seg.jpg`) (webdataset: key ends at the base name's first dot)."""
    head, _, base = member_name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def _has_end_marker(shard: Path, members: list[tarfile.TarInfo], size: int) -> bool:
    """A whole tar ends with two zero 512-byte blocks after its last member; a copy cut at a
    member boundary reads as a shorter archive without error, so this is how it is detected."""
    end = 0
    if members:
        last = members[-1]
        end = last.offset_data + -(-last.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    with open(shard, "rb") as f:
        f.seek(end)
        tail = f.read(2 * tarfile.BLOCKSIZE)
    return len(tail) == 2 * tarfile.BLOCKSIZE and not any(tail)


class WebDatasetShards(Dataset):
    def __init__(self, source: str, resolution: int, caption_column: str = "text"):
        self.shards = expand_shards(source)
        self.resolution = resolution
        self.items: list[tuple[int, int, int, str]] = []  # (shard index, data offset, size, caption)
        self.keys: list[str] = []  # sample keys, for error messages
        digest = hashlib.sha1()
        for s, shard in enumerate(self.shards):
            try:
                tar = tarfile.open(shard, "r:")  # uncompressed only: items are read by byte offset
            except tarfile.ReadError as e:
                raise ValueError(f"{shard} is not an uncompressed tar shard ({e})") from None
            with tar:
                samples: dict[str, dict[str, tarfile.TarInfo]] = {}
                try:
                    members = tar.getmembers()
                except (tarfile.TarError, EOFError, OSError) as e:
                    raise ValueError(f"{shard} is damaged or truncated ({e})") from None
                size = shard.stat().st_size
                if not _has_end_marker(shard, members, size):
                    raise ValueError(f"{shard} is truncated: no end-of-archive marker after its last member "
                                     f"{members[-1].name if members else None!r}; samples after it would be lost")
                for member in members:
                    if member.isfile() and member.offset_data + member.size > size:
                        raise ValueError(f"{shard} is truncated: member {member.name!r} needs bytes up to "
                                         f"{member.offset_data + member.size}, the file has {size}; "
                                         f"its samples would be lost")
                    if member.isfile():
                        key, ext = split_key(member.name)
                        samples.setdefault(key, {})[ext] = member
                for key, parts in samples.items():
                    image = next((parts[e] for e in (x.lstrip(".") for x in IMAGE_EXTENSIONS) if e in parts), None)
                    if image is None:
                        raise ValueError(f"{shard}: sample {key!r} has no image (one of {list(IMAGE_EXTENSIONS)}); "
                                         f"it has {sorted(parts)}")
                    caption = self._caption(tar, shard, key, parts, caption_column)
                    self.items.append((s, image.offset_data, image.size, caption))
                    self.keys.append(key)
                    digest.update(f"{shard.name}|{key}|{image.size}|{caption}\n".encode())
        if not self.items:
            raise ValueError(f"webdataset {source!r} holds no samples")
        self.fingerprint = f"webdataset:{[str(p.resolve()) for p in self.shards]}:n={len(self.items)}:" \
                           f"res={resolution}:{digest.hexdigest()[:16]}"
        self._files: dict[int, object] = {}
        self._pid = None

    @staticmethod
    def _caption(tar: tarfile.TarFile, shard: Path, key: str, parts: dict, column: str) -> str:
        if "txt" in parts:
            return tar.extractfile(parts["txt"]).read().decode("utf-8").strip()
        if "json" in parts:
            meta = json.loads(tar.extractfile(parts["json"]).read().decode("utf-8"))
            if not isinstance(meta, dict) or not isinstance(meta.get(column), str):
                keys = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
                raise ValueError(f"{shard}: {key}.json has no text field {column!r} (keys: {keys}); "
                                 f"choose it with --caption-column")
            return meta[column]
        raise ValueError(f"data set {shard} has no captions: sample {key!r} has no .txt or .json "
                         f"(it has {sorted(parts)})")

    def __len__(self) -> int:
        return len(self.items)

    def _file(self, shard: int):
        if self._pid != os.getpid():  # DataLoader workers must not share file positions
            self._files, self._pid = {}, os.getpid()
        if shard not in self._files:
            self._files[shard] = open(self.shards[shard], "rb")
        return self._files[shard]

    def __getitem__(self, i: int) -> dict:
        shard, offset, size, caption = self.items[i]
        f = self._file(shard)
        f.seek(offset)
        try:
            with Image.open(io.BytesIO(f.read(size))) as image:
                pixels, ids = image_to_tensor(image, self.resolution), image_time_ids(*image.size, self.resolution)
        except (OSError, SyntaxError, ValueError) as e:  # PIL: unidentified, truncated or corrupt data
            raise ValueError(f"data item {i}: sample {self.keys[i]!r} of {self.shards[shard]} is not a readable "
                             f"image ({type(e).__name__}: {e})") from None
        return {"index": i, "pixel_values": pixels, "caption": caption, "time_ids": ids}

    def __getstate__(self):  # open files are not picklable (DataLoader workers, spawn)
        state = dict(self.__dict__)
        state["_files"], state["_pid"] = {}, None
        return state
