"""``facelake search``: text and image search over a committed CLIP embeddings asset.

    facelake search "a smiling old man with a beard" --asset laion_face_clip_embeddings --part 00000 -k 20
    facelake search --image query.jpg --asset celebahq_clip_embeddings --sheet hits.png --format json

Queries are encoded by the configured model (``clip:`` settings: the same model the embeddings assets use);
embeddings of another space are refused, naming both spaces, and missing weights fail at once saying how to
provide them. Search is exact (blocked matrix products) unless the asset has a committed faiss index
(``<x>_clip_index``, built above ``clip.exact_search_max_rows`` rows) for the same embeddings. Every hit is
scored with the one float64 similarity. Output: a table (rank, score, image_path, caption, url) or JSON;
``--sheet`` also writes a contact sheet of the hits. Random weights are labelled in every output.
Exit status 0; 1 with a one-line message for an error a user can act on; 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from facelake.clip.layout import ClipEmbeddings
    from facelake.lake.storage import Storage
    from facelake.settings import FacelakeSettings

USAGE_ERROR = 2
CAPTION_WIDTH = 60
COLUMNS = ("rank", "score", "image_path", "caption", "url")


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``facelake search``."""
    parser.add_argument("query", nargs="?", help="a text query (optional with --image)")
    parser.add_argument(
        "--asset", required=True, help="a CLIP embeddings asset, e.g. laion_face_clip_embeddings"
    )
    parser.add_argument(
        "--part",
        help="its partition, e.g. 00000 (default: its only committed partition; 'all' if unpartitioned)",
    )
    parser.add_argument("-k", type=int, default=20, help="hits per query (default: 20)")
    parser.add_argument(
        "--image", action="append", default=[], metavar="PATH", help="an image query (repeatable)"
    )
    parser.add_argument("--sheet", metavar="PNG", help="also write a contact sheet of the hits to this file")
    parser.add_argument(
        "--format", choices=("table", "json"), default="table", help="output (default: table)"
    )
    parser.add_argument("--root", help="storage root, a local path or s3://bucket/prefix (default: settings)")


@dataclass
class SearchResult:
    """The hits of one search (query, rank, score, row, method and the hits' metadata), what was searched,
    and the random-weights warning (None for trained weights)."""

    asset: str
    part: str
    hits: pa.Table
    embeddings: ClipEmbeddings
    space: str
    random_init: bool
    warning: str | None
    method: str
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        return self.hits.to_pylist()


def resolve_part(lake: Storage, asset: str, part: str | None) -> str:
    """``part``, or the asset's only committed partition; an error lists the committed ones otherwise."""
    from facelake.clip.foreign import asset_location
    from facelake.lake.catalog import committed_partitions
    from facelake.lake.errors import InputError

    if part:
        return part
    dataset, name = asset_location(asset)  # sfhq_clip_features lives under sfhq/clip_features/
    parts = [c.artifact.partition for c in committed_partitions(lake, dataset) if c.artifact.artifact == name]
    if len(parts) == 1:
        return parts[0]
    where = lake.uri(dataset, name)
    if not parts:
        raise InputError(where, f"no committed partition of {asset}: materialize it first")
    raise InputError(
        where, f"{asset} has {len(parts)} committed partitions ({', '.join(parts)}): name one with --part"
    )


def _committed_index(lake: Storage, asset: str, part: str, content_hash: str) -> tuple[Any, str | None]:
    """The asset's faiss index when one is committed for these very embeddings, else None (and why not)."""
    from facelake.clip.ann import INDEX_FILE, PARAMS_FILE, load_ann
    from facelake.clip.catalog import EMBEDDINGS_SUFFIX, clip_artifact, index_asset_name
    from facelake.laion.artifacts import committed_file

    if not asset.endswith(EMBEDDINGS_SUFFIX):
        return None, None
    artifact = clip_artifact(lake, index_asset_name(asset), part)
    manifest = artifact.manifest()
    if manifest is None or manifest.extra.get("method") != "faiss":
        return None, None
    if manifest.extra.get("embeddings_content_hash") != content_hash:
        return None, f"{artifact.prefix}: the index was built for other embeddings; searching exactly"
    index = lake.read_bytes(committed_file(artifact, f"/{INDEX_FILE}"))
    return load_ann(index, lake.read_bytes(committed_file(artifact, f"/{PARAMS_FILE}"))), None


def configured_encoder(settings: FacelakeSettings) -> Any:
    """A :class:`facelake.clip.encoder.ClipEncoder` of the configured model (fails at once when its weights
    are not here, naming how to provide them)."""
    import torch

    from facelake.clip.encoder import ClipEncoder
    from facelake.clip.model import load_clip

    clip = settings.clip
    options = clip.encoder_options()
    if clip.torch_threads > 0 and options["device"] == "cpu":
        torch.set_num_threads(clip.torch_threads)
    return ClipEncoder(load_clip(clip.spec()), **options)


def search(
    settings: FacelakeSettings,
    asset: str,
    part: str | None = None,
    texts: list[str] | tuple[str, ...] = (),
    images: list[str] | tuple[str, ...] = (),
    k: int = 20,
    encoder: Any | None = None,
) -> SearchResult:
    """Search the committed embeddings ``asset[part]`` by text and/or image files with the configured model."""
    import pyarrow as pa

    from facelake.clip.foreign import embeddings_artifact, foreign_encoder
    from facelake.clip.layout import read_partition
    from facelake.clip.search import ClipSearch
    from facelake.clip.space import random_weights_warning

    if not texts and not images:
        raise ValueError("give a text query, an image query, or both")
    lake = settings.storage()
    part = resolve_part(lake, asset, part)
    artifact = embeddings_artifact(lake, asset, part)
    manifest = artifact.require_manifest()
    embeddings = read_partition(artifact)
    ann, note = _committed_index(lake, asset, part, manifest.content_hash)
    notes = [note] if note else []
    # features computed elsewhere (sfhq_clip_features) are searched with THEIR space's model
    foreign = (
        foreign_encoder(artifact, embeddings, settings.clip.encoder_options()) if encoder is None else None
    )
    if foreign is not None:
        encoder, embeddings, more = foreign
        notes += more
    encoder = encoder if encoder is not None else configured_encoder(settings)
    clip = settings.clip
    engine = ClipSearch(
        embeddings, encoder, ann=ann, exact_limit=clip.exact_search_max_rows, screen=clip.screen
    )
    tables = []
    if texts:
        tables.append(engine.text(list(texts), k))
    if images:
        data = [Path(p).read_bytes() for p in images]
        tables.append(engine.image(data, k, labels=[str(p) for p in images]))
    profile = embeddings.profile
    return SearchResult(
        asset,
        part,
        pa.concat_tables(tables),
        embeddings,
        profile.describe(),
        profile.random_init,
        random_weights_warning(profile),
        engine.method,
        notes,
    )


def hit_images(lake: Storage, result: SearchResult) -> list[Any]:
    """The image (bytes) of each hit, in order, for the datasets whose images this command can read
    (LAION-Face parts, CelebA-HQ); None (a grey tile) where they cannot be read, with a note."""
    from facelake.lake.errors import FacelakeError

    keys = result.hits.column("image_path").to_pylist()
    try:
        found = _images_of(lake, result, keys)
    except (FacelakeError, OSError) as error:
        result.notes.append(f"the hits' images could not be read ({error}): grey tiles on the sheet")
        found = {}
    else:
        if not found:
            result.notes.append(f"no images of {result.asset}[{result.part}] found for the sheet: grey tiles")
    return [found.get(key) for key in keys]


def _images_of(lake: Storage, result: SearchResult, keys: list[str]) -> dict[str, Any]:
    from facelake.clip.catalog import rows_by_shard

    data = result.embeddings
    wanted = rows_by_shard(data.parts, data.keys, result.hits.column("row").to_pylist())
    found: dict[str, Any] = {}
    if result.asset == "laion_face_clip_embeddings":
        from facelake.clip.stage import webdataset_samples
        from facelake.laion import artifacts
        from facelake.lake.webdataset_reader import part_image_shards

        shards = {s.shard_id: s for s in part_image_shards(lake, artifacts.images(lake, result.part))}
        for shard_id, names in sorted(wanted.items()):
            if shard_id in shards:
                found.update(
                    (s.key, s.image) for s in webdataset_samples(lake, shards[shard_id]) if s.key in names
                )
    elif result.asset == "celebahq_clip_embeddings":
        found = _celebahq_images(lake, set(keys))
    elif result.asset in ("sfhq_clip_features", "sfhq_clip_embeddings"):
        from facelake.clip.foreign import images_by_uri

        found = images_by_uri(lake, keys)  # image_path is the image's URI
    return found


def _celebahq_images(lake: Storage, names: set[str]) -> dict[str, bytes]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from facelake.celebahq import dataset as celebahq
    from facelake.laion.artifacts import committed_file
    from facelake.lake.tables import read_parquet

    artifact = celebahq.images_artifact(lake)
    folder = artifact.require_manifest().extra["folder"].rstrip("/")
    index = read_parquet(lake, committed_file(artifact, f"/{celebahq.INDEX_FILE}"))
    index = index.filter(pc.is_in(index.column("file_name"), value_set=pc.cast(list(names), "string")))
    found = {}
    for source in sorted(set(index.column("source_file").to_pylist())):
        mine = index.filter(pc.equal(index.column("source_file"), source))
        with lake.open(f"{folder}/{source}", "rb") as handle:
            column = pq.read_table(handle, columns=[celebahq.IMAGE_COLUMN]).column(0)
        picked = column.take(mine.column("source_row")).combine_chunks().field("bytes").to_pylist()
        found.update(zip(mine.column("file_name").to_pylist(), picked, strict=True))
    return found


def write_sheet(lake: Storage, result: SearchResult, path: str) -> str:
    """A contact sheet PNG of the hits (labelled with the random-weights warning where it applies)."""
    from facelake.clip.sheet import contact_sheet, hit_labels

    queries = sorted(set(result.hits.column("query").to_pylist()))
    title = f"{result.asset}[{result.part}]: {'; '.join(queries)}"
    png = contact_sheet(
        hit_images(lake, result), hit_labels(result.hits), title=title[:120], warning=result.warning
    )
    Path(path).write_bytes(png)
    return path


def format_table(result: SearchResult) -> str:
    """The hits as an aligned table, headed by what was searched (and the random-weights warning)."""
    from facelake.cli.tables import text_table

    rows = result.rows()
    several = len({row["query"] for row in rows}) > 1
    names = (("query",) if several else ()) + COLUMNS
    lines = [
        f"{result.asset}[{result.part}]: {len(result.embeddings):,} images, {result.space}; {result.method} search"
    ]
    if result.warning:
        lines.append(f"WARNING: {result.warning}")
    lines.extend(f"note: {note}" for note in result.notes)
    limits = {"caption": CAPTION_WIDTH, "query": CAPTION_WIDTH}
    lines += text_table(names, [[row.get(c) for c in names] for row in rows], widths=limits)
    return "\n".join(lines)


def format_json(result: SearchResult) -> str:
    hits = [{key: value for key, value in row.items() if key != "method"} for row in result.rows()]
    return json.dumps(
        {
            "asset": result.asset,
            "part": result.part,
            "images": len(result.embeddings),
            "space": result.space,
            "random_init": result.random_init,
            "warning": result.warning,
            "method": result.method,
            "notes": result.notes,
            "hits": hits,
        },
        indent=2,
    )


def run(args: argparse.Namespace) -> int:
    """Search and print the hits (and write the sheet)."""
    from facelake.cli.lake import INVALID_SETTINGS, command_settings

    if not args.query and not args.image:
        print("facelake search: error: give a text query, --image PATH, or both", file=sys.stderr)
        return USAGE_ERROR
    if args.k < 1:
        print("facelake search: error: -k must be at least 1", file=sys.stderr)
        return USAGE_ERROR
    settings = command_settings("search", args.root)
    if settings is None:
        return INVALID_SETTINGS
    texts = [args.query] if args.query else []
    result = search(settings, args.asset, args.part, texts, args.image, args.k)
    if args.sheet:
        write_sheet(settings.storage(), result, args.sheet)
        result.notes.append(f"contact sheet: {args.sheet}")
    print(format_json(result) if args.format == "json" else format_table(result))
    return 0
