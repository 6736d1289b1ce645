"""Benchmark: images/s of our face asset path against a plain batch-face + dlib loop (the anchor), per part.

Input (built once, cached): an offline LAION-Face world (:mod:`synthetic.world`: varied JPEG crops
of two real face photos, served on 127.0.0.1) whose part 00000 is downloaded by the real pipeline (the
inputs and part jobs, img2dataset) into webdataset shards. Both sides read those same tars.

- ``ours``: the bodies of ``laion_face_detected`` and ``laion_face_embeddings`` without Dagster:
  ``part_image_shards`` + ``materialize_partition`` + ``run_shard_stage`` over ``detect_shard``, then the
  same over ``embed_shard`` (streaming the tars from storage, decoding, batched detection, flattening to
  tables, shard parquets + done files + manifests, then re-reading the tars to embed the detected faces).
- ``plain``: one loop over the same tars (read with ``tarfile`` inside the clock), PIL decode once per image,
  then batch-face's own ``RetinaFace`` called on each image (batch-face batches only same-size images; its
  mixed-size mode resizes everything to 640x640, so one image a call is its exact mode here), then dlib's
  shape predictor and ``compute_face_descriptor`` per face. No parquet, no storage.

Each side runs in its own fresh process, alternating, ``--runs`` times; models are loaded and warmed up on
one image before the clock on both sides. Reports median seconds and images/s for detection only (plain:
its loop minus the time in its dlib calls) and for detection + embedding, the time inside the model calls
(detector / embedder call, pre- and post-processing included), the overhead ``ours / plain - 1`` (target
<= 10%), checks that both sides found the same faces, and times the full Dagster ``laion_face_faces_job``
(``execute_in_process``) once for the same part.

On a machine shared with other busy processes, torch's default of one OpenMP thread per core stalls at every
layer's barrier and detection times swing 10x between runs; ``--torch-threads 1`` keeps them stable.

    python -m benchmarks.detect_embed [--faces 400] [--per-shard 200] [--runs 3] [--torch-threads N]
                                      [--dir DIR] [--no-dagster]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("ours", "plain")
PART = "00000"
CODE_VERSION = "benchmark"
OWNER = "benchmarks.detect_embed"
BATCH_SIZE = 32  # FaceStageConfig's defaults, as the assets run them
DECODE_THREADS = 0
INPUTS_FILE = "inputs.json"


# --- the shared input ---------------------------------------------------------------------------------


def bench_env(case: Path) -> dict[str, str]:
    """The environment of every process: the world's config, its model cache, no other FACELAKE_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACELAKE_")}
    env["FACELAKE_CONFIG"] = str(case / "world" / "facelake.yaml")
    env["FACELAKE_MODELS__CACHE_DIR"] = str(case / "models")
    return env


def prepare(folder: Path, faces: int, per_shard: int, seed: int) -> Path:
    """The cached case folder: a world whose part is downloaded, and ``inputs.json`` (made if absent)."""
    case = folder / f"faces{faces}-shard{per_shard}-seed{seed}"
    if (case / INPUTS_FILE).exists():
        return case
    shutil.rmtree(case, ignore_errors=True)  # a half-made case from an interrupted run
    from dagster import DagsterInstance

    from dagster_project.definitions import build_definitions
    from facelake.laion import artifacts
    from facelake.lake.webdataset_reader import part_image_shards
    from facelake.settings import load_settings
    from synthetic.image_server import ImageServer
    from synthetic.world import WorldSpec, build_laion_world, write_config

    started = time.perf_counter()
    spec = WorldSpec(rows=faces + faces // 5, face_rows=faces, slow=0, seed=seed)
    with ImageServer() as server:
        world = build_laion_world(case / "world", server, spec)
        write_config(world, spec, number_sample_per_shard=per_shard)
        for name in [n for n in os.environ if n.startswith("FACELAKE_")]:
            del os.environ[name]
        os.environ.update(bench_env(case))
        defs = build_definitions(load_settings())
        instance = DagsterInstance.ephemeral()
        for job in ("laion_face_inputs_job", "laion_face_part_job"):
            partition = PART if job == "laion_face_part_job" else None
            result = defs.resolve_job_def(job).execute_in_process(instance=instance, partition_key=partition)
            if not result.success:
                raise SystemExit(f"{job} failed while preparing the benchmark input")
    storage = load_settings().storage()
    shards = part_image_shards(storage, artifacts.images(storage, PART))
    inputs = {"shards": [{"tar": s.tar_uri, "keys": list(s.keys)} for s in shards]}
    (case / INPUTS_FILE).write_text(json.dumps(inputs))
    images = sum(len(s) for s in shards)
    print(
        f"downloaded {images} images into {len(shards)} shards in {time.perf_counter() - started:.0f}s: {case}"
    )
    return case


# --- the sides (child processes) ----------------------------------------------------------------------


class ModelTimer:
    """Delegates to a detector or embedder and adds up the seconds spent in one of its methods."""

    def __init__(self, model: Any, method: str) -> None:
        self._model, self._method, self.seconds = model, method, 0.0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._model, name)
        if name != self._method:
            return attribute

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return attribute(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return timed


def first_image(case: Path) -> np.ndarray:
    """The first image of the input (for warming up the models before the clock)."""
    from facelake.lake.images import decode_rgb

    shard = json.loads((case / INPUTS_FILE).read_text())["shards"][0]
    with tarfile.open(shard["tar"]) as tar:
        return decode_rgb(tar.extractfile(f"{shard['keys'][0]}.jpg").read())


def timed(work: Callable[[], Any]) -> float:
    """Seconds ``work()`` takes."""
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def run_ours(case: Path) -> dict[str, Any]:
    """The two asset bodies, in-process, over the part; model loading and warm-up before the clock."""
    import pyarrow.compute as pc

    from facelake.faces.identity import table_embeddings
    from facelake.faces.stages import detect_shard, embed_shard
    from facelake.laion import artifacts
    from facelake.lake.shard_stage import commit_shard_stage, read_stage_table
    from facelake.lake.webdataset_reader import part_image_shards
    from facelake.models.registry import ModelRegistry, detector_model
    from facelake.settings import load_settings

    settings = load_settings()
    lake, models = settings.storage(), settings.models
    registry = ModelRegistry(models.cache_dir, models.paths, models.allow_download)
    started = time.perf_counter()
    detector = registry.detector(
        models.detector_backbone, None, models.detector_max_side, models.detector_threshold
    )
    embedder = registry.embedder(models.embedder)
    load_seconds = time.perf_counter() - started
    image = first_image(case)
    embedder.embed([image], detector.detect([image])[0].boxes)
    for artifact in (artifacts.detected(lake, PART), artifacts.embeddings(lake, PART)):
        lake.rm(artifact.prefix)
    detector, embedder = ModelTimer(detector, "detect"), ModelTimer(embedder, "embed")
    source = artifacts.images(lake, PART)

    def detect_part() -> None:  # laion_face_detected's body
        source_manifest = source.require_manifest()
        shards = {s.shard_id: s for s in part_image_shards(lake, source)}
        weights = registry.describe(detector_model(models.detector_backbone))
        stage_config = {**detector.config(), "weights_sha256": weights["sha256"]}

        commit_shard_stage(
            artifacts.detected(lake, PART),
            {**stage_config, "images": source_manifest.content_hash},
            CODE_VERSION,
            OWNER,
            shards,
            lambda i: detect_shard(lake, shards[i], detector, BATCH_SIZE, DECODE_THREADS),
            stage_config,
            extra={"detector": stage_config},
        )

    def embed_part() -> None:  # laion_face_embeddings' body
        faces_artifact = artifacts.detected(lake, PART)
        faces_manifest = faces_artifact.require_manifest()
        shards = {s.shard_id: s for s in part_image_shards(lake, source)}
        faces = read_stage_table(lake, faces_artifact)
        stage_config = {**embedder.profile.provenance(), "faces": faces_manifest.content_hash}

        commit_shard_stage(
            artifacts.embeddings(lake, PART),
            stage_config,
            CODE_VERSION,
            OWNER,
            shards,
            lambda i: embed_shard(lake, shards[i], faces, embedder, BATCH_SIZE),
            stage_config,
            extra={"embedder": embedder.profile.provenance()},
        )

    detect_seconds = timed(detect_part)
    embed_seconds = timed(embed_part)
    images = sum(len(s) for s in part_image_shards(lake, source))
    table = read_stage_table(lake, artifacts.embeddings(lake, PART))
    first = table.filter(pc.equal(table["face_index"], 0))
    outputs = {
        "counts": dict(Counter(table["key"].to_pylist())),
        "keys": first["key"].to_pylist(),
        "vectors": table_embeddings(first),
    }
    return {
        "images": images,
        "faces": table.num_rows,
        "detect_seconds": detect_seconds,
        "embed_seconds": embed_seconds,
        "detect_model_seconds": detector.seconds,
        "embed_model_seconds": embedder.seconds,
        "load_seconds": load_seconds,
    } | {"outputs": outputs}


class LoadedRetinaFace:
    """Build a ``batch_face.RetinaFace`` around an already loaded network on the CPU (``gpu_id=-1``).

    batch-face's constructor loads a path with its own ``torch.load``; this sets the same five attributes it
    sets, from the network our registry's state dict was loaded into (``torch.load(weights_only=True)``).
    """

    @staticmethod
    def make(network: Any) -> Any:
        import torch
        from batch_face import RetinaFace

        detector = RetinaFace.__new__(RetinaFace)
        detector.gpu_id, detector.device, detector.model = -1, torch.device("cpu"), network.eval()
        detector.fp16, detector.return_dict = False, False
        return detector


def run_plain(case: Path) -> dict[str, Any]:
    """A plain loop: tarfile + PIL, batch-face's RetinaFace per image, dlib per face; nothing written."""
    import dlib
    from PIL import Image

    from facelake.faces.detection import build_retinaface, load_retinaface_state_dict
    from facelake.models.registry import ModelRegistry, detector_model
    from facelake.settings import load_settings

    models = load_settings().models
    registry = ModelRegistry(models.cache_dir, models.paths, models.allow_download)
    backbone, max_side, threshold = (
        models.detector_backbone,
        models.detector_max_side,
        models.detector_threshold,
    )
    started = time.perf_counter()
    network = build_retinaface(backbone)
    network.load_state_dict(load_retinaface_state_dict(registry.path(detector_model(backbone)), backbone))
    retinaface = LoadedRetinaFace.make(network)
    predictor = dlib.shape_predictor(registry.path("dlib-shape-predictor-5"))
    recognizer = dlib.face_recognition_model_v1(registry.path("dlib-resnet"))
    load_seconds = time.perf_counter() - started

    def detect(image: np.ndarray) -> list:
        resize = {"max_size": max_side} if max(image.shape[:2]) > max_side else {}
        return retinaface(image, threshold=threshold, cv=True, **resize)  # cv=True: RGB in, BGR to the net

    def embed(image: np.ndarray, box: np.ndarray) -> np.ndarray:
        shape = predictor(image, dlib.rectangle(*np.rint(box).astype(int).tolist()))
        return np.array(recognizer.compute_face_descriptor(image, shape))

    image = first_image(case)
    [embed(image, box) for box, _, _ in detect(image)]
    shards = json.loads((case / INPUTS_FILE).read_text())["shards"]
    counts: dict[str, int] = {}
    keys, vectors = [], []
    detect_model = embed_model = 0.0
    started = time.perf_counter()
    for shard in shards:
        wanted = set(shard["keys"])
        with open(shard["tar"], "rb") as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
            for member in tar:
                key, _, extension = member.name.rsplit("/", 1)[-1].partition(".")
                if extension != "jpg" or key not in wanted:
                    continue
                with Image.open(io.BytesIO(tar.extractfile(member).read())) as decoded:
                    image = np.array(decoded.convert("RGB"))
                mark = time.perf_counter()
                faces = detect(image)
                detected = time.perf_counter()
                embeddings = [embed(image, box) for box, _, _ in faces]
                embed_model += time.perf_counter() - detected
                detect_model += detected - mark
                counts[key] = len(faces)
                if embeddings:
                    keys.append(key)
                    vectors.append(embeddings[0] / np.linalg.norm(embeddings[0]))
    total = time.perf_counter() - started
    outputs = {"counts": counts, "keys": keys, "vectors": np.array(vectors, np.float32).reshape(-1, 128)}
    return {
        "images": len(counts),
        "faces": sum(counts.values()),
        "detect_seconds": total - embed_model,  # the same loop without its embedding calls
        "embed_seconds": embed_model,
        "detect_model_seconds": detect_model,
        "embed_model_seconds": embed_model,
        "load_seconds": load_seconds,
    } | {"outputs": outputs}


def run_dagster(case: Path) -> dict[str, Any]:
    """``laion_face_faces_job.execute_in_process`` for the part, in a fresh ephemeral instance."""
    from dagster import DagsterInstance

    from dagster_project.definitions import build_definitions
    from facelake.laion import artifacts
    from facelake.settings import load_settings

    settings = load_settings()
    lake = settings.storage()
    for artifact in (artifacts.detected(lake, PART), artifacts.embeddings(lake, PART)):
        lake.rm(artifact.prefix)
    job = build_definitions(settings).resolve_job_def("laion_face_faces_job")
    started = time.perf_counter()
    result = job.execute_in_process(partition_key=PART, instance=DagsterInstance.ephemeral())
    seconds = time.perf_counter() - started
    if not result.success:
        raise SystemExit("laion_face_faces_job failed")
    return {"seconds": seconds}


SIDE_RUNNERS = {"ours": run_ours, "plain": run_plain, "dagster": run_dagster}


def child(side: str, case: Path, result_path: Path, torch_threads: int) -> None:
    """Child mode: run one side once; write its numbers (json) and its outputs (npz, last run only)."""
    import torch

    if torch_threads:
        torch.set_num_threads(torch_threads)
    result = SIDE_RUNNERS[side](case)
    outputs = result.pop("outputs", None)
    if outputs is not None:
        np.savez(result_path.with_suffix(".npz"), keys=np.array(outputs["keys"]), vectors=outputs["vectors"])
        result["counts"] = {str(k): int(v) for k, v in outputs["counts"].items()}
    result["torch_threads"] = torch.get_num_threads()
    result_path.write_text(json.dumps(result))


# --- the parent -----------------------------------------------------------------------------------------


def run_child(side: str, case: Path, torch_threads: int) -> dict[str, Any]:
    """Run one side in a fresh interpreter (output to ``<side>.log``); its timings plus the process wall time."""
    result_path = case / "results" / f"{side}.json"
    result_path.parent.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "benchmarks.detect_embed", "--side", side]
    command += ["--case", str(case), "--result", str(result_path), "--torch-threads", str(torch_threads)]
    log = result_path.with_suffix(".log")
    started = time.perf_counter()
    with log.open("wb") as output:
        process = subprocess.run(command, cwd=ROOT, env=bench_env(case), stdout=output, stderr=output)
    if process.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{side} side failed with exit code {process.returncode}; {log} ends:\n{tail}")
    return json.loads(result_path.read_text()) | {"wall": time.perf_counter() - started}


def check_same_faces(case: Path, ours: dict[str, Any], plain: dict[str, Any]) -> None:
    """Both sides found the same faces (+-1% in total), per image, with the same first-face embeddings."""
    total_ours, total_plain = ours["faces"], plain["faces"]
    keys = set(ours["counts"]) | set(plain["counts"])
    same = sum(ours["counts"].get(k, 0) == plain["counts"].get(k, 0) for k in keys)
    images = plain["images"]
    a, b = (np.load(case / "results" / f"{side}.npz") for side in SIDES)
    index_b = {k: i for i, k in enumerate(b["keys"].tolist())}
    pairs = [(i, index_b[k]) for i, k in enumerate(a["keys"].tolist()) if k in index_b]
    cosine = [float(a["vectors"][i] @ b["vectors"][j]) for i, j in pairs]
    difference = abs(total_ours - total_plain) / max(total_plain, 1) * 100
    print(
        f"faces: ours {total_ours}, plain {total_plain} ({difference:.2f}% apart, target <= 1%); same count on "
        f"{same}/{images} images; first-face embeddings: median cosine {np.median(cosine):.5f}, "
        f"min {min(cosine):.5f} over {len(cosine)} images"
    )
    if ours["images"] != images or difference > 1.0:
        raise SystemExit(f"the sides disagree: {ours['images']} vs {images} images, {difference:.2f}% faces")


def benchmark(args: argparse.Namespace) -> None:
    import torch

    case = prepare(Path(args.dir), args.faces, args.per_shard, args.seed)
    print(
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}  cpu_count={os.cpu_count()}  "
        f"torch {torch.__version__} threads={args.torch_threads or torch.get_num_threads()}"
        f"{'' if args.torch_threads else ' (default)'}  "
        f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}"
    )
    results: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for run in range(args.runs):
        for side in SIDES:
            r = run_child(side, case, args.torch_threads)
            results[side].append(r)
            print(
                f"  run {run + 1} {side:6s} detect {r['detect_seconds']:6.2f}s  "
                f"+embed {r['detect_seconds'] + r['embed_seconds']:6.2f}s  "
                f"(in models {r['detect_model_seconds'] + r['embed_model_seconds']:6.2f}s, "
                f"torch threads {r['torch_threads']}, process {r['wall']:.1f}s)"
            )
    ours, plain = results["ours"][-1], results["plain"][-1]
    print(
        f"\npart {PART}: {plain['images']} images (JPEG crops, longest side 96-320 px) in "
        f"{len(json.loads((case / INPUTS_FILE).read_text())['shards'])} webdataset shards"
    )
    check_same_faces(case, ours, plain)
    summary = {side: summarise(runs) for side, runs in results.items()}
    images = plain["images"]
    print(f"\nmedian of {args.runs} runs per side   {'detection only':>28s}   {'detection + embedding':>28s}")
    print(
        f"{'side':8s} {'s':>8s} {'images/s':>9s} {'in model s':>10s}   {'s':>8s} {'images/s':>9s} "
        f"{'in models s':>11s}"
    )
    for side in SIDES:
        s = summary[side]
        print(
            f"{side:8s} {s['detect']:8.2f} {images / s['detect']:9.1f} {s['detect_model']:10.2f}   "
            f"{s['both']:8.2f} {images / s['both']:9.1f} {s['both_model']:11.2f}"
        )
    o, p = summary["ours"], summary["plain"]
    print(
        f"\noverhead (ours / plain - 1): detection {overhead(o['detect'], p['detect']):+.1f}%, "
        f"detection + embedding {overhead(o['both'], p['both']):+.1f}%  (target <= 10%)"
    )
    print(
        f"time outside the models: ours {o['both'] - o['both_model']:.2f}s, plain "
        f"{p['both'] - p['both_model']:.2f}s (detection only: ours {o['detect'] - o['detect_model']:.2f}s, "
        f"plain {p['detect'] - p['detect_model']:.2f}s); model loading: ours {o['load']:.1f}s, "
        f"plain {p['load']:.1f}s (not in the times above)"
    )
    extra = (o["both"] - o["both_model"]) - (p["both"] - p["both_model"])
    print(
        f"our pipeline's own cost (its extra time outside the model calls, over plain's total): "
        f"{extra:+.2f}s = {extra / p['both'] * 100:+.1f}%"
    )
    if not args.no_dagster:
        d = run_child("dagster", case, args.torch_threads)
        print(
            f"\nextra: Dagster laion_face_faces_job.execute_in_process for the same part: {d['seconds']:.2f}s "
            f"= {images / d['seconds']:.1f} images/s (includes model loading, the agreement check and "
            f"Dagster's step overhead; process {d['wall']:.1f}s) vs ours {o['both'] + o['load']:.2f}s "
            "for detection + embedding + model loading"
        )


def summarise(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Median seconds of one side's runs."""

    def median(value: Callable[[dict[str, Any]], float]) -> float:
        return statistics.median(value(r) for r in runs)

    return {
        "detect": median(lambda r: r["detect_seconds"]),
        "detect_model": median(lambda r: r["detect_model_seconds"]),
        "both": median(lambda r: r["detect_seconds"] + r["embed_seconds"]),
        "both_model": median(lambda r: r["detect_model_seconds"] + r["embed_model_seconds"]),
        "load": median(lambda r: r["load_seconds"]),
    }


def overhead(ours_seconds: float, plain_seconds: float) -> float:
    """``(ours / plain - 1) * 100``."""
    return (ours_seconds / plain_seconds - 1) * 100


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--faces", type=int, default=400, help="face rows of the world (most get downloaded)")
    parser.add_argument("--per-shard", type=int, default=200, help="samples per webdataset shard")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "facelake-bench-detect-embed"))
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch.set_num_threads in every child (0: torch's default, one per core); 1 keeps a shared, "
        "loaded machine from stalling torch's OpenMP barriers",
    )
    parser.add_argument("--no-dagster", action="store_true", help="skip the extra Dagster job timing")
    parser.add_argument("--side", choices=sorted(SIDE_RUNNERS), help="child mode: run one side once")
    parser.add_argument("--case")
    parser.add_argument("--result")
    args = parser.parse_args()
    if args.side:
        child(args.side, Path(args.case), Path(args.result), args.torch_threads)
    else:
        benchmark(args)


if __name__ == "__main__":
    main()
