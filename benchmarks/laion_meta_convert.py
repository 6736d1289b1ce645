"""Benchmark: filter_meta_part against the authors' convert_parquet.py method (the anchor), per part.

Builds (once, cached) a synthetic laion400m-meta part in the real schema and an id split of ~12% of its
rows (the real ratio, 50M of 400M), then runs each side in its own fresh process, alternating, ``--runs``
times. Reports the median conversion time (inside the child), the median process wall time, and each
side's peak RSS (the child's ru_maxrss from wait4), checks that both outputs hold the same rows, and prints
the ratios. Target: ours at least 5x faster and at most half the authors' peak memory.

    python -m benchmarks.laion_meta_convert [--rows 5000000] [--dir DIR] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("ours", "authors")


def convert(side: str, src: str, ids_path: str, dst: str) -> dict:
    """One side's conversion of one part (the work that is timed); ids are loaded before the clock starts."""
    ids = np.load(ids_path)
    if side == "ours":
        from facelake.laion.meta import filter_meta_part

        started = time.perf_counter()
        rows_out = filter_meta_part(src, ids, dst)["rows_out"]
    else:
        from synthetic.laion_authors_reference import authors_convert_part

        split = ids.tolist()  # the friendliest container for their set(): plain Python ints
        started = time.perf_counter()
        rows_out = authors_convert_part(src, split, dst)
    return {"seconds": time.perf_counter() - started, "rows_out": rows_out}


def prepare(folder: Path, rows: int, fraction: float, seed: int) -> tuple[Path, Path]:
    """The cached synthetic part and id split (made if absent)."""
    from synthetic.laion_meta import choose_face_ids, meta_part_name, write_meta_part

    folder = folder / f"rows{rows}-seed{seed}"
    src, ids_path = folder / meta_part_name(0), folder / f"face_ids_{fraction}.npy"
    if not src.exists():
        started = time.perf_counter()
        tmp = folder / f".{src.name}.tmp"
        write_meta_part(str(tmp), rows, seed)
        tmp.replace(src)
        print(f"wrote {rows:,} rows in {time.perf_counter() - started:.1f}s: {src}")
    if not ids_path.exists():
        import pyarrow.parquet as pq

        sample_ids = pq.read_table(src, columns=["SAMPLE_ID"])["SAMPLE_ID"].to_numpy()
        np.save(ids_path, choose_face_ids(sample_ids, fraction, seed + 1))
    return src, ids_path


def run_child(side: str, src: Path, ids_path: Path, dst: Path) -> dict:
    """Run one side in a fresh interpreter; its own timing plus wall time and peak RSS from wait4."""
    result_path = dst.with_suffix(".json")
    command = [sys.executable, "-m", "benchmarks.laion_meta_convert", "--side", side]
    command += ["--src", str(src), "--ids", str(ids_path), "--dst", str(dst), "--result", str(result_path)]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{side} side failed with exit code {process.returncode}")
    result = json.loads(result_path.read_text())
    return {**result, "wall": wall, "peak_mb": usage.ru_maxrss / 1024}


def check_same_rows(ours_path: Path, theirs_path: Path) -> int:
    """Both outputs hold the same rows in the same order (the authors' float sizes' NaN = our nulls)."""
    import pyarrow.parquet as pq

    ours, theirs = pq.read_table(ours_path), pq.read_table(theirs_path)
    assert ours.num_rows == theirs.num_rows, (ours.num_rows, theirs.num_rows)
    assert ours.schema.equals(pq.read_schema(ours_path)) and "__index_level_0__" not in ours.column_names
    for name in ours.column_names:
        if name in ("HEIGHT", "WIDTH"):
            np.testing.assert_array_equal(ours[name].to_numpy(zero_copy_only=False), theirs[name].to_numpy())
        else:
            assert ours[name].equals(theirs[name]), name
    return ours.num_rows


def benchmark(args: argparse.Namespace) -> None:
    import pandas as pd
    import polars as pl
    import pyarrow as pa

    src, ids_path = prepare(Path(args.dir), args.rows, args.fraction, args.seed)
    out = src.parent / "outputs"
    out.mkdir(exist_ok=True)
    print(
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}  cpu_count={os.cpu_count()}  "
        f"polars {pl.__version__}  pyarrow {pa.__version__}  pandas {pd.__version__}"
    )
    print(f"part: {args.rows:,} rows, {src.stat().st_size / 2**20:,.0f} MiB; ids: {len(np.load(ids_path)):,}")
    results: dict[str, list[dict]] = {side: [] for side in SIDES}
    for run in range(args.runs):
        for side in SIDES:
            result = run_child(side, src, ids_path, out / f"{side}.parquet")
            results[side].append(result)
            print(f"  run {run + 1} {side:8s} {result['seconds']:7.2f}s  peak {result['peak_mb']:7.0f} MiB")
    rows = check_same_rows(out / "ours.parquet", out / "authors.parquet")
    summary = {
        side: {key: statistics.median(r[key] for r in runs) for key in ("seconds", "wall", "peak_mb")}
        for side, runs in results.items()
    }
    print(f"\nsame rows in the same order: {rows:,} rows (median of {args.runs} runs per side)")
    print(f"{'side':10s} {'convert s':>10s} {'process s':>10s} {'peak MiB':>10s}")
    for side in SIDES:
        s = summary[side]
        print(f"{side:10s} {s['seconds']:10.2f} {s['wall']:10.2f} {s['peak_mb']:10.0f}")
    ours, theirs = summary["ours"], summary["authors"]
    print(
        f"\nspeed-up (authors / ours): convert {theirs['seconds'] / ours['seconds']:.1f}x, "
        f"process {theirs['wall'] / ours['wall']:.1f}x  (target >= 5x)"
    )
    print(
        f"peak memory: ours {ours['peak_mb']:.0f} MiB vs authors {theirs['peak_mb']:.0f} MiB = "
        f"{ours['peak_mb'] / theirs['peak_mb']:.2f} of theirs  (target <= 0.5)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--fraction", type=float, default=0.12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "facelake-bench-laion-meta"))
    parser.add_argument("--side", choices=SIDES, help="child mode: run one side once and write --result")
    parser.add_argument("--src")
    parser.add_argument("--ids")
    parser.add_argument("--dst")
    parser.add_argument("--result")
    args = parser.parse_args()
    if args.side:
        Path(args.result).write_text(json.dumps(convert(args.side, args.src, args.ids, args.dst)))
    else:
        benchmark(args)


if __name__ == "__main__":
    main()
