"""Benchmark: HyperFace's generation shard stage against a plain diffusers loop (the anchor).

Ours: ``facelake.generation.stage.commit_generated_images`` on a fresh local lake: per-image seeds and
embedding noise, batches spanning identities, JPEG + json into webdataset tars, index parquets, shard
manifests, the contact sheet and the partition manifest. Anchor: the Arc2Face README's loop, one
``StableDiffusionPipeline`` call per identity (``prompt_embeds`` from the identity prompt,
``num_images_per_prompt`` images, its own negative prompt and noise), same components, steps and guidance,
writing nothing. Components: random weights in the released layout (``synthetic.arc2face_tiny``), built once
and cached under ``--dir``; the full size is SD-1.5's (UNet2DConditionModel's SD-1.5 config, the SD VAE, a
12-layer 768-wide CLIP text encoder), ``--quick`` a small model with every SD block kind. Every side runs in
its own fresh process, alternating, ``--runs`` times (median); the clock runs around the generation only,
after loading and one warm-up batch. Wall time and the process's CPU time are both printed: on a machine
shared with other busy processes the CPU time is the steadier measure (use ``--torch-threads 1`` there, so
that no OpenMP thread spins waiting for a descheduled one).

1. Overhead: ``--identities`` identities x ``--images`` images, batch ``--batch`` (default 2 x 4, batch 4:
   both sides run the same batches). Target: ours / plain - 1 <= 5%.
2. Batching across identities: 1 image per identity, ``--batch`` identities: ours fills one batch across
   identities, the anchor makes one call per identity. Prints the gain.
3. Few-step mode (``--few-step``): ours with Arc2Face's LCM-LoRA (2 steps, guidance 1.0) beside ours at
   ``--steps``; images/s of both.
``--single-image``: the per-image time of one image (ours, batch 1), the number to quote when the full
comparison is too long for the machine.

    python -m benchmarks.generation [--quick] [--runs 3] [--size 256] [--steps 5] [--batch 4]
        [--device cpu|cuda] [--few-step] [--single-image] [--torch-threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("ours", "plain")
THREAD_ENVS = ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
VARIANT = "bench"


def components(folder: Path, preset: str) -> Path:
    """The cached random components of ``preset`` (built if absent), with the LCM-LoRA."""
    from synthetic.arc2face_tiny import build_arc2face_components

    root = folder / f"components-{preset}"
    marker = root / ".built"
    if not marker.exists():
        started = time.perf_counter()
        build_arc2face_components(root, preset=preset, lora=True, encoder_format="safetensors")  # type: ignore[arg-type]
        marker.touch()
        print(f"built {preset} components in {time.perf_counter() - started:.1f}s: {root}")
    return root


def registry(root: Path):
    from facelake.models.registry import ModelRegistry
    from synthetic.arc2face_tiny import ARC2FACE_DIR, BASE_DIR, LORA_DIR

    paths = {
        "stable-diffusion-v1-5": str(root / BASE_DIR),
        "arc2face": str(root / ARC2FACE_DIR),
        "lcm-lora-sdv1-5": str(root / LORA_DIR),
    }
    return ModelRegistry(root / "cache", paths=paths)


def reference_table(identities: int):
    """Unit 512-d identity vectors in an ArcFace-named space (random, labelled), as reference shards hold them."""
    import pyarrow as pa

    from facelake.faces.identity import EmbedderProfile, embedding_table

    vectors = np.random.default_rng(0).normal(size=(identities, 512))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    profile = EmbedderProfile("arcface_onnx", 512, "0" * 64, True, 0.35, note="benchmark: random vectors")
    columns = {
        "identity_id": pa.array([f"{VARIANT}-{i:07d}" for i in range(identities)]),
        "identity_index": pa.array(np.arange(identities, dtype=np.int64)),
        "variant": pa.array([VARIANT] * identities),
    }
    return embedding_table(vectors, profile, columns)


def run_side(args: argparse.Namespace) -> dict:
    """One side in this process: load, warm up one batch, then time the generation only."""
    import torch

    from facelake.generation.generator import Sampling, load_generator
    from facelake.generation.identities import ReferenceIdentities
    from facelake.generation.stage import GenerationOptions, commit_generated_images
    from facelake.lake.commit import PartitionArtifact
    from facelake.lake.storage import Storage

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    few_step = args.side_mode == "few-step"
    sampling = Sampling(
        steps=None if few_step else args.steps, height=args.size, width=args.size, few_step=few_step
    )
    started = time.perf_counter()
    generator = load_generator(registry(Path(args.components)), sampling, device=args.device)
    load_seconds = time.perf_counter() - started
    identities = ReferenceIdentities.from_table(reference_table(args.side_identities))
    vectors = identities.embeddings
    warm = min(args.batch, len(vectors))
    generator.generate(vectors[:warm], list(range(warm)))  # warm-up: allocations, kernels, caches
    sync = torch.cuda.synchronize if str(generator.device).startswith("cuda") else (lambda: None)
    images = args.side_identities * args.side_images
    if args.side == "ours":
        lake = Path(tempfile.mkdtemp(prefix="facelake-bench-generation-"))
        try:
            options = GenerationOptions(
                images_per_identity=args.side_images,
                beta=0.005,
                shard_identities=max(args.side_identities, 1),
                batch_size=args.batch,
            )
            artifact = PartitionArtifact(Storage(str(lake)), "hyperface", "images", VARIANT)
            sync()
            started, cpu = time.perf_counter(), time.process_time()
            result = commit_generated_images(
                artifact, identities, generator, options, code_version="bench", owner="bench"
            )
            sync()
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            assert result.outcome.manifest.rows == images
            stats = {
                **result.counter.stats(),
                "tar_bytes": sum(f.size for f in result.outcome.manifest.files),
            }
        finally:
            shutil.rmtree(lake, ignore_errors=True)
    else:
        pipeline = generator.components.pipeline
        encode = generator.components.prompt.encode
        sync()
        started, cpu = time.perf_counter(), time.process_time()
        for row in range(args.side_identities):  # Arc2Face's README: one identity per call
            prompt_embeds = encode(torch.from_numpy(vectors[row : row + 1]))
            _images = pipeline(
                prompt_embeds=prompt_embeds,
                num_inference_steps=sampling.num_steps,
                guidance_scale=sampling.guidance_scale,
                num_images_per_prompt=args.side_images,
                height=args.size,
                width=args.size,
                generator=torch.Generator().manual_seed(row),
            ).images
        sync()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        stats = {}
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "images": images,
        "load_seconds": load_seconds,
        "stats": stats,
        "device": str(generator.device),
        "dtype": str(generator.dtype),
        "describe": generator.describe(),
    }


def child_main(args: argparse.Namespace) -> None:
    Path(args.result).write_text(json.dumps(run_side(args), default=float))


def run_child(
    side: str, mode: str, identities: int, images: int, args: argparse.Namespace, root: Path
) -> dict:
    result_path = Path(args.dir) / f"result-{side}-{mode}.json"
    result_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "benchmarks.generation", "--side", side, "--side-mode", mode]
    command += ["--side-identities", str(identities), "--side-images", str(images)]
    command += ["--components", str(root), "--result", str(result_path), "--size", str(args.size)]
    command += ["--steps", str(args.steps), "--batch", str(args.batch), "--device", args.device]
    command += ["--torch-threads", str(args.torch_threads)]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "DIFFUSERS_VERBOSITY": "error",
    }
    started = time.perf_counter()
    returncode = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
    if returncode != 0:
        raise SystemExit(f"{side} ({mode}) failed with exit code {returncode}")
    return {**json.loads(result_path.read_text()), "wall": time.perf_counter() - started}


def compare(
    title: str,
    sides: list[tuple[str, str]],
    identities: int,
    images: int,
    args: argparse.Namespace,
    root: Path,
) -> dict[tuple[str, str], float]:
    """Run each (side, mode) ``--runs`` times, alternating; print and return the median seconds."""
    print(
        f"\n== {title}: {identities} identities x {images} images, batch {args.batch}, median of {args.runs}"
    )
    runs: dict[tuple[str, str], list[dict]] = {key: [] for key in sides}
    for run in range(args.runs):
        for side, mode in sides:
            result = run_child(side, mode, identities, images, args, root)
            runs[(side, mode)].append(result)
            rate = result["images"] / result["seconds"]
            print(
                f"  run {run + 1} {side:5s} {mode:8s} {result['seconds']:8.2f}s  {rate:7.3f} images/s  "
                f"CPU {result['cpu_seconds']:7.2f}s (load {result['load_seconds']:.1f}s, process {result['wall']:.1f}s)"
            )
    medians = {key: statistics.median(r["seconds"] for r in values) for key, values in runs.items()}
    cpu = {key: statistics.median(r["cpu_seconds"] for r in values) for key, values in runs.items()}
    for (side, mode), seconds in medians.items():
        print(
            f"  median {side:5s} {mode:8s} {seconds:8.2f}s  {identities * images / seconds:7.3f} images/s  "
            f"(process CPU {cpu[(side, mode)]:.2f}s)"
        )
    medians.update({(side, f"{mode}-cpu"): value for (side, mode), value in cpu.items()})
    last = runs[sides[0]][-1]
    print(f"  generator: {last['describe']}")
    return medians


def print_machine(args: argparse.Namespace, root: Path) -> None:
    import diffusers
    import torch
    import transformers

    envs = "  ".join(f"{name}={os.environ.get(name, '(unset)')}" for name in THREAD_ENVS)
    print(f"{envs}  cpu_count={os.cpu_count()}")
    print(
        f"torch {torch.__version__} threads={args.torch_threads or torch.get_num_threads()} device={args.device} "
        f"diffusers {diffusers.__version__} transformers {transformers.__version__}"
    )
    print(
        f"components: {root} ({args.preset}), {args.size}², {args.steps} steps, guidance 3.0, batch {args.batch}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--identities", type=int, default=2)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="torch threads in the children (0: default)"
    )
    parser.add_argument("--quick", action="store_true", help="small components (every SD block kind, narrow)")
    parser.add_argument("--preset", default=None, help="components preset: tiny, small, sd15")
    parser.add_argument("--few-step", action="store_true", help="also case 3: the LCM-LoRA mode")
    parser.add_argument("--single-image", action="store_true", help="only: ours on one image, batch 1")
    parser.add_argument("--skip-compare", action="store_true", help="skip cases 1 and 2")
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "facelake-bench-generation"))
    parser.add_argument("--side", choices=SIDES, help="child mode")
    parser.add_argument("--side-mode", default="default", choices=("default", "few-step"))
    parser.add_argument("--side-identities", type=int)
    parser.add_argument("--side-images", type=int)
    parser.add_argument("--components")
    parser.add_argument("--result")
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.side:
        child_main(args)
        return
    args.preset = args.preset or ("small" if args.quick else "sd15")
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    root = components(Path(args.dir), args.preset)
    print_machine(args, root)
    if args.single_image:
        seconds = compare("single image (ours, batch 1)", [("ours", "default")], 1, 1, args, root)
        per_image = seconds[("ours", "default")]
        print(
            f"  per image: {per_image:.2f}s at {args.size}², {args.steps} steps (guidance 3.0: 2 UNet passes a step)"
        )
        return
    if not args.skip_compare:
        both = [("ours", "default"), ("plain", "default")]
        first = compare("1. overhead", both, args.identities, args.images, args, root)
        ratio = first[("ours", "default")] / first[("plain", "default")]
        cpu_ratio = first[("ours", "default-cpu")] / first[("plain", "default-cpu")]
        print(
            f"  overhead ours / plain - 1 = {100 * (ratio - 1):+.1f}% wall, {100 * (cpu_ratio - 1):+.1f}% process CPU "
            "(target <= +5%)"
        )
        second = compare("2. batching across identities", both, args.batch, 1, args, root)
        gain = second[("plain", "default")] / second[("ours", "default")]
        cpu_gain = second[("plain", "default-cpu")] / second[("ours", "default-cpu")]
        print(
            f"  gain of batching {args.batch} identities per call vs one identity per call: {gain:.2f}x wall, "
            f"{cpu_gain:.2f}x process CPU"
        )
    if args.few_step:
        modes = [("ours", "default"), ("ours", "few-step")]
        third = compare(
            "3. few-step mode (LCM-LoRA, 2 steps, guidance 1.0)",
            modes,
            args.identities,
            args.images,
            args,
            root,
        )
        n = args.identities * args.images
        default, fast = n / third[("ours", "default")], n / third[("ours", "few-step")]
        print(
            f"  images/s: {args.steps}-step default {default:.3f}, few-step {fast:.3f} ({fast / default:.1f}x)"
        )


if __name__ == "__main__":
    main()
