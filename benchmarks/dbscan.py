"""Benchmark: dbscan_cosine against scikit-learn's DBSCAN(metric="cosine") (the anchor), and against the bare
blocked Gram product it is built on.

Data: synthetic identities on the sphere shaped like CelebA-HQ's ArcFace vectors (synthetic.identities:
1-5 samples per identity, same-identity cosine ~0.8, different ~0.25; 28k rows give ~9.3k identities), cached
as .npy. Every side runs in its own fresh process, alternating, ``--runs`` times; the time is measured inside
the child around the clustering call only (data loaded before the clock), peak RSS is the child's own VmHWM.

1. N×d (default 28,000×512): ours vs sklearn on float32 input and on float64 input. Our labels must equal
   sklearn's float64 labels (asserted); whether sklearn's float32 labels agree is reported. Targets: >= 4x
   faster than sklearn float32, >= 8x than sklearn float64.
2. Ours as a multiple of one upper-triangle N×N×d product in the screening precision ours used (the bare
   loop ``backend.gram`` over ``upper_blocks`` with the same backend and block). Target <= 2x.
3. ``--million``: ours on 1,000,000×512 (wall time and peak RSS), and sklearn float64 at 50k/100k/200k fitted
   to t = a·N² and extrapolated to 1M (``--sklearn-runs`` runs per size, default 1: they take minutes).

    python -m benchmarks.dbscan [--n 28000] [--dim 512] [--runs 3] [--million] [--quick]
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
SIDES = ("ours", "sklearn-float32", "sklearn-float64", "product")
THREAD_ENVS = ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM; ru_maxrss would include the parent's, inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_side(side: str, data: str, eps: float, min_samples: int, screen: str, block: int | None) -> dict:
    """One side, timed around the clustering (or product) call; labels are returned for the parent to compare.

    Ours measures the Gram backends (``screen=auto``) before the clock, as a long-lived process does once:
    that one-off cost is reported as ``select_seconds``.
    """
    vectors = np.load(data)
    if side == "ours":
        from facelake.clusters.dbscan import dbscan_cosine
        from facelake.vectors.gram import select_backend

        started = time.perf_counter()
        select_backend(screen, vectors.shape[1])
        select_seconds = time.perf_counter() - started
        started = time.perf_counter()
        result = dbscan_cosine(vectors, eps, min_samples, screen=screen, block=block)
        seconds = time.perf_counter() - started
        return {
            "seconds": seconds,
            "select_seconds": select_seconds,
            "labels": result.labels,
            "stats": result.stats,
        }
    if side == "product":
        return {"seconds": bare_product_seconds(vectors, screen, block)}
    from sklearn.cluster import DBSCAN

    vectors = vectors.astype(np.float32 if side == "sklearn-float32" else np.float64)
    started = time.perf_counter()
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="cosine").fit(vectors).labels_
    return {"seconds": time.perf_counter() - started, "labels": labels.astype(np.int64)}


def bare_product_seconds(vectors: np.ndarray, screen: str, block: int | None) -> float:
    """Seconds of one upper-triangle Gram product, block by block, with the backend and block ours used."""
    import torch

    from facelake.clusters.dbscan import default_block, unit_norms
    from facelake.vectors.gram import select_backend, strict_matmul, upper_blocks

    backend = select_backend(screen, vectors.shape[1])
    block = block or default_block(backend.device)
    unit = vectors / unit_norms(vectors)[:, None]
    screened = backend.prepare(unit.astype(np.float32))
    sync = backend.device.startswith("cuda")
    with strict_matmul(), torch.inference_mode():
        started = time.perf_counter()
        for i0, i1, j0, j1 in upper_blocks(len(screened), block):
            left = screened[i0:i1]
            backend.gram(left, left if i0 == j0 else screened[j0:j1])
        if sync:
            torch.cuda.synchronize()
        return time.perf_counter() - started


def child_main(args: argparse.Namespace) -> None:
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    result = run_side(args.side, args.data, args.eps, args.min_samples, args.screen, args.block)
    result["peak_mb"] = peak_rss_mb()
    labels = result.pop("labels", None)
    if labels is not None:
        np.save(Path(args.result).with_suffix(".labels.npy"), labels)
    Path(args.result).write_text(json.dumps(result, default=float))


def run_child(side: str, data: Path, args: argparse.Namespace, tag: str, screen: str | None = None) -> dict:
    """Run one side in a fresh interpreter; its own timing and peak RSS, plus the process wall time."""
    result_path = data.parent / f"{tag}-{side}.json"
    labels_path = result_path.with_suffix(".labels.npy")
    labels_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "benchmarks.dbscan", "--side", side, "--data", str(data)]
    command += ["--result", str(result_path), "--eps", str(args.eps), "--min-samples", str(args.min_samples)]
    command += ["--screen", screen or args.screen, "--torch-threads", str(args.torch_threads)]
    command += ["--block", str(args.block)] if args.block else []
    started = time.perf_counter()
    returncode = subprocess.run(command, cwd=ROOT, check=False).returncode
    wall = time.perf_counter() - started
    if returncode != 0:
        raise SystemExit(f"{side} side failed with exit code {returncode}")
    result = json.loads(result_path.read_text())
    if labels_path.exists():
        result["labels_path"] = str(labels_path)
    return {**result, "wall": wall}


def prepare(folder: Path, n: int, dim: int, seed: int) -> Path:
    """The cached synthetic identity vectors (made if absent)."""
    from synthetic.identities import synthetic_identities

    path = folder / f"identities-n{n}-d{dim}-seed{seed}.npy"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        data = synthetic_identities(n, dim, seed=seed)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, data.vectors)
        tmp.replace(path)
        print(
            f"wrote {n:,}×{dim} ({data.identities:,} identities) in {time.perf_counter() - started:.1f}s: {path}"
        )
    return path


def print_machine(dim: int, screen: str) -> None:
    """BLAS and threading settings, and the measured Gram backends (what ``auto`` chooses from)."""
    import sklearn
    import threadpoolctl
    import torch

    from facelake.vectors.gram import default_device, measured_backends, select_backend

    envs = "  ".join(f"{name}={os.environ.get(name, '(unset)')}" for name in THREAD_ENVS)
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    print(f"{envs}  cpu_count={os.cpu_count()}")
    print(
        f"numpy {np.__version__} BLAS {blas['name']} {blas.get('version', '')}  sklearn {sklearn.__version__}"
    )
    for pool in threadpoolctl.threadpool_info():
        print(
            f"  threadpool {pool['internal_api']} {pool.get('version', '')} threads={pool['num_threads']} "
            f"arch={pool.get('architecture', '?')}"
        )
    device = default_device()
    print(f"torch {torch.__version__} threads={torch.get_num_threads()} device={device}")
    table = ", ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in measured_backends(device, dim))
    print(
        f"Gram backends (2048×{dim} @ {dim}×2048): {table}; screen={screen} -> {select_backend(screen, dim).name}"
    )


def summarise(runs: list[dict]) -> dict:
    return {key: statistics.median(r[key] for r in runs) for key in ("seconds", "wall", "peak_mb")}


def compare_with_sklearn(args: argparse.Namespace, folder: Path) -> None:
    data = prepare(folder, args.n, args.dim, args.seed)
    print(
        f"\n== 1. {args.n:,}×{args.dim}, eps={args.eps}, min_samples={args.min_samples}, median of {args.runs}"
    )
    results: dict[str, list[dict]] = {side: [] for side in SIDES}
    for run in range(args.runs):
        for side in SIDES:
            screen = results["ours"][-1]["stats"]["screen"] if side == "product" else None
            result = run_child(side, data, args, f"n{args.n}", screen)
            results[side].append(result)
            print(f"  run {run + 1} {side:16s} {result['seconds']:8.2f}s  peak {result['peak_mb']:7.0f} MiB")
            if side != "product" and run == args.runs - 1:
                result["labels"] = np.load(result["labels_path"])
    ours, exact, single = (results[s][-1]["labels"] for s in ("ours", "sklearn-float64", "sklearn-float32"))
    np.testing.assert_array_equal(ours, exact, err_msg="ours differs from sklearn float64")
    clusters = int(exact.max()) + 1
    print(
        f"\nlabels identical to sklearn float64: yes ({clusters:,} clusters, {(exact == -1).sum():,} noise, "
        f"{clusters + int((exact == -1).sum()):,} identities)"
    )
    agree = np.array_equal(single, exact)
    print(f"sklearn float32 labels equal sklearn float64: {agree} ({(single != exact).sum()} points differ)")
    summary = {side: summarise(runs) for side, runs in results.items()}
    print(f"{'side':16s} {'fit s':>9s} {'process s':>10s} {'peak MiB':>9s}")
    for side in SIDES:
        s = summary[side]
        print(f"{side:16s} {s['seconds']:9.2f} {s['wall']:10.2f} {s['peak_mb']:9.0f}")
    stats = results["ours"][-1]["stats"]
    phases = ", ".join(f"{k} {v:.2f}" for k, v in stats["seconds"].items())
    select = statistics.median(r["select_seconds"] for r in results["ours"])
    print(f"ours: measuring the Gram backends (once per process, before the clock): {select:.2f}s")
    print(
        f"ours: screen {stats['screen']} on {stats['device']}, block {stats['block']}, margin {stats['margin']:.2e}, "
        f"band pairs {stats['band_pairs']:,} of {stats['pairs_screened']:,}, edges {stats['edges']:,}, "
        f"pending max {stats['pending_max']:,}; seconds: {phases}"
    )
    ours_s = summary["ours"]["seconds"]
    print(
        f"\nspeed-up vs sklearn float32: {summary['sklearn-float32']['seconds'] / ours_s:.1f}x (target >= 4x); "
        f"vs sklearn float64: {summary['sklearn-float64']['seconds'] / ours_s:.1f}x (target >= 8x)"
    )
    print(
        f"== 2. ours / one upper-triangle product ({stats['screen']}, block {stats['block']}): "
        f"{ours_s / summary['product']['seconds']:.2f}x (target <= 2x; product {summary['product']['seconds']:.2f}s)"
    )


def million(args: argparse.Namespace, folder: Path) -> None:
    ours = None if args.sklearn_only else million_ours(args, folder)
    sizes, seconds = [], []
    for n in args.sklearn_sizes:
        path = prepare(folder, n, args.dim, args.seed)
        runs = [run_child("sklearn-float64", path, args, f"n{n}") for _ in range(args.sklearn_runs)]
        s = summarise(runs)
        sizes.append(n)
        seconds.append(s["seconds"])
        print(f"  sklearn float64 at {n:,}: {s['seconds']:.1f}s, peak RSS {s['peak_mb']:,.0f} MiB")
    sizes_arr, seconds_arr = np.array(sizes, dtype=float), np.array(seconds)
    a = float((seconds_arr * sizes_arr**2).sum() / (sizes_arr**4).sum())
    predicted = a * args.million_n**2
    fit = ", ".join(f"{n:,}: {t:.1f}s (fit {a * n**2:.1f}s)" for n, t in zip(sizes, seconds, strict=True))
    print(f"  t = a·N² fit: {fit}")
    versus = "" if ours is None else f" = {predicted / ours['seconds']:.0f}x ours"
    print(
        f"  sklearn float64 extrapolated to {args.million_n:,}: {predicted:,.0f}s ({predicted / 3600:.1f} h)"
        + versus
    )


def million_ours(args: argparse.Namespace, folder: Path) -> dict:
    """Case 3, our side: one run on ``--million-n`` rows; prints wall time and peak memory."""
    data = prepare(folder, args.million_n, args.dim, args.seed)
    print(f"\n== 3. ours on {args.million_n:,}×{args.dim} (one run)")
    ours = run_child("ours", data, args, f"n{args.million_n}")
    stats = ours["stats"]
    labels = np.load(ours["labels_path"])
    print(
        f"  ours {ours['seconds']:.1f}s (process {ours['wall']:.1f}s), peak RSS {ours['peak_mb']:,.0f} MiB; "
        f"{int(labels.max()) + 1:,} clusters, {(labels == -1).sum():,} noise; screen {stats['screen']} on "
        f"{stats['device']}, band pairs {stats['band_pairs']:,}, edges {stats['edges']:,}, pending max "
        f"{stats['pending_max']:,}"
    )
    print("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in stats["seconds"].items()))
    return ours


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=28_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--eps", type=float, default=0.35)
    parser.add_argument("--min-samples", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--screen", default="auto")
    parser.add_argument("--block", type=int, default=None)
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="torch threads in the children (0: default)"
    )
    parser.add_argument("--million", action="store_true", help="also run case 3 (1M rows; long)")
    parser.add_argument("--million-n", type=int, default=1_000_000)
    parser.add_argument(
        "--sklearn-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[50_000, 100_000, 200_000]
    )
    parser.add_argument("--sklearn-runs", type=int, default=1)
    parser.add_argument("--skip-compare", action="store_true", help="skip cases 1 and 2")
    parser.add_argument(
        "--sklearn-only",
        action="store_true",
        help="case 3 without our 1M run (sklearn sizes and the fit only)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes for development")
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "facelake-bench-dbscan"))
    parser.add_argument("--side", choices=SIDES, help="child mode: run one side once and write --result")
    parser.add_argument("--data")
    parser.add_argument("--result")
    args = parser.parse_args()
    if args.side:
        child_main(args)
        return
    if args.quick:
        args.n, args.million_n, args.sklearn_sizes = 3000, 20_000, [2000, 4000, 8000]
    print_machine(args.dim, args.screen)
    folder = Path(args.dir)
    if not args.skip_compare:
        compare_with_sklearn(args, folder)
    if args.million:
        million(args, folder)


if __name__ == "__main__":
    main()
