"""Benchmark: the demo's part and faces jobs under celery (two warm workers) against the multiprocess executor.

Anchor: Dagster's multiprocess executor (one fresh process per step) on the same input, the same Postgres
instance and the same local lake. The demo world (synthetic.world's default: 240 metadata rows, 160 face rows,
images served on 127.0.0.1) is built once and its inputs are materialized once; before every measured run
the part's partitions (meta, images, detections, detected, embeddings) are deleted so each run does the
whole work. Celery: a cpu and a gpu worker (deploy/celery.yaml, one pool process each, a redis-server of
the benchmark's own); the first celery run warms the workers up and is discarded, but its first-step latency
is reported as the cold one. Every run is launched with ``dagster job execute`` (the CLI orchestrates, the
steps run on the executor), first ``laion_face_part_job`` then ``laion_face_faces_job``.

Reported per executor, from the instance's event log: total wall time of the two jobs (run start to run
end, summed), the median dispatch overhead over all steps (a step's STEP_START minus the end of its
predecessor: the last step of the same run that finished before it started, i.e. the event that let it
run), the first-step latency (the first STEP_START minus RUN_START), and the ratios celery / multiprocess.
Target: median dispatch overhead <= 1 s on warm workers.

    .venv/bin/python -m benchmarks.celery_dispatch [--repeats 1] [--base DIR] [--postgres URL]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOBS = ("laion_face_part_job", "laion_face_faces_job")
PART = "00000"
RUN_TIMEOUT_S = 900


def load_topology_script():
    spec = importlib.util.spec_from_file_location(
        "facelake_local_topology", ROOT / "deploy" / "local_topology.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class RunTiming:
    job: str
    wall_s: float
    first_step_s: float
    overheads_s: list[float] = field(default_factory=list)


def run_timing(instance, run_id: str, job: str) -> RunTiming:
    """Run wall time, first-step latency and per-step dispatch overheads from the run's event log."""
    from dagster import DagsterEventType

    record = instance.get_run_record_by_id(run_id)
    assert record.dagster_run.is_success, f"{job} {run_id}: {record.dagster_run.status}"
    run_start = None
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type == DagsterEventType.RUN_START:
            run_start = entry.timestamp
        elif event.event_type == DagsterEventType.STEP_START:
            starts[event.step_key] = entry.timestamp
        elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            ends[event.step_key] = entry.timestamp
    assert run_start is not None and starts, f"{run_id}: no RUN_START/STEP_START"
    overheads = []
    for step, start in starts.items():
        before = [end for other, end in ends.items() if other != step and end <= start]
        if before:
            overheads.append(start - max(before))
    return RunTiming(job, record.end_time - record.start_time, min(starts.values()) - run_start, overheads)


def wipe_part(lake) -> None:
    """Delete part 00000's partitions so the next run redoes everything (the inputs stay committed)."""
    from facelake.laion import artifacts

    for artifact in (
        artifacts.meta(lake, PART),
        artifacts.images(lake, PART),
        artifacts.detections(lake, PART),
        artifacts.detected(lake, PART),
        artifacts.embeddings(lake, PART),
    ):
        if lake.exists(artifact.prefix):
            lake.rm(artifact.prefix, recursive=True)


def execute(job: str, env: dict[str, str], log: Path) -> str:
    """``dagster job execute`` of ``job`` for part 00000; the run id (from the instance)."""
    command = [
        str(Path(sys.executable).parent / "dagster"),
        "job",
        "execute",
        "-m",
        "dagster_project",
        "-j",
        job,
    ]
    command += ["--tags", json.dumps({"dagster/partition": PART})]
    with log.open("ab") as handle:
        done = subprocess.run(
            command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT_S
        )
    if done.returncode != 0:
        raise RuntimeError(f"{job} exited {done.returncode}; see {log}")
    from dagster import DagsterInstance, RunsFilter

    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        runs = instance.get_runs(RunsFilter(job_name=job), limit=1)
    return runs[0].run_id


def measure(mode: str, env: dict[str, str], lake, logs: Path) -> list[RunTiming]:
    from dagster import DagsterInstance

    wipe_part(lake)
    run_env = {**env, "FACELAKE_EXECUTOR": mode}
    ids = [(job, execute(job, run_env, logs / f"{mode}.log")) for job in JOBS]
    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        return [run_timing(instance, run_id, job) for job, run_id in ids]


def summary(timings: list[list[RunTiming]]) -> dict[str, float]:
    walls = [sum(t.wall_s for t in runs) for runs in timings]
    overheads = [o for runs in timings for t in runs for o in t.overheads_s]
    firsts = [t.first_step_s for runs in timings for t in runs]
    return {
        "total_wall_s": statistics.median(walls),
        "median_dispatch_s": statistics.median(overheads),
        "max_dispatch_s": max(overheads),
        "steps": len(overheads),
        "first_step_s": statistics.median(firsts),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=1, help="measured runs per executor (alternating)")
    parser.add_argument("--base", type=Path, default=None)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("FACELAKE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    topo = load_topology_script()
    base = args.base or Path(tempfile.mkdtemp(prefix="celery_dispatch_"))
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    logs = base / "logs"
    logs.mkdir()
    print(
        f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}"
    )

    from synthetic.image_server import ImageServer
    from synthetic.world import build_laion_world

    cleanups = []
    workers = []
    try:
        redis = topo.RedisServer(base).start()
        cleanups.append(redis.stop)
        pg_url, drop = topo.create_database(args.postgres)
        cleanups.append(drop)
        server = ImageServer().__enter__()
        cleanups.append(lambda: server.__exit__(None, None, None))
        world = build_laion_world(base / "world", server)  # the demo's world
        home = base / "dagster_home"
        home.mkdir()
        shutil.copyfile(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
        env = os.environ.copy()
        for key in [k for k in env if k.startswith("FACELAKE_")]:
            del env[key]
        env.update(
            DAGSTER_HOME=str(home),
            FACELAKE_CONFIG=str(world.config_path),
            FACELAKE_DAGSTER_PG_URL=pg_url,
            FACELAKE_CELERY_BROKER=redis.url,
            FACELAKE_MODELS__CACHE_DIR=str(base / "models"),
            PYTHONPATH=str(ROOT),
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            PYTHONUNBUFFERED="1",
            NO_ALBUMENTATIONS_UPDATE="1",
            WANDB_MODE="disabled",
        )
        os.environ.update({k: env[k] for k in ("DAGSTER_HOME", "FACELAKE_CONFIG", "FACELAKE_DAGSTER_PG_URL")})
        from dagster import DagsterInstance

        with DagsterInstance.from_config(str(home)):
            pass  # create the tables before several processes race to
        inputs = [
            str(Path(sys.executable).parent / "dagster"),
            "asset",
            "materialize",
            "-m",
            "dagster_project",
        ]
        inputs += ["--select", "laion_face_ids,laion_face_optout"]
        subprocess.run(
            inputs,
            cwd=ROOT,
            env={**env, "FACELAKE_EXECUTOR": "in_process"},
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            timeout=RUN_TIMEOUT_S,
        )
        from facelake.settings import load_settings

        lake = load_settings().storage()
        token = os.urandom(3).hex()
        values = {"celery_yaml": str(ROOT / "deploy" / "celery.yaml")}
        started = time.monotonic()
        for name in ("worker-cpu", "worker-gpu"):
            command = topo.service_command(name, values, f"bench-{name}-{token}")
            command[0] = str(Path(sys.executable).parent / command[0])
            workers.append(topo.Service(name, command, env, logs / f"{name}.log").start())
        app = _celery_app(topo, redis.url)
        for worker in workers:
            node = f"bench-{worker.name}-{token}@"
            topo.wait_for(
                lambda node=node, worker=worker: (
                    worker.check_alive()
                    or any(n.startswith(node) for n in (app.control.inspect(timeout=1.0).stats() or {}))
                ),
                300,
                f"{worker.name}",
                interval_s=0.0,
            )
        print(f"workers ready in {time.monotonic() - started:.1f} s")

        warmup = measure("celery", env, lake, logs)
        cold_first = warmup[0].first_step_s
        print(
            f"warm-up celery run (discarded): part {warmup[0].wall_s:.1f} s, faces {warmup[1].wall_s:.1f} s"
        )
        results: dict[str, list[list[RunTiming]]] = {"multiprocess": [], "celery": []}
        for _ in range(args.repeats):
            for mode in ("multiprocess", "celery"):
                results[mode].append(measure(mode, env, lake, logs))
        app.close()
    finally:
        for worker in workers:
            worker.stop()
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception as error:  # keep cleaning
                print(f"cleanup: {error}")

    mp, cel = summary(results["multiprocess"]), summary(results["celery"])
    print(f"\n{'':28}{'multiprocess':>14}{'celery (warm)':>15}{'ratio':>8}")
    for key, label in (
        ("total_wall_s", "total wall, part+faces (s)"),
        ("median_dispatch_s", "median dispatch (s)"),
        ("max_dispatch_s", "max dispatch (s)"),
        ("first_step_s", "first-step latency (s)"),
    ):
        print(f"{label:28}{mp[key]:14.2f}{cel[key]:15.2f}{cel[key] / mp[key]:8.2f}")
    print(f"{'steps measured':28}{mp['steps']:14d}{cel['steps']:15d}")
    print(f"cold first-step latency (celery, first run on fresh workers): {cold_first:.2f} s")
    verdict = "meets" if cel["median_dispatch_s"] <= 1.0 else "misses"
    print(f"celery median dispatch {cel['median_dispatch_s']:.2f} s {verdict} the <= 1 s target")
    for mode, runs in results.items():
        for repeat in runs:
            for t in repeat:
                print(
                    f"  {mode:12} {t.job:22} wall {t.wall_s:6.1f} s  first {t.first_step_s:5.2f} s  "
                    f"dispatch {', '.join(f'{o:.2f}' for o in t.overheads_s)}"
                )
    return 0


def _celery_app(topo, broker: str):
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app

    from dagster_project.executors import load_celery_yaml

    config = load_celery_yaml(ROOT / "deploy" / "celery.yaml")
    return make_app(
        CeleryExecutor.for_cli(broker, broker, config_source=config.get("config_source")).app_args()
    )


if __name__ == "__main__":
    sys.exit(main())
