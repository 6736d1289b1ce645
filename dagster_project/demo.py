"""The main job on the embedded default: build the offline LAION-Face world, materialize part 00000, then
CelebA-HQ identity clusters and HyperFace reference embeddings.

``python -m dagster_project.demo`` (``make demo``): local files, a persistent SQLite Dagster instance under
``.facelake/demo/dagster_home``, images served by an HTTP server on 127.0.0.1. After the LAION-Face part, a
CelebA-HQ source of two real people (``synthetic.celebahq_photos``) goes under the world's sources
and ``celebahq_identity_job`` clusters it; ``hyperface_gallery`` is built from part 00000's embeddings and
``hyperface_reference_job`` packs the ``demo`` variant. Afterwards ``make dev`` opens the UI on the same
instance, with the runs, partitions and metadata of this demo.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dagster import DagsterInstance, Definitions

    from facelake.lake.storage import Storage
    from facelake.settings import FacelakeSettings

DEMO_DIR = Path(".facelake/demo")
DEMO_PORT = 8765


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
        os.environ["DAGSTER_HOME"] = str(home)
        os.environ["FACELAKE_CONFIG"] = str(world.config_path)
        from dagster import DagsterInstance

        from dagster_project.definitions import build_definitions
        from facelake.settings import load_settings

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
    later = run_identity_and_hyperface(defs, settings, instance)
    return {
        "world": world,
        "settings": settings,
        "home": home,
        "runs": [r.run_id for r in runs],
        **later,
    }


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
    print(f"  dagster instance : {home}")
    config = os.environ["FACELAKE_CONFIG"]
    print(f"  UI               : make dev   (or: DAGSTER_HOME={home} FACELAKE_CONFIG={config} dagster dev)")
    print("                     then open http://127.0.0.1:3000 (Assets: laion_face, celebahq, hyperface)")


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


if __name__ == "__main__":
    main()
