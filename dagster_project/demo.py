"""The main job on the embedded default: build the offline LAION-Face world, materialize part 00000, then
CelebA-HQ identity clusters and HyperFace reference embeddings.

``python -m dagster_project.demo`` (``make demo``): local files, a persistent SQLite Dagster instance under
``.facelake/demo/dagster_home``, images served by an HTTP server on 127.0.0.1. After the LAION-Face part, a
CelebA-HQ source of two real people (``synthetic.celebahq_photos``) goes under the world's sources
and ``celebahq_identity_job`` clusters it; ``hyperface_gallery`` is built from part 00000's embeddings and
``hyperface_reference_job`` packs the ``demo`` variant. Last, CLIP: ``laion_face_clip_job`` embeds part 00000
(ViT-B-32's architecture with RANDOM weights, labelled as such in every output: no CLIP weights ship offline)
and builds its search index with probe contact sheets, ``clip_job`` embeds the CelebA-HQ images and removes
near-duplicates across both (with the blocking check), and a text search over part 00000 prints its hits.
Then a small SFHQ part (real faces, ``synthetic.sfhq``) goes under the world's sources and ``sfhq_part_job``
materializes part 1 (index, landmarks, segmentations, the shipped CLIP features, faces, the report).
Part 00000's face embeddings are also clustered into identities (``laion_face_identity_clusters``), so every
catalog view has rows except the generation views. HyperFace generation needs Arc2Face's weights, which do
not ship: without them the demo prints one line saying what to provide and where, and ``hyperface_images``
and the curation views stay empty (their comments say why); with them it packs, generates, aligns, audits and
exports a tiny ArcFace-space variant (:mod:`dagster_project.demo_generation`) and the SFHQ problem lists (empty on clean data); the summary lists every view
with its row count. Afterwards ``make dev`` opens the UI on the same instance, with the runs, partitions and
metadata of this demo.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dagster import DagsterInstance, Definitions

    from facelake.lake.storage import Storage
    from facelake.settings import FacelakeSettings

DEMO_DIR = Path(".facelake/demo")
DEMO_PORT = 8765
DEMO_SFHQ_IMAGES = 8
"""Images of the demo's SFHQ part (real faces, the fixture's known values)."""
DEMO_CLIP = {"model": "ViT-B-32", "pretrained": None, "batch_size": 32, "probe_k": 5}
"""The demo's ``clip`` settings: ViT-B-32's architecture with seeded random weights (no weights offline)."""
DEMO_QUERY = "a smiling old man with a beard"


def add_demo_clip_config(path: Path) -> None:
    """Add :data:`DEMO_CLIP` to the world's config file (``make dev`` then sees the same settings)."""
    import yaml

    config = yaml.safe_load(path.read_text())
    config["clip"] = dict(DEMO_CLIP)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def prepare_instance(home: Path) -> None:
    """A DAGSTER_HOME with the embedded (SQLite) instance config."""
    home.mkdir(parents=True, exist_ok=True)
    template = Path(__file__).resolve().parent.parent / "deploy" / "dagster.local.yaml"
    shutil.copyfile(template, home / "dagster.yaml")


def run_demo(base: Path, port: int, part: str = "00000") -> dict:
    """Build the world, serve it, materialize the inputs, one part and the report, then the CelebA-HQ identity
    clusters and the HyperFace demo variant; returns a summary."""
    from synthetic.image_server import ImageServer
    from synthetic.world import build_laion_world

    base = base.absolute()
    home = base / "dagster_home"
    prepare_instance(home)
    with ImageServer(port=port) as server:
        world = build_laion_world(base, server)
        add_demo_clip_config(world.config_path)
        os.environ["DAGSTER_HOME"] = str(home)
        os.environ["FACELAKE_CONFIG"] = str(world.config_path)
        from dagster import DagsterInstance

        from dagster_project.definitions import build_definitions
        from facelake.settings import load_settings

        skipped = add_generation_config(world.config_path, load_settings())
        settings = load_settings()
        defs = build_definitions(settings)
        instance = DagsterInstance.get()
        jobs = [
            "laion_face_inputs_job",
            "laion_face_part_job",
            "laion_face_faces_job",
            "laion_face_report_job",
        ]
        runs = []
        for name in jobs:
            job = defs.resolve_job_def(name)
            key = part if job.partitions_def is not None else None
            runs.append(job.execute_in_process(partition_key=key, instance=instance))
    runs.append(run_laion_clusters(defs, instance, part))
    later = run_identity_and_hyperface(defs, settings, instance)
    generation = skipped or run_generation(defs, instance)
    clip = run_clip(defs, settings, instance, part)
    sfhq = run_sfhq(defs, settings, instance)
    return {
        "world": world,
        "settings": settings,
        "home": home,
        "runs": [r.run_id for r in runs],
        **later,
        "generation": generation,
        **clip,
        **sfhq,
    }


def add_generation_config(path: Path, settings: FacelakeSettings) -> str | None:
    """With generator weights configured, add the ArcFace embedder and the tiny generation variant to the
    config file (:mod:`dagster_project.demo_generation`) and return None; else return the line saying why not."""
    import yaml

    from dagster_project.demo_generation import generation_config, merge_config

    additions, skipped = generation_config(settings)
    if additions:
        config = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump(merge_config(config, additions), sort_keys=False))
    return skipped


def run_generation(defs: Definitions, instance: DagsterInstance) -> str:
    """Pack, generate, align, audit and export the tiny ArcFace-space variant; returns its summary line."""
    import dagster

    from dagster_project.demo_generation import CURATION_ASSETS, GENERATION_VARIANT

    for selection in (["hyperface_reference_embeddings"], list(CURATION_ASSETS)):
        dagster.materialize(
            list(defs.assets or []),
            resources=defs.resources,
            instance=instance,
            partition_key=GENERATION_VARIANT,
            selection=[dagster.AssetKey(a) for a in selection],
            raise_on_error=False,
        )
    from facelake.curation.artifacts import dataset_artifact
    from facelake.generation.variant import images_artifact
    from facelake.settings import load_settings

    lake = load_settings().storage()
    images, dataset = (a(lake, GENERATION_VARIANT).manifest() for a in (images_artifact, dataset_artifact))
    generated = images.rows if images else 0
    kept = dataset.extra.get("counts", {}).get("kept", 0) if dataset else 0
    return f"variant {GENERATION_VARIANT}: {generated} images generated, {kept} kept in hyperface_dataset"


def run_laion_clusters(defs: Definitions, instance: DagsterInstance, part: str) -> Any:
    """Materialize ``laion_face_identity_clusters`` for ``part`` (DBSCAN over its face embeddings)."""
    import dagster

    return dagster.materialize(
        list(defs.assets or []),
        resources=defs.resources,
        instance=instance,
        partition_key=part,
        selection=[dagster.AssetKey("laion_face_identity_clusters")],
    )


def run_identity_and_hyperface(
    defs: Definitions, settings: FacelakeSettings, instance: DagsterInstance, variant: str = "demo"
) -> dict:
    """Write the two-people CelebA-HQ source, run ``celebahq_identity_job``, materialize ``hyperface_gallery``
    and the ``variant`` partition of ``hyperface_reference_job`` on ``instance``; returns their results."""
    import dagster

    from synthetic.celebahq_photos import write_two_people_source

    folder = settings.source_uri(settings.clustering.celebahq_uri)
    source = write_two_people_source(settings.storage(), folder, overwrite=False)
    celebahq = defs.resolve_job_def("celebahq_identity_job").execute_in_process(instance=instance)
    gallery = dagster.materialize(
        list(defs.assets or []),
        resources=defs.resources,
        instance=instance,
        selection=[dagster.AssetKey("hyperface_gallery")],
    )
    reference = defs.resolve_job_def("hyperface_reference_job").execute_in_process(
        partition_key=variant, instance=instance
    )
    [check] = reference.get_asset_check_evaluations()
    return {
        "celebahq_source": source,
        "variant": variant,
        "hyperface_check": check,
        "later_runs": [celebahq.run_id, gallery.run_id, reference.run_id],
    }


def run_clip(defs: Definitions, settings: FacelakeSettings, instance: DagsterInstance, part: str) -> dict:
    """``laion_face_clip_job`` for ``part``, ``clip_job`` (CelebA-HQ and the near-duplicates with their check),
    then a text search over the part's embeddings; returns their results."""
    from facelake.cli.search import search
    from resources.clip import ClipResource

    laion = defs.resolve_job_def("laion_face_clip_job").execute_in_process(
        partition_key=part, instance=instance
    )
    both = defs.resolve_job_def("clip_job").execute_in_process(instance=instance)
    [check] = both.get_asset_check_evaluations()
    encoder = ClipResource.from_settings(settings).encoder()  # the model the runs loaded (one per process)
    found = search(settings, "laion_face_clip_embeddings", part, [DEMO_QUERY], k=5, encoder=encoder)
    return {"clip_runs": [laion.run_id, both.run_id], "clip_check": check, "clip_search": found}


def run_sfhq(
    defs: Definitions, settings: FacelakeSettings, instance: DagsterInstance, part: str = "1"
) -> dict:
    """Write a small SFHQ part (real faces, synthetic.sfhq) under the world's sources and run ``sfhq_part_job``
    for it on ``instance``; returns the run and its checks."""
    from synthetic.sfhq import write_sfhq_part

    folder = settings.sfhq.part_uri(settings.sources, part)
    storage = settings.storage()
    if not storage.exists(f"{folder}/images"):
        write_sfhq_part(storage, folder, DEMO_SFHQ_IMAGES, part=part)
    run = defs.resolve_job_def("sfhq_part_job").execute_in_process(partition_key=part, instance=instance)
    return {"sfhq_part": part, "sfhq_run": run.run_id, "sfhq_checks": run.get_asset_check_evaluations()}


def print_sfhq(summary: dict, lake: Storage) -> None:
    """The SFHQ part's counts, features, faces and report, from the committed manifests."""
    from facelake.sfhq import artifacts as sfhq

    part = summary["sfhq_part"]
    stages = "index, landmarks, segmentations, CLIP features, faces, report"
    print(f"\nSFHQ part {part}: {stages} (run: {summary['sfhq_run']})")
    index = sfhq.artifact(lake, sfhq.INDEX, part).require_manifest().extra
    counts = index["counts"]
    print(f"  SFHQ images      : {counts['images']} in {index['folder']} ({counts['complete']} complete)")
    landmarks = sfhq.artifact(lake, sfhq.LANDMARKS, part).require_manifest()
    maps = sfhq.artifact(lake, sfhq.SEGMENTATIONS, part).require_manifest()
    print(f"  landmarks, maps  : {landmarks.rows} / {maps.rows} rows ({landmarks.extra['landmark_index']})")
    features = sfhq.artifact(lake, sfhq.CLIP_FEATURES, part).require_manifest().extra
    verified = "weights verified" if features["weights_verified"] else "space declared, weights not here"
    duplicates = features["near_duplicates"]
    print(f"  CLIP features    : {features['feature_key']} -> {features['space_label']} ({verified})")
    print(
        f"  SFHQ's claim     : {duplicates['pairs']} pairs above {duplicates['threshold']} "
        f"({'holds' if duplicates['pairs'] == 0 else 'does not hold'})"
    )
    faces = sfhq.artifact(lake, sfhq.FACE_EMBEDDINGS, part).require_manifest().extra
    print(
        f"  faces            : {faces['faces_embedded']} embedded, {faces['images_without_face']} without a face"
    )
    failed = [
        f"{c.asset_key.to_user_string()}:{c.check_name}" for c in summary["sfhq_checks"] if not c.passed
    ]
    total = len(summary["sfhq_checks"])
    failures = f": FAILED {', '.join(failed)}" if failed else ""
    print(f"  checks           : {total - len(failed)} of {total} passed{failures}")
    print(f"  SFHQ report      : {sfhq.artifact(lake, sfhq.REPORT, part).prefix} (report.html)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=DEMO_DIR, help="where the world, lake and instance go")
    parser.add_argument("--port", type=int, default=DEMO_PORT, help="port of the local image server")
    parser.add_argument("--fresh", action="store_true", help="delete the demo folder first")
    args = parser.parse_args(argv)
    if args.fresh and args.dir.exists():
        shutil.rmtree(args.dir)
    summary = run_demo(args.dir, args.port)
    from facelake.catalog import open_catalog, run_report
    from facelake.laion import artifacts

    settings, home = summary["settings"], summary["home"]
    lake = settings.storage()
    with open_catalog(lake) as conn:
        report = run_report(conn).to_pylist()
    runs = ", ".join(summary["runs"])
    print(f"\nfacelake demo: LAION-Face part 00000 materialized end to end (runs: {runs})")
    for row in report:
        print(
            "  " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        )
    detected = artifacts.detected(lake, "00000").require_manifest()
    embeddings = artifacts.embeddings(lake, "00000").require_manifest()
    print(f"  our detections   : {detected.rows} faces ({detected.extra['detector']['detector']})")
    print(
        f"  embeddings       : {embeddings.rows} x {embeddings.extra['embedder']['embedder_dimension']}-d "
        f"({embeddings.extra['embedder']['embedder_name']})"
    )
    print(f"  outputs          : {lake.uri('laion_face')}")
    print_identity_and_hyperface(summary, lake)
    print(f"  generation       : {summary['generation']}")
    print_clip(summary, lake)
    print_sfhq(summary, lake)
    print_catalog(lake)
    print(f"  dagster instance : {home}")
    config = os.environ["FACELAKE_CONFIG"]
    print(f"  UI               : make dev   (or: DAGSTER_HOME={home} FACELAKE_CONFIG={config} dagster dev)")
    print(
        "                     then open http://127.0.0.1:3000 (Assets: laion_face, celebahq, hyperface, clip)"
    )


def print_identity_and_hyperface(summary: dict, lake: Storage) -> None:
    """The CelebA-HQ clusters and the HyperFace variant, read back from their committed manifests."""
    from facelake.celebahq import dataset as celebahq
    from facelake.hyperface import references as hyperface

    runs = ", ".join(summary["later_runs"])
    print(f"\nCelebA-HQ identity clusters and HyperFace reference embeddings (runs: {runs})")
    embedded = celebahq.embeddings_artifact(lake).require_manifest().extra
    clusters = celebahq.clusters_artifact(lake).require_manifest().extra
    print(
        f"  CelebA-HQ images : {embedded['images']} in {summary['celebahq_source'].folder} "
        f"({embedded['faces_embedded']} with a face, {embedded['images_without_face']} without)"
    )
    print(
        f"  identities       : {clusters['identities']} ({clusters['dbscan_clusters']} clusters, "
        f"{clusters['singletons']} singletons), sizes {clusters['identity_size_distribution']}"
    )
    print(
        f"  eps              : {clusters['eps']} (eps_source {clusters['eps_source']}, "
        f"used {clusters['eps_used_source']}: {clusters['eps_detail']})"
    )
    print(f"  embedder         : {clusters['embedder']}")
    if clusters["random_init"]:
        print(f"  WARNING          : {hyperface.RANDOM_WEIGHTS_WARNING}")
    print(f"  clusters output  : {celebahq.clusters_artifact(lake).prefix}")
    variant = summary["variant"]
    artifact = hyperface.reference_artifact(lake, variant)
    report = artifact.require_manifest().extra
    metrics = report["metrics"]
    check = summary["hyperface_check"]
    bound = check.metadata["bound_deg"].value
    print(
        f"  HyperFace        : variant {variant}: N={report['identities']}, d={report['dimension']}, "
        f"gallery {report['gallery_rows']} faces; min angle {metrics['initial_min_angle_deg']:.2f}° -> "
        f"{metrics['min_angle_deg']:.2f}°"
    )
    print(
        f"  check            : {check.check_name} {'passed' if check.passed else 'FAILED'} "
        f"(min angle >= {bound:g}°)"
    )
    print(f"  packing space    : {report['embedder']}")
    if report["embedder_random_init"]:
        print(f"  WARNING          : {hyperface.RANDOM_WEIGHTS_WARNING}")
    shards = hyperface.reference_shard_ids(artifact)
    print(f"  HyperFace output : {artifact.prefix} ({len(shards)} identity shards)")


def print_clip(summary: dict, lake: Storage) -> None:
    """The CLIP embeddings, index, near-duplicates and the search, from their manifests and the search result."""
    from facelake.clip.catalog import clip_artifact

    runs = ", ".join(summary["clip_runs"])
    print(f"\nCLIP embeddings, search index, near-duplicates and a text search (runs: {runs})")
    laion = clip_artifact(lake, "laion_face_clip_embeddings", "00000").require_manifest().extra
    celebahq = clip_artifact(lake, "celebahq_clip_embeddings").require_manifest().extra
    index = clip_artifact(lake, "laion_face_clip_index", "00000").require_manifest().extra
    near = clip_artifact(lake, "clip_near_duplicates").require_manifest().extra
    print(f"  CLIP model       : {laion['space_label']}")
    if laion["warning"]:
        print(f"  WARNING          : {laion['warning']}")
    print(
        f"  LAION embeddings : {laion['images']} images of laion_face_clip_embeddings[00000], "
        f"{laion['images_per_second']:.1f} images/s on {laion['device']}"
    )
    print(f"  CelebA-HQ        : {celebahq['images']} images of celebahq_clip_embeddings")
    print(
        f"  search index     : {index['method']}: {index['reason']}; {len(index['probe_prompts'])} probe sheets"
    )
    print(
        f"  near-duplicates  : similarity > {near['threshold']}: {near['pairs']} pairs in {near['groups']} groups; "
        f"kept {near['kept']} of {near['images']} images"
    )
    check = summary["clip_check"]
    print(f"  check            : {check.check_name} {'passed' if check.passed else 'FAILED'}")
    found = summary["clip_search"]
    print(f'  search           : "{DEMO_QUERY}" ({found.method}, top {found.hits.num_rows}):')
    for row in found.rows():
        caption = " ".join(str(row["caption"] or "").split())[:50]
        print(f"    #{row['rank']} {row['score']:.4f} {row['image_path']}  {caption}  {row['url']}")
    print(f"  CLIP outputs     : {lake.uri('clip')}")


def print_catalog(lake: Storage) -> None:
    """Every view of the catalog with its row count; an empty one with its comment (what it holds, and why
    it may be empty: the generation views without generator weights)."""
    from facelake.catalog import describe, open_catalog

    with open_catalog(lake) as conn:
        views = [row for row in describe(conn).to_pylist() if row["kind"] == "view"]
    print(
        f'\nCatalog: {len(views)} views over the committed tables (facelake sql --views, facelake sql "SELECT ...")'
    )
    width = max(len(row["name"]) for row in views)
    for row in views:
        why = f"  -- {row['comment']}" if row["rows"] == 0 and row["comment"] else ""
        print(f"  {row['name']:<{width}} {row['rows']:>8,} rows{why}")


if __name__ == "__main__":
    main()
