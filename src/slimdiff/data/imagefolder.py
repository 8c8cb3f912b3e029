"""A local image folder with captions, in Hugging Face's `imagefolder` layout.

    data/
      metadata.jsonl      {"file_name": "0001.png", "text": "a red circle"}  (one object per line)
      0001.png ...
or `metadata.csv` with a header (`file_name,text`). Metadata files may also sit in
sub-folders (e.g. `train/metadata.jsonl`); `file_name` is relative to its metadata file's folder.
The caption column (`text`) and image column (`file_name`) are configurable. A folder without
metadata has no captions and is refused (a text-to-image student needs them).
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from slimdiff.data.common import image_time_ids, image_to_tensor

METADATA_NAMES = ("metadata.jsonl", "metadata.csv")


def read_metadata(path: Path) -> list[dict]:
    """Rows of a `metadata.jsonl` or `metadata.csv` as dicts."""
    if path.suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        return rows
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


class ImageFolderDataset(Dataset):
    def __init__(self, root: str | Path, resolution: int, caption_column: str = "text",
                 image_column: str = "file_name"):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        metas = sorted(p for name in METADATA_NAMES for p in root.rglob(name))
        if not metas:
            raise ValueError(f"data set {root} has no captions: no metadata.jsonl or metadata.csv in it "
                             f"(Hugging Face imagefolder layout: rows with '{image_column}' and '{caption_column}')")
        both = sorted({m.parent for m in metas if (m.parent / "metadata.csv").is_file()
                       and (m.parent / "metadata.jsonl").is_file()})
        if both:
            raise ValueError(f"{both[0]} has both metadata.jsonl and metadata.csv; keep one")
        self.items: list[tuple[Path, str]] = []  # (image path, caption)
        for meta in metas:
            rows = read_metadata(meta)
            for n, row in enumerate(rows, 1):
                for col in (image_column, caption_column):
                    if col not in row:
                        raise ValueError(f"{meta} row {n} has no column {col!r} (columns: {sorted(row)}); "
                                         f"choose the caption column with --caption-column")
                caption = row[caption_column]
                if not isinstance(caption, str):
                    raise ValueError(f"{meta} row {n}: caption {caption!r} in column {caption_column!r} is not text")
                image = meta.parent / row[image_column]
                if not image.is_file():
                    raise FileNotFoundError(f"{meta} row {n}: image {row[image_column]!r} not found at {image}")
                self.items.append((image, caption))
        if not self.items:
            raise ValueError(f"data set {root} is empty: its metadata files {[str(m) for m in metas]} have no rows")
        self.resolution = resolution
        digest = hashlib.sha1()
        for image, caption in self.items:
            stat = image.stat()
            digest.update(f"{image}|{stat.st_size}|{stat.st_mtime_ns}|{caption}\n".encode())
        self.fingerprint = f"imagefolder:{root.resolve()}:n={len(self.items)}:res={resolution}:{digest.hexdigest()[:16]}"

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        path, caption = self.items[i]
        try:
            with Image.open(path) as image:
                pixels, ids = image_to_tensor(image, self.resolution), image_time_ids(*image.size, self.resolution)
        except (OSError, SyntaxError, ValueError) as e:  # PIL: unidentified, truncated or corrupt data
            raise ValueError(f"data item {i}: {path} is not a readable image ({type(e).__name__}: {e}); "
                             f"replace or remove it (a distill run resumes from its last checkpoint)") from None
        return {"index": i, "pixel_values": pixels, "caption": caption, "time_ids": ids}
