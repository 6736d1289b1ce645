"""The main job on the embedded default: build the offline LAION-Face world, materialize part 00000.

``python -m dagster_project.demo`` (``make demo``): local files, a persistent SQLite Dagster instance under
``.facelake/demo/dagster_home``, images served by an HTTP server on 127.0.0.1. Afterwards ``make dev`` opens
the UI on the same instance, with the runs, partitions and metadata of this demo.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

DEMO_DIR = Path(".facelake/demo")
DEMO_PORT = 8765


def prepare_instance(home: Path) -> None:
    """A DAGSTER_HOME with the embedded (SQLite) instance config."""
    home.mkdir(parents=True, exist_ok=True)
    template = Path(__file__).resolve().parent.parent / "deploy" / "dagster.local.yaml"
    shutil.copyfile(template, home / "dagster.yaml")


def run_demo(base: Path, port: int, part: str = "00000") -> dict:
    """Build the world, serve it, materialize the inputs, one part and the report; returns a summary."""
    from facelake.synthetic.image_server import ImageServer
    from facelake.synthetic.world import build_laion_world

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
    return {"world": world, "settings": settings, "home": home, "runs": [r.run_id for r in runs]}


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
    print(f"  dagster instance : {home}")
    config = os.environ["FACELAKE_CONFIG"]
    print(f"  UI               : make dev   (or: DAGSTER_HOME={home} FACELAKE_CONFIG={config} dagster dev)")
    print("                     then open http://127.0.0.1:3000 (Assets > laion_face)")


if __name__ == "__main__":
    main()
