"""A contact sheet: a few identities' generated images in a grid (one row per identity), as PNG bytes.

Read back from committed tars, so the sheet shows what the partition holds, also when every shard was reused.
Random-weight generators put their warning on the sheet.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from facelake.generation.shards import decode_images, iter_tar_samples
from facelake.lake.storage import Storage

CONTACT_SHEET_FILE = "contact_sheet.png"
LABEL_WIDTH = 150
TILE = 128
LINE = 14


def contact_sheet_png(
    rows: Sequence[tuple[str, Sequence[np.ndarray]]],
    *,
    title: str = "",
    warning: str | None = None,
    tile: int = TILE,
) -> bytes:
    """A grid of ``(label, images)`` rows (RGB uint8 arrays, scaled to ``tile`` px), title and warning on top."""
    columns = max((len(images) for _, images in rows), default=0)
    width = LABEL_WIDTH + max(columns, 4) * (tile + 4)
    wrap = max(width // 6, 20)
    header = [(part, (0, 0, 0)) for part in textwrap.wrap(title, wrap)]
    header += [(part, (200, 0, 0)) for part in textwrap.wrap(warning or "", wrap)]
    top = LINE * len(header) + (6 if header else 0)
    height = top + max(len(rows), 1) * (tile + 4)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for line_number, (line, colour) in enumerate(header):
        draw.text((4, 2 + line_number * LINE), line, fill=colour)
    if not rows:
        draw.text((4, top + 4), "no images", fill=(0, 0, 0))
    for row_number, (label, images) in enumerate(rows):
        y = top + row_number * (tile + 4)
        draw.text((4, y + tile // 2 - LINE // 2), label[:24], fill=(0, 0, 0))
        for column, image in enumerate(images):
            thumb = (
                Image.fromarray(np.asarray(image, np.uint8))
                .convert("RGB")
                .resize((tile, tile), Image.BILINEAR)
            )
            sheet.paste(thumb, (LABEL_WIDTH + column * (tile + 4), y))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def contact_sheet_from_tars(
    storage: Storage,
    tar_uris: Sequence[str],
    *,
    identities: int = 4,
    per_identity: int = 4,
    title: str = "",
    warning: str | None = None,
) -> bytes:
    """The first ``identities`` identities (in tar order) with up to ``per_identity`` images each."""
    chosen: dict[str, list[bytes]] = {}
    for uri in tar_uris:
        for _key, jpg, record in iter_tar_samples(storage, uri):
            identity = str(record.get("identity_id"))
            if identity not in chosen:
                if len(chosen) >= identities:
                    break
                chosen[identity] = []
            if len(chosen[identity]) < per_identity:
                chosen[identity].append(jpg)
        if len(chosen) >= identities and all(len(v) >= per_identity for v in chosen.values()):
            break
    rows = [(identity, decode_images(jpegs)) for identity, jpegs in chosen.items()]
    return contact_sheet_png(rows, title=title, warning=warning)
