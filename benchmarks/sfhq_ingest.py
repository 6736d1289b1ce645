"""Benchmark: SFHQ landmarks + segmentation statistics (``facelake.sfhq``) against a plain per-file loop.

Data: a local SFHQ-layout part of ``--files`` names (default 20,000; ``--quick`` 2,000) holding only
``landmarks/*.npz`` and ``segmentations/*.png`` (1024² mode-L maps with curved class regions, made on the
256 grid and upscaled as SFHQ's were), built from ``--distinct`` distinct faces written under many names
(``synthetic.sfhq.write_maps_only_part``), cached.

Sides, each in its own fresh process, alternating, ``--runs`` times (median reported; the time is measured
inside the child around the work, the names are loaded before the clock):

- ``ours``: ``read_landmarks`` + ``read_segmentations`` (thread pool, PIL's C histogram, masks cropped to
  each class's bounding box, landmark statistics on the stacked array);
- ``plain``: one file at a time: ``np.load`` of the npz, ``PIL.Image.open(...).convert("L")``,
  ``np.bincount(minlength=19)`` for the class areas, ``np.nonzero`` for the eye and skin centroids, column
  ``argmax`` over the whole map for the hairline; the SAME statistics (asserted equal to ours after the runs:
  every class fraction, eye centroid, hairline row and coverage, landmark box, validity and eye centre);
- ``decode``: the ceiling PNG decoding alone sets: read + decode every map (no statistics), with ours'
  threads and with one thread.

Target: ours >= 1.7x the plain loop's files/s on 2 cores.

    python -m benchmarks.sfhq_ingest [--files 20000] [--quick] [--runs 3] [--threads N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("ours", "plain", "decode", "decode-1thread")
THREAD_ENVS = ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
N_CLASSES, SKIN, L_EYE, R_EYE, HAIR = 19, 1, 4, 5, 17
LEFT_EYE, RIGHT_EYE = slice(36, 42), slice(42, 48)  # the assumed iBUG-68 groups (facelake.sfhq.settings)
COLUMNS = (
    "box",
    "valid",
    "left_eye",
    "right_eye",
    "lm_iod",
    "lm_roll",
    "fractions",
    "eyes",
    "iod",
    "roll",
    "skin_center_x",
    "hairline_y",
    "hairline_coverage",
)


# --- the sides ---------------------------------------------------------------------------------------------


def eye_line(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Inter-ocular distance and roll (degrees) of two eye centres ordered by x."""
    (lx, ly), (rx, ry) = sorted([tuple(a), tuple(b)])
    return float(np.hypot(rx - lx, ry - ly)), float(np.degrees(np.arctan2(ry - ly, rx - lx)))


def plain_side(folder: str, names: list[str], size: int = 1024) -> dict[str, np.ndarray]:
    """One file at a time, the straightforward numpy/PIL way."""
    from PIL import Image

    out: dict[str, list] = {column: [] for column in COLUMNS}
    for name in names:
        points = np.load(f"{folder}/landmarks/{name}.npz")["landmarks"].astype(np.float32)
        finite = np.isfinite(points).all(axis=1)
        inside = finite & (points >= 0).all(axis=1) & (points <= size).all(axis=1)
        kept = points[finite]
        out["box"].append([kept[:, 0].min(), kept[:, 1].min(), kept[:, 0].max(), kept[:, 1].max()])
        out["valid"].append(bool(inside.all()))
        left = points[LEFT_EYE].astype(np.float64).mean(axis=0)
        right = points[RIGHT_EYE].astype(np.float64).mean(axis=0)
        out["left_eye"].append(left)
        out["right_eye"].append(right)
        iod, roll = eye_line(left, right)
        out["lm_iod"].append(iod)
        out["lm_roll"].append(roll)

        labels = np.asarray(Image.open(f"{folder}/segmentations/{name}.png").convert("L"))
        counts = np.bincount(labels.ravel(), minlength=N_CLASSES)
        assert len(counts) == N_CLASSES, f"{name}: labels outside 0-18"
        out["fractions"].append(counts / labels.size)
        eyes = []
        for label in (L_EYE, R_EYE):
            ys, xs = np.nonzero(labels == label)
            eyes.append((xs.mean() + 0.5, ys.mean() + 0.5) if len(xs) else (np.nan, np.nan))
        out["eyes"].append(np.ravel(eyes))
        iod, roll = eye_line(np.asarray(eyes[0]), np.asarray(eyes[1]))
        out["iod"].append(iod)
        out["roll"].append(roll)
        ys, xs = np.nonzero(labels == SKIN)
        center = math.floor(xs.mean() + 0.5)
        column = labels[:, center]
        top = np.flatnonzero(column == SKIN)[0]
        out["skin_center_x"].append(center)
        out["hairline_y"].append(top if (column[:top] == HAIR).any() else -1)
        skin, hair = labels == SKIN, labels == HAIR
        has_skin = skin.any(axis=0)
        first_hair = np.where(hair.any(axis=0), hair.argmax(axis=0), labels.shape[0])
        covered = has_skin & (first_hair < skin.argmax(axis=0))
        out["hairline_coverage"].append(covered.sum() / has_skin.sum())
    return {column: np.asarray(values) for column, values in out.items()}


def ours_side(folder: str, names: list[str], threads: int | None) -> dict[str, np.ndarray]:
    from facelake.lake.storage import Storage
    from facelake.sfhq.landmarks import read_landmarks
    from facelake.sfhq.layout import SfhqPart
    from facelake.sfhq.segmentation import FRACTION_COLUMNS, read_segmentations

    part = SfhqPart(Storage(folder), folder, "1")
    landmarks = read_landmarks(part, names, threads=threads)
    maps = read_segmentations(part, names, threads=threads)
    assert not landmarks.problems.num_rows and not maps.problems.num_rows
    lm, seg = landmarks.table, maps.table

    def column(table, name, fill=np.nan):
        return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)

    box = np.asarray(lm.column("box").combine_chunks().flatten()).reshape(-1, 4)
    return {
        "box": box,
        "valid": np.asarray(lm.column("valid").to_pylist()),
        "left_eye": np.stack([column(lm, "left_eye_x"), column(lm, "left_eye_y")], axis=1),
        "right_eye": np.stack([column(lm, "right_eye_x"), column(lm, "right_eye_y")], axis=1),
        "lm_iod": column(lm, "inter_ocular"),
        "lm_roll": column(lm, "roll_deg"),
        "fractions": np.stack([column(seg, c) for c in FRACTION_COLUMNS], axis=1),
        "eyes": np.stack([column(seg, c) for c in ("l_eye_x", "l_eye_y", "r_eye_x", "r_eye_y")], axis=1),
        "iod": column(seg, "inter_ocular"),
        "roll": column(seg, "roll_deg"),
        "skin_center_x": column(seg, "skin_center_x"),
        "hairline_y": np.nan_to_num(column(seg, "hairline_y"), nan=-1),
        "hairline_coverage": column(seg, "hairline_coverage"),
    }


def decode_side(folder: str, names: list[str], threads: int) -> dict[str, np.ndarray]:
    """Read and decode every map (the statistics' lower bound), ``threads`` at a time."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def decode(name: str) -> int:
        with open(f"{folder}/segmentations/{name}.png", "rb") as handle:
            image = Image.open(handle)
            image.load()
        return image.size[0]

    if threads <= 1:
        sizes = [decode(name) for name in names]
    else:
        with ThreadPoolExecutor(threads) as pool:
            sizes = list(pool.map(decode, names, chunksize=8))
    return {"sizes": np.asarray(sizes)}


def run_side(side: str, folder: str, names_file: str, threads: int | None, out: str) -> dict:
    names = Path(names_file).read_text().split()
    started = time.perf_counter()
    if side == "ours":
        arrays = ours_side(folder, names, threads)
    elif side == "plain":
        arrays = plain_side(folder, names)
    elif side == "decode":
        from facelake.sfhq.reader import default_threads

        arrays = decode_side(folder, names, default_threads(threads))
    else:
        arrays = decode_side(folder, names, 1)
    seconds = time.perf_counter() - started
    np.savez(out, **arrays)
    return {"seconds": seconds, "files": len(names)}


# --- the parent --------------------------------------------------------------------------------------------


def prepare(folder: Path, files: int, distinct: int, seed: int) -> tuple[Path, Path]:
    from synthetic.sfhq import write_maps_only_part

    part = folder / f"files{files}-distinct{distinct}-seed{seed}"
    names_file = part / "names.txt"
    if not names_file.exists():
        started = time.perf_counter()
        names = write_maps_only_part(str(part), files, distinct, seed)
        names_file.write_text("\n".join(names))
        print(
            f"wrote {files:,} maps + npz ({distinct} distinct) in {time.perf_counter() - started:.1f}s: {part}"
        )
    return part, names_file


def run_child(side: str, part: Path, names_file: Path, threads: int | None, out: Path) -> dict:
    result_path = out.with_suffix(".json")
    command = [sys.executable, "-m", "benchmarks.sfhq_ingest", "--side", side, "--src", str(part)]
    command += ["--names", str(names_file), "--out", str(out), "--result", str(result_path)]
    if threads is not None:
        command += ["--threads", str(threads)]
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=ROOT, check=False)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"{side} side failed with exit code {completed.returncode}")
    return {**json.loads(result_path.read_text()), "wall": wall}


def check_equal(ours_path: Path, plain_path: Path) -> dict[str, float]:
    """Every statistic equal on both sides (NaN == NaN); the largest difference per column (all 0 when equal)."""
    ours, plain = np.load(ours_path), np.load(plain_path)
    differences = {}
    for column in COLUMNS:
        a, b = ours[column].astype(np.float64), plain[column].astype(np.float64)
        if column in (
            "box",
            "left_eye",
            "right_eye",
            "lm_iod",
            "lm_roll",
            "fractions",
            "eyes",
            "iod",
            "roll",
        ):
            b = b.astype(np.float32).astype(np.float64)  # ours stores float32 columns
        if column == "hairline_coverage":
            b = b.astype(np.float32).astype(np.float64)
        assert a.shape == b.shape, (column, a.shape, b.shape)
        both_nan = np.isnan(a) & np.isnan(b)
        diff = np.where(both_nan, 0.0, np.abs(a - b))
        differences[column] = float(np.nanmax(diff)) if diff.size else 0.0
        assert np.array_equal(a, b, equal_nan=True), (
            f"{column}: ours and plain differ by up to {differences[column]}"
        )
    return differences


def print_machine(threads: int | None) -> None:
    import PIL
    import threadpoolctl

    from facelake.sfhq.reader import default_threads

    envs = "  ".join(f"{name}={os.environ.get(name, '(unset)')}" for name in THREAD_ENVS)
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    print(f"{envs}  cpu_count={os.cpu_count()}  load average {os.getloadavg()[0]:.2f}")
    print(f"numpy {np.__version__} BLAS {blas['name']} {blas.get('version', '')}  Pillow {PIL.__version__}")
    for pool in threadpoolctl.threadpool_info():
        print(
            f"  threadpool {pool['internal_api']} threads={pool['num_threads']} arch={pool.get('architecture', '?')}"
        )
    print(f"ours: {default_threads(threads)} reader threads")


def benchmark(args: argparse.Namespace) -> None:
    files = 2_000 if args.quick and args.files is None else (args.files or 20_000)
    part, names_file = prepare(Path(args.dir), files, args.distinct, args.seed)
    out = part.parent / f"outputs-{files}"
    out.mkdir(exist_ok=True)
    print_machine(args.threads)
    sides = SIDES
    results: dict[str, list[dict]] = {side: [] for side in sides}
    for run in range(args.runs):
        for side in sides:
            result = run_child(side, part, names_file, args.threads, out / f"{side}.npz")
            results[side].append(result)
            rate = result["files"] / result["seconds"]
            print(f"  run {run + 1} {side:15s} {result['seconds']:8.2f}s  {rate:8.1f} files/s")
    differences = check_equal(out / "ours.npz", out / "plain.npz")
    print(
        f"\nequal statistics on both sides for {files:,} files ({len(differences)} columns, max difference 0)"
    )
    seconds = {side: statistics.median(r["seconds"] for r in runs) for side, runs in results.items()}
    rates = {side: files / s for side, s in seconds.items()}
    print(f"{'side':15s} {'median s':>10s} {'files/s':>10s}")
    for side in sides:
        print(f"{side:15s} {seconds[side]:10.2f} {rates[side]:10.1f}")
    print(
        f"\nspeed-up ours / plain: {rates['ours'] / rates['plain']:.2f}x  (target >= 1.7x on 2 cores)\n"
        f"ours at {rates['ours'] / rates['decode']:.0%} of the PNG-decoding ceiling "
        f"({rates['decode']:.1f} files/s with ours' threads, {rates['decode-1thread']:.1f} with one)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=None, help="names in the part (default 20,000)")
    parser.add_argument("--quick", action="store_true", help="2,000 files")
    parser.add_argument("--distinct", type=int, default=300, help="distinct faces the part is built from")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="ours' reader threads (default: CPU count)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "facelake-bench-sfhq"))
    parser.add_argument("--side", choices=SIDES, help="child mode: run one side once")
    parser.add_argument("--src")
    parser.add_argument("--names")
    parser.add_argument("--out")
    parser.add_argument("--result")
    args = parser.parse_args()
    if args.side:
        result = run_side(args.side, args.src, args.names, args.threads, args.out)
        Path(args.result).write_text(json.dumps(result))
    else:
        benchmark(args)


if __name__ == "__main__":
    main()
