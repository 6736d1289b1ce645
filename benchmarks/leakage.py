"""Benchmark: the leakage search (issue 15), ours vs faiss exact search, on the same vectors.

Generated: N_g float32 unit rows in identity clusters (64 per centre, same-centre cosine ≈ 0.5, as HyperFace's
images of one identity); real: N_r rows in clusters of 20 from another seed; ``--leaks`` real rows copied
into the generated set with noise (cosine 0.95–0.99: planted leaks). Both sides answer the same question, per
real set: the top-K pairs of the whole generated × real product (K = 200, the paper) and every pair with cosine
at or above the threshold (0.9).

- ``ours``: :func:`facelake.curation.pair_search.cross_pairs`, one blocked pass, screening precision measured
  (``--screen auto``) before the clock;
- ``faiss``: ``IndexFlatIP`` over the real rows (exact), ``search(generated, K)`` then the K best of all
  queries' results (the global top-K pairs are among each query's top K), and ``range_search(generated,
  threshold)``: two passes over the product, as faiss offers no global top-K.

Each side runs in its own fresh process (``--runs``, median); the parent checks that both found the same top-K
pairs and the same pairs above the threshold (differences allowed only within 1e-5 of the K-th value or of the
threshold: faiss decides in float32) and prints the times and the ratio faiss / ours (target > 1).

    python -m benchmarks.leakage [--quick] [--generated 100000] [--real 100000] [--dim 512] [--top-k 200]
                                 [--threshold 0.9] [--runs 1] [--screen auto] [--dir DIR]
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
from typing import Any

import numpy as np

from benchmarks.dbscan import peak_rss_mb, print_machine

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("ours", "faiss")
TOLERANCE = 1e-5


def vectors(folder: Path, generated: int, real: int, dim: int, leaks: int) -> tuple[Path, Path]:
    """The generated and real rows (built once, cached), with ``leaks`` planted real rows in the generated set."""
    from synthetic.clip import clustered_unit_vectors

    gen_path = folder / f"generated-{generated}-{dim}-{leaks}.npy"
    real_path = folder / f"real-{real}-{dim}.npy"
    if not (gen_path.exists() and real_path.exists()):
        gen = clustered_unit_vectors(-(-generated // 64), 64, dim, intra=0.5, seed=0).vectors[:generated]
        ref = clustered_unit_vectors(-(-real // 20), 20, dim, intra=0.5, seed=1).vectors[:real]
        rng = np.random.default_rng(2)
        targets = rng.choice(generated, leaks, replace=False)
        sources = rng.choice(real, leaks, replace=False)
        for target, source, cosine in zip(targets, sources, rng.uniform(0.95, 0.99, leaks), strict=True):
            noise = rng.standard_normal(dim)
            noise -= noise @ ref[source] * ref[source]
            noise /= np.linalg.norm(noise)
            gen[target] = cosine * ref[source] + np.sqrt(1 - cosine**2) * noise
        np.save(gen_path, gen.astype(np.float32))
        np.save(real_path, ref.astype(np.float32))
    return gen_path, real_path


def ours(gen: np.ndarray, real: np.ndarray, k: int, threshold: float, screen: str) -> dict[str, Any]:
    from facelake.curation.pair_search import cross_pairs
    from facelake.vectors.gram import select_backend

    select_backend(screen, gen.shape[1])  # the one-off measurement of the backends, before the clock
    started = time.perf_counter()
    found = cross_pairs(gen, real, top_k=k, threshold=threshold, screen=screen)
    seconds = time.perf_counter() - started
    top = np.stack([found.rows[found.top], found.cols[found.top]], 1)
    above = np.stack([found.rows[found.above], found.cols[found.above]], 1)
    return {"seconds": seconds, "top": top, "above": above, "stats": found.stats}


def faiss_side(gen: np.ndarray, real: np.ndarray, k: int, threshold: float) -> dict[str, Any]:
    import faiss

    started = time.perf_counter()
    index = faiss.IndexFlatIP(real.shape[1])
    index.add(real)
    prepare = time.perf_counter() - started
    started = time.perf_counter()
    scores, found = index.search(gen, k)
    rows = np.repeat(np.arange(len(gen)), k)
    flat_scores, flat_found = scores.reshape(-1), found.reshape(-1)
    order = np.lexsort((flat_found, rows, -flat_scores))[:k]
    top = np.stack([rows[order], flat_found[order]], 1)
    search_seconds = time.perf_counter() - started
    limits, _, hits = index.range_search(gen, threshold)
    above_rows = np.repeat(np.arange(len(gen)), np.diff(limits.astype(np.int64)))
    above = np.stack([above_rows, hits], 1)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "search_seconds": search_seconds,
        "prepare_seconds": prepare,
        "top": top,
        "above": above,
    }


def child(args: argparse.Namespace) -> None:
    gen, real = np.load(args.generated_path), np.load(args.real_path)
    if args.side == "ours":
        result = ours(gen, real, args.top_k, args.threshold, args.screen)
    else:
        result = faiss_side(gen, real, args.top_k, args.threshold)
    out = Path(args.result)
    np.save(out.with_suffix(".top.npy"), result.pop("top"))
    np.save(out.with_suffix(".above.npy"), result.pop("above"))
    result["peak_mb"] = peak_rss_mb()
    out.write_text(json.dumps(result, default=float))


def run_child(side: str, gen: Path, real: Path, args: argparse.Namespace) -> dict[str, Any]:
    result = Path(args.dir) / f"result-{side}.json"
    result.unlink(missing_ok=True)
    command = [sys.executable, "-m", "benchmarks.leakage", "--side", side, "--generated-path", str(gen)]
    command += ["--real-path", str(real), "--result", str(result), "--top-k", str(args.top_k)]
    command += ["--threshold", str(args.threshold), "--screen", args.screen]
    if subprocess.run(command, cwd=ROOT, check=False).returncode != 0:
        raise SystemExit(f"side {side} failed")
    out = json.loads(result.read_text())
    out["top"] = np.load(result.with_suffix(".top.npy"))
    out["above"] = np.load(result.with_suffix(".above.npy"))
    return out


def differing(a: np.ndarray, b: np.ndarray, gen: np.ndarray, real: np.ndarray, edge: float) -> list[float]:
    """The pairs in one set but not the other, as their distance to ``edge``; raises if one is not within
    :data:`TOLERANCE` of it (a real disagreement, not float32 rounding at the edge)."""
    left, right = {tuple(p) for p in a.tolist()}, {tuple(p) for p in b.tolist()}
    gaps = [
        abs(float(gen[i].astype(np.float64) @ real[j].astype(np.float64)) - edge) for i, j in left ^ right
    ]
    if any(gap > TOLERANCE for gap in gaps):
        raise SystemExit(f"ours and faiss disagree beyond {TOLERANCE}: {sorted(gaps)[-5:]}")
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--generated", type=int, default=100_000)
    parser.add_argument("--real", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--top-k", type=int, default=200)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--leaks", type=int, default=50)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--screen", default="auto")
    parser.add_argument("--quick", action="store_true", help="20,000 x 20,000: about a minute on 2 cores")
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "facelake-bench-leakage"))
    parser.add_argument("--side", choices=SIDES, help="child mode")
    parser.add_argument("--generated-path")
    parser.add_argument("--real-path")
    parser.add_argument("--result")
    args = parser.parse_args()
    if args.side:
        child(args)
        return
    if args.quick:
        args.generated, args.real = 20_000, 20_000
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    print_machine(args.dim, args.screen)
    gen_path, real_path = vectors(folder, args.generated, args.real, args.dim, args.leaks)
    print(
        f"generated {args.generated:,} x real {args.real:,} x {args.dim}-d float32, top-{args.top_k} pairs and "
        f"pairs >= {args.threshold}, {args.leaks} planted leaks"
    )
    results: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for run in range(args.runs):
        for side in SIDES:
            result = run_child(side, gen_path, real_path, args)
            results[side].append(result)
            print(f"  run {run + 1} {side:6s} {result['seconds']:9.2f}s  peak {result['peak_mb']:7.0f} MiB")
    gen, real = np.load(gen_path), np.load(real_path)
    last = {side: results[side][-1] for side in SIDES}
    kth = float(gen[last["ours"]["top"][-1, 0]].astype(np.float64) @ real[last["ours"]["top"][-1, 1]])
    top_gaps = differing(last["ours"]["top"], last["faiss"]["top"], gen, real, kth)
    above_gaps = differing(last["ours"]["above"], last["faiss"]["above"], gen, real, args.threshold)
    print(
        f"same results: top-{args.top_k} pairs differ in {len(top_gaps)} (K-th cosine {kth:.6f}), pairs above "
        f"{args.threshold}: ours {len(last['ours']['above']):,}, faiss {len(last['faiss']['above']):,}, "
        f"differ in {len(above_gaps)} (all within {TOLERANCE} of the edge)"
    )
    stats = last["ours"]["stats"]
    print(
        f"ours: screen {stats['screen']} on {stats['device']}, block {stats['block']}, "
        f"{stats['candidates']:,} candidates, {stats['rechecked']:,} re-scored exactly"
    )
    ours_s, faiss_s = (statistics.median(r["seconds"] for r in results[s]) for s in SIDES)
    search_s = statistics.median(r["search_seconds"] for r in results["faiss"])
    print(
        f"{'side':8s} {'seconds':>9s}\nours     {ours_s:9.2f}\nfaiss    {faiss_s:9.2f}  (search {search_s:.2f} + range_search {faiss_s - search_s:.2f})"
    )
    print(f"faiss / ours: {faiss_s / ours_s:.2f}x (target > 1)")


if __name__ == "__main__":
    main()
