"""A small offline LAION-Face world in the real formats, for the demo and the end-to-end tests.

One metadata part (``part-00000-….snappy.parquet``) whose face-id rows point at an HTTP server on 127.0.0.1
that serves real face photos (skimage's astronaut, matplotlib's Grace Hopper) and varied crops of them, plus
the failure cases a real crawl meets (404, a non-image body, a slow answer, an ``X-Robots-Tag: noai`` opt-out);
a ``laion_face_ids.pth`` (32 splits), a ``sample2detect_0.pth`` with numpy-1 pickles, an opt-out blocklist
and a ``facelake.yaml`` that points the platform at all of it (with a HyperFace ``demo`` variant small enough
for a CPU).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from facelake.hyperface.settings import HyperfaceSettings
from facelake.laion.formats import META_PART_TEMPLATE
from synthetic.face_photos import FaceCrop, varied_crops
from synthetic.image_server import ImageServer
from synthetic.laion_meta import sample_ids_for, write_meta_part
from synthetic.laion_pth import save_face_ids, save_sample2detect

KINDS = ("face", "not_found", "not_image", "slow", "noai", "blocked_id", "blocked_url")


@dataclass(frozen=True)
class WorldSpec:
    """How big the world is; everything else follows deterministically from ``seed``."""

    rows: int = 240
    face_rows: int = 160
    not_found: int = 6
    not_image: int = 4
    slow: int = 2
    noai: int = 3
    blocked_id: int = 3
    blocked_url: int = 2
    slow_delay_s: float = 2.0
    seed: int = 0


@dataclass
class LaionWorld:
    """The files of the world and what a correct pipeline must make of them."""

    base: Path
    sources: Path
    config_path: Path
    kinds: dict[int, str]
    crops: dict[int, FaceCrop]
    face_ids: np.ndarray
    meta_ids: np.ndarray
    urls: dict[int, str] = field(default_factory=dict)
    server: ImageServer | None = None

    def ids_of(self, *kinds: str) -> set[int]:
        return {sid for sid, kind in self.kinds.items() if kind in kinds}

    def kind_counts(self) -> Counter:
        return Counter(self.kinds.values())


def _assign_kinds(face_ids: np.ndarray, spec: WorldSpec) -> dict[int, str]:
    rng = np.random.default_rng([spec.seed, 7])
    order = rng.permutation(face_ids)
    kinds: dict[int, str] = {}
    counts = [
        ("not_found", spec.not_found),
        ("not_image", spec.not_image),
        ("slow", spec.slow),
        ("noai", spec.noai),
        ("blocked_id", spec.blocked_id),
        ("blocked_url", spec.blocked_url),
    ]
    cursor = 0
    for kind, count in counts:
        for sid in order[cursor : cursor + count]:
            kinds[int(sid)] = kind
        cursor += count
    for sid in order[cursor:]:
        kinds[int(sid)] = "face"
    return kinds


def _path_for(sample_id: int, kind: str) -> str:
    return f"{kind}/{sample_id}.jpg"


def register_routes(server: ImageServer, world: LaionWorld, slow_delay_s: float) -> None:
    """Make ``server`` answer every URL of the world the way its kind says."""
    for sid, kind in world.kinds.items():
        path = _path_for(sid, kind)
        jpeg = world.crops[sid].jpeg
        if kind == "not_found":
            server.add_not_found(path)
        elif kind == "not_image":
            server.add_html(path)
        elif kind == "slow":
            server.add_slow(path, jpeg, slow_delay_s)
        elif kind == "noai":
            server.add_noai(path, jpeg)
        else:
            server.add_image(path, jpeg)


def build_laion_world(base: str | Path, server: ImageServer, spec: WorldSpec | None = None) -> LaionWorld:
    """Write the world's source files under ``base/sources`` and its config; register the server's routes."""
    spec = spec or WorldSpec()
    base = Path(base).absolute()
    sources = base / "sources"
    meta_ids = sample_ids_for(spec.rows, spec.seed)
    rng = np.random.default_rng([spec.seed, 3])
    face_ids = np.sort(rng.choice(meta_ids, size=spec.face_rows, replace=False))
    kinds = _assign_kinds(face_ids, spec)
    photos = ["astronaut", "grace_hopper"]
    per_photo = {p: varied_crops(p, spec.face_rows // 2 + 1, seed=spec.seed) for p in photos}
    crops = {sid: per_photo[photos[i % 2]][i // 2] for i, sid in enumerate(sorted(kinds))}
    world = LaionWorld(base, sources, base / "facelake.yaml", kinds, crops, face_ids, meta_ids, server=server)
    world.urls = {sid: server.url(_path_for(sid, kind)) for sid, kind in kinds.items()}
    register_routes(server, world, spec.slow_delay_s)

    def url_for(sample_id: int) -> str:
        return world.urls.get(int(sample_id), f"http://images.invalid/not-a-face/{sample_id}.jpg")

    write_meta_part(
        str(sources / "laion400m-meta" / META_PART_TEMPLATE.format(part=0)),
        spec.rows,
        spec.seed,
        url_for=url_for,
    )
    splits = [face_ids if i == 0 else np.zeros(0, np.int64) for i in range(32)]
    save_face_ids(str(sources / "laion_face_ids.pth"), splits, container="list")
    detections = {
        sid: [(crops[sid].box.astype(np.float32), crops[sid].landmarks.astype(np.float32), np.float32(0.99))]
        for sid in sorted(kinds)
    }
    (sources / "detection_metadata").mkdir(parents=True, exist_ok=True)
    save_sample2detect(str(sources / "detection_metadata" / "sample2detect_0.pth"), detections)
    blocked_ids = sorted(world.ids_of("blocked_id"))
    blocked_urls = [world.urls[sid] for sid in sorted(world.ids_of("blocked_url"))]
    lines = ["SAMPLE_ID,URL"] + [f"{sid}," for sid in blocked_ids] + [f",{url}" for url in blocked_urls]
    (sources / "optout.csv").write_text("\n".join(lines) + "\n")
    write_config(world, spec)
    return world


def write_config(
    world: LaionWorld, spec: WorldSpec, root: str | None = None, s3: dict | None = None, **download: object
) -> None:
    """A ``facelake.yaml`` for the world: small shards, short timeouts, the world's blocklist."""
    config = {
        "root": root or str(world.base / "lake"),
        "s3": s3 or {},
        "sources": str(world.sources),
        "laion": {"optout_uris": ["{sources}/optout.csv"]},
        "download": {
            "processes": 2,
            "threads": 16,
            "timeout": max(1, int(spec.slow_delay_s * 2)),
            "number_sample_per_shard": 50,
            "lease_ttl_s": 120.0,
            **download,
        },
        "schedule": {"subset": "20m", "max_in_flight": 2},
        "hyperface": demo_hyperface_config(),
    }
    world.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


DEMO_HYPERFACE_VARIANT = {"identities": 200, "algorithm": "full", "iterations": 100}
"""The world's ``demo`` HyperFace variant: smaller than the library's (1,000 identities, 200 full-batch
steps), which takes about a minute on a 2-core CPU; the other variants keep the library defaults."""
DEMO_HYPERFACE_SHARD_SIZE = 100


def demo_hyperface_config() -> dict:
    """The world's ``hyperface`` settings: the default variants with a small ``demo``, shards of 100."""
    variants = {
        name: variant.model_dump(exclude_defaults=True)
        for name, variant in HyperfaceSettings().variants.items()
    }
    variants["demo"] = dict(DEMO_HYPERFACE_VARIANT)
    return {"variants": variants, "shard_size": DEMO_HYPERFACE_SHARD_SIZE}
