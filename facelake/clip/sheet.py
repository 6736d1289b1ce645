"""A contact sheet of search hits: a PNG grid of thumbnails, each captioned with its rank, score and key."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from facelake.lake.images import DECODE_ERRORS

CAPTION_HEIGHT = 28
_BACKGROUND = (255, 255, 255)
_MISSING = (200, 200, 200)


def _thumbnail(image: Any, size: int) -> Image.Image:
    """A ``size``×``size`` RGB thumbnail (aspect kept, centred); grey for an image that does not decode."""
    try:
        if isinstance(image, np.ndarray):
            picture = Image.fromarray(image)
        elif isinstance(image, Image.Image):
            picture = image
        elif isinstance(image, bytes | bytearray | memoryview):
            picture = Image.open(io.BytesIO(image))
        elif image is None:
            raise ValueError("no image")
        else:
            picture = Image.open(image)
        picture = picture.convert("RGB")
    except DECODE_ERRORS:
        return Image.new("RGB", (size, size), _MISSING)
    picture.thumbnail((size, size))
    tile = Image.new("RGB", (size, size), _BACKGROUND)
    tile.paste(picture, ((size - picture.width) // 2, (size - picture.height) // 2))
    return tile


def contact_sheet(
    images: Sequence[Any],
    labels: Sequence[str],
    *,
    columns: int = 5,
    thumb: int = 160,
    title: str | None = None,
    warning: str | None = None,
) -> bytes:
    """PNG bytes of a grid of ``images`` (bytes, paths, RGB arrays or PIL images; None → grey) with one label
    line under each (e.g. ``"#1 0.312 key"``); ``title`` and a random-weights ``warning`` head the sheet."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if columns < 1 or thumb < 8:
        raise ValueError("columns must be >= 1 and thumb >= 8")
    font = ImageFont.load_default()
    header = [line for line in (title, warning) if line]
    top = 16 * len(header) + (6 if header else 0)
    rows = max(1, -(-len(images) // columns))
    sheet = Image.new("RGB", (columns * thumb, top + rows * (thumb + CAPTION_HEIGHT)), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for i, line in enumerate(header):
        draw.text((4, 2 + 16 * i), line, fill=(180, 0, 0) if line == warning else (0, 0, 0), font=font)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        x, y = (i % columns) * thumb, top + (i // columns) * (thumb + CAPTION_HEIGHT)
        sheet.paste(_thumbnail(image, thumb), (x, y))
        draw.text((x + 3, y + thumb + 2), _fit(draw, label, thumb - 6, font), fill=(0, 0, 0), font=font)
    out = io.BytesIO()
    sheet.save(out, format="PNG")
    return out.getvalue()


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font: Any) -> str:
    """``text`` cut (with "...") to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def hit_labels(table: Any) -> list[str]:
    """``"#rank score key"`` for each row of a search-hits table (:meth:`facelake.clip.search.ClipSearch.table`)."""
    ranks = table.column("rank").to_pylist()
    scores = table.column("score").to_pylist()
    keys = table.column("image_path").to_pylist()
    return [f"#{r} {s:.3f} {k}" for r, s, k in zip(ranks, scores, keys, strict=True)]
