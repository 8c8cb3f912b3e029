"""Image grids with captions (PIL only).

    make_grid(images, nrow=4, labels=prompts)                  # 4 images per row, a caption under each
    compare_grid({"teacher": a, "student": b}, prompts)        # one row per prompt, one column per model

`nrow` is the number of images per row, as in torchvision's `make_grid`.
Small images (the toy world's 32x32) are enlarged with nearest-neighbour so pixels stay visible.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont

from slimdiff.report.images import to_pil

BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
MAX_LABEL_LINES = 3  # a longer caption is cut with an ellipsis
ROW_LABEL_WIDTH = 220  # pixels for the text left of each row


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable (Pillow >= 10.1 with FreeType)
    except TypeError:  # older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def wrap(text: str, font, width: int, max_lines: int = MAX_LABEL_LINES) -> list[str]:
    """Greedy word wrap of `text` to lines at most `width` pixels wide; at most `max_lines`."""
    lines: list[str] = []
    for word in str(text).split():
        if lines and font.getlength(lines[-1] + " " + word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1].rstrip(".") + "..."
    return lines


def _fit(image: Image.Image, cell: tuple[int, int]) -> Image.Image:
    """Resize to fit in `cell` (w, h), keeping aspect; nearest-neighbour when enlarging."""
    w, h = image.size
    scale = min(cell[0] / w, cell[1] / h)
    if scale == 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(size, Image.NEAREST if scale > 1 else Image.LANCZOS)


def make_grid(
    images: Sequence[Image.Image],
    nrow: int = 8,
    labels: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    cell_size: int | None = None,
    pad: int = 4,
    font_size: int = 12,
) -> Image.Image:
    """A grid of `images` (row-major), `nrow` images per row.

    `labels`: one caption per image, under it. `row_labels`: one text per row, at its left.
    `col_labels`: one text per column, above it. `cell_size`: the longer side of each cell in
    pixels (default: the first image's size). Returns an RGB image.
    """
    images = to_pil(images)
    n = len(images)
    if n == 0:
        raise ValueError("make_grid needs at least one image")
    if nrow < 1:
        raise ValueError(f"nrow (images per row) must be >= 1, got {nrow}")
    ncols, nrows = min(nrow, n), math.ceil(n / min(nrow, n))
    expected = (("labels", labels, n), ("row_labels", row_labels, nrows), ("col_labels", col_labels, ncols))
    for name, seq, want in expected:
        if seq is not None and len(seq) != want:
            raise ValueError(f"{name} has {len(seq)} entries, expected {want} ({n} images, {nrow} per row)")
    font = _font(font_size)
    line_h = font_size + 3
    w0, h0 = images[0].size
    cw, ch = (w0, h0) if cell_size is None else (cell_size, round(cell_size * h0 / w0))
    cells = [_fit(im, (cw, ch)) for im in images]

    # 1. layout: label blocks under cells, a row-label column, a column-label band
    wrapped = [wrap(t, font, cw) for t in labels] if labels is not None else []
    label_h = max((len(w) for w in wrapped), default=0) * line_h
    row_wrapped = [wrap(t, font, ROW_LABEL_WIDTH - pad, max_lines=6) for t in row_labels] if row_labels else []
    col_wrapped = [wrap(t, font, cw) for t in col_labels] if col_labels else []
    left = ROW_LABEL_WIDTH if row_labels else 0
    top = max((len(w) for w in col_wrapped), default=0) * line_h + (pad if col_labels else 0)
    row_h = ch + label_h + pad
    canvas = Image.new("RGB", (left + ncols * (cw + pad) + pad, top + nrows * row_h + pad), BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    # 2. paste cells (centred in their box) and draw their captions
    for i, cell in enumerate(cells):
        r, c = divmod(i, ncols)
        x, y = left + pad + c * (cw + pad), top + pad + r * row_h
        canvas.paste(cell, (x + (cw - cell.width) // 2, y + (ch - cell.height) // 2))
        for k, line in enumerate(wrapped[i] if wrapped else []):
            draw.text((x, y + ch + k * line_h), line, fill=TEXT, font=font)
    # 3. row and column labels
    for r, lines in enumerate(row_wrapped):
        y = top + pad + r * row_h + max(0, (ch - len(lines) * line_h) // 2)
        for k, line in enumerate(lines):
            draw.text((pad, y + k * line_h), line, fill=TEXT, font=font)
    for c, lines in enumerate(col_wrapped):
        for k, line in enumerate(lines):
            draw.text((left + pad + c * (cw + pad), pad // 2 + k * line_h), line, fill=TEXT, font=font)
    return canvas


def compare_grid(
    images: Mapping[str, Sequence[Image.Image]],
    prompts: Sequence[str] | None = None,
    cell_size: int | None = 128,
    max_rows: int | None = None,
) -> Image.Image:
    """Side by side: one column per model (`images` name -> images), one row per prompt.

    Every model's list must hold the images of the same prompts and seeds, in the same order.
    """
    if not images:
        raise ValueError("compare_grid needs at least one model's images")
    lengths = {name: len(ims) for name, ims in images.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"every model needs the same number of images (same prompts and seeds), got {lengths}")
    n = next(iter(lengths.values()))
    if prompts is not None and len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts for {n} images per model")
    rows = n if max_rows is None else min(n, max_rows)
    names = list(images)
    cells = [images[name][i] for i in range(rows) for name in names]
    return make_grid(
        cells,
        nrow=len(names),
        row_labels=list(prompts[:rows]) if prompts is not None else None,
        col_labels=names,
        cell_size=cell_size,
    )
