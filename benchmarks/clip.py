"""Benchmark: CLIP encoding, near-duplicate pairs and search (issue 12), each against a named anchor.

Every side runs in its own fresh process, alternating, ``--runs`` times (median); the time is measured inside
the child around the measured work only (models loaded, data read and indexes prepared before the clock,
their times reported separately); peak RSS is the child's own VmHWM. Inputs are built once and cached under
``--dir``. The BLAS/threading settings and the measured Gram backends are printed first.

(a) Encoding, ViT-B-32 with random weights (``pretrained=None``), 224², batch 64, on the same JPEGs:
    ``ours`` (``ClipEncoder.stream``: decode + preprocess on a thread pool, ``prefetch`` batches ahead of the
    model) vs ``loop`` (a plain open_clip loop: decode and preprocess each image of a batch, then encode the
    batch) vs ``model`` (encode of already-decoded tensors: the model-only ceiling). Prints images/s, the
    ratio ours/loop (target >= 1.0x), decode and model ms per image (from the loop), and ours as a fraction
    of the ceiling (target on a GPU: >= 0.9).
(b) Near-duplicate pairs over N×512 float16 (default 200,000; clustered, with planted pairs at the
    threshold): ``ours`` (``near_duplicate_pairs``, threshold 0.92) vs ``faiss`` exact ``range_search`` on an
    ``IndexFlatIP`` of the same vectors (float32), same pairs checked; and ours as a multiple of one
    upper-triangle N×N×d product in the screening precision ours used (``product``; target <= 2x).
(c) 100 text-like queries over N×512 float16 (default 1,000,000): exact top-10, ``exact`` (ours,
    ``ExactSearch``) vs ``faiss-flat`` (``IndexFlatIP.search``), same hits checked; ``ann`` (our IVF-Flat
    index: build time, queries/s, recall@10 against exact). Target: ann >= 10x the exact queries/s at
    recall@10 >= 0.95.

    python -m benchmarks.clip [--quick] [--runs 3] [--images 512] [--image-size 512] [--dedup-n 200000]
                              [--search-n 1000000] [--queries 100] [--cases abc] [--dir DIR]
"""

from __future__ import annotations

import argparse
import io
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
THRESHOLD = 0.92
ENCODE_SIDES = ("ours", "loop", "model")
DEDUP_SIDES = ("ours", "faiss", "product")
SEARCH_SIDES = ("exact", "faiss-flat", "ann")
MODEL = "ViT-B-32"
BATCH = 64


# --- inputs (built once, cached) ------------------------------------------------------------------------


def jpeg_folder(folder: Path, count: int, size: int) -> Path:
    """``count`` textured JPEGs of ``size``² (the same files for every side)."""
    from synthetic.clip import textured_jpegs

    path = folder / f"jpegs-{count}-{size}"
    if not (path / "done").exists():
        path.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(textured_jpegs(count, size=(size, size), seed=0, quality=90)):
            (path / f"{i:06d}.jpg").write_bytes(data)
        (path / "done").write_text("")
    return path


def dedup_vectors(folder: Path, n: int, dim: int) -> Path:
    """Clustered float16 unit rows (50 per centre, same-centre cosine ≈ 0.8) with planted pairs at 0.92."""
    from synthetic.clip import clustered_unit_vectors, planted_near_duplicates

    path = folder / f"dedup-{n}-{dim}.npy"
    if not path.exists():
        data = clustered_unit_vectors(max(1, n // 50), 50, dim, intra=0.8, seed=0)
        base = data.vectors[:n].astype(np.float16)
        planted_near_duplicates(n, dim, THRESHOLD, base=base, seed=1)
        np.save(path.with_suffix(".tmp.npy"), base)
        path.with_suffix(".tmp.npy").replace(path)
    return path


def search_vectors(folder: Path, n: int, dim: int, queries: int, gap: float) -> tuple[Path, Path]:
    """Clustered float16 rows (50 per centre, same-centre cosine ≈ 0.5), text-like queries
    (:func:`synthetic.clip.text_like_queries`) and 500 probe queries of the same model from another stream."""
    from synthetic.clip import clustered_unit_vectors, text_like_queries

    base, query = folder / f"search-{n}-{dim}.npy", folder / f"queries-{n}-{dim}-{queries}-gap{gap}.npy"
    probe = query.with_name(query.stem + "-probe.npy")
    if not (base.exists() and query.exists() and probe.exists()):
        data = clustered_unit_vectors(max(1, n // 50), 50, dim, intra=0.5, seed=0)
        if not base.exists():
            np.save(base.with_suffix(".tmp.npy"), data.vectors[:n].astype(np.float16))
            base.with_suffix(".tmp.npy").replace(base)
        np.save(probe, text_like_queries(data, 500, gap=gap, seed=2).astype(np.float16))
        np.save(query, text_like_queries(data, queries, gap=gap, seed=1).astype(np.float16))
    return base, query


# --- the sides (child processes) ----------------------------------------------------------------------


def _jpegs(folder: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted(Path(folder).glob("*.jpg"))]


def encode_side(side: str, folder: str, batch: int) -> dict[str, Any]:
    import open_clip
    import torch
    import torch.nn.functional as F
    from PIL import Image

    images = _jpegs(folder)
    if side == "ours":
        from facelake.clip.encoder import ClipEncoder, EncodeStats
        from facelake.clip.model import ClipModelSpec, load_clip

        encoder = ClipEncoder(load_clip(ClipModelSpec(MODEL)), device="cpu", batch_size=batch)
        list(encoder.stream(enumerate(images[:batch])))  # warm-up, as the other sides
        stats = EncodeStats()
        started = time.perf_counter()
        count = sum(len(b.items) for b in encoder.stream(enumerate(images), stats))
        seconds = time.perf_counter() - started
        return {
            "seconds": seconds,
            "images": count,
            "decode_seconds": stats.decode_seconds,
            "model_seconds": stats.model_seconds,
            "workers": encoder.decode_workers,
        }
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL, pretrained=None)
    model.eval()

    def decode(data: bytes) -> torch.Tensor:
        return preprocess(Image.open(io.BytesIO(data)).convert("RGB"))

    def encode(tensors: list[torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            return F.normalize(model.encode_image(torch.stack(tensors)).float(), dim=-1)

    encode([decode(d) for d in images[:batch]])  # warm-up
    decode_seconds = model_seconds = 0.0
    if side == "model":
        tensors = [decode(d) for d in images]
        started = time.perf_counter()
        for start in range(0, len(tensors), batch):
            encode(tensors[start : start + batch])
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "images": len(images), "model_seconds": seconds}
    started = time.perf_counter()
    for start in range(0, len(images), batch):
        t0 = time.perf_counter()
        tensors = [decode(d) for d in images[start : start + batch]]
        t1 = time.perf_counter()
        encode(tensors)
        decode_seconds += t1 - t0
        model_seconds += time.perf_counter() - t1
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "images": len(images),
        "decode_seconds": decode_seconds,
        "model_seconds": model_seconds,
    }


def dedup_side(side: str, data: str, screen: str, out: Path) -> dict[str, Any]:
    vectors = np.load(data)
    if side == "ours":
        from facelake.clip.dedup import near_duplicate_pairs
        from facelake.vectors.gram import select_backend

        select_backend(screen, vectors.shape[1])  # the one-off measurement, before the clock
        started = time.perf_counter()
        pairs = near_duplicate_pairs(vectors, THRESHOLD, screen=screen)
        seconds = time.perf_counter() - started
        np.save(out, np.stack([pairs.rows, pairs.cols], axis=1))
        return {"seconds": seconds, "pairs": len(pairs), "stats": pairs.stats}
    if side == "faiss":
        import faiss

        started = time.perf_counter()
        flat = vectors.astype(np.float32)
        index = faiss.IndexFlatIP(flat.shape[1])
        index.add(flat)
        prepare = time.perf_counter() - started
        started = time.perf_counter()
        limits, _, found = index.range_search(flat, THRESHOLD)
        seconds = time.perf_counter() - started
        rows = np.repeat(np.arange(len(flat)), np.diff(limits.astype(np.int64)))
        keep = rows < found
        np.save(out, np.stack([rows[keep], found[keep]], axis=1))
        return {"seconds": seconds, "prepare_seconds": prepare, "pairs": int(keep.sum())}
    import torch

    from facelake.clip.similarity import screen_copy
    from facelake.clusters.dbscan import default_block
    from facelake.vectors.gram import select_backend, strict_matmul, upper_blocks

    backend = select_backend(screen, vectors.shape[1])
    block = default_block(backend.device)
    screened = screen_copy(vectors, backend)
    with strict_matmul(), torch.inference_mode():
        backend.gram(screened[:block], screened[:block])  # warm-up (ours warmed up measuring the backends)
        started = time.perf_counter()
        for i0, i1, j0, j1 in upper_blocks(len(screened), block):
            left = screened[i0:i1]
            backend.gram(left, left if i0 == j0 else screened[j0:j1])
        return {"seconds": time.perf_counter() - started, "screen": backend.name}


def search_side(side: str, data: str, queries_path: str, k: int, out: Path) -> dict[str, Any]:
    vectors, queries = np.load(data), np.load(queries_path)
    result: dict[str, Any] = {}
    if side == "faiss-flat":
        import faiss

        started = time.perf_counter()
        index = faiss.IndexFlatIP(vectors.shape[1])
        for start in range(0, len(vectors), 1 << 16):
            index.add(vectors[start : start + (1 << 16)].astype(np.float32))
        result["prepare_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        _, found = index.search(queries.astype(np.float32), k)
        result["seconds"] = time.perf_counter() - started
    else:
        from facelake.clip.search import ExactSearch

        started = time.perf_counter()
        exact = ExactSearch(vectors)
        result["prepare_seconds"] = time.perf_counter() - started
        result["screen"] = exact.backend.name
        if side == "exact":
            exact.search(queries[:2], k)  # warm-up
            started = time.perf_counter()
            found = exact.search(queries, k).index
            result["seconds"] = time.perf_counter() - started
        else:
            from facelake.clip.ann import build_ann
            from facelake.clip.search import recall_at_k

            space = {
                "embedder_name": "open_clip:benchmark",
                "embedder_dimension": vectors.shape[1],
                "embedder_weights_sha256": "0" * 64,
                "embedder_random_init": True,
                "embedder_same_identity_cosine_distance": 0.08,
            }
            started = time.perf_counter()
            ann = build_ann(vectors, space, exact=exact, probe_queries=_probe_queries(queries_path))
            result["build_seconds"] = time.perf_counter() - started
            result["params"] = ann.params
            ann.search(vectors, queries[:2], k)  # warm-up
            started = time.perf_counter()
            found = ann.search(vectors, queries, k).index
            result["seconds"] = time.perf_counter() - started
            truth = exact.search(queries, k).index
            result["recall_at_10"] = recall_at_k(found, truth)
    np.save(out, found)
    result["queries_per_second"] = len(queries) / result["seconds"]
    return result


def _probe_queries(queries_path: str) -> np.ndarray:
    """Text-like probe queries drawn like the measured ones but from another stream (tuning never sees them)."""
    path = Path(queries_path).with_name(Path(queries_path).stem + "-probe.npy")
    return np.load(path)


# --- orchestration ------------------------------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    out = Path(args.result).with_suffix(".npy")
    if args.case == "a":
        result = encode_side(args.side, args.data, args.batch)
    elif args.case == "b":
        result = dedup_side(args.side, args.data, args.screen, out)
    else:
        result = search_side(args.side, args.data, args.queries_path, 10, out)
    result["peak_mb"] = peak_rss_mb()
    Path(args.result).write_text(json.dumps(result, default=float))


def run_child(case: str, side: str, data: Path, args: argparse.Namespace, extra: list[str] = ()) -> dict:
    result = Path(args.dir) / f"result-{case}-{side}.json"
    result.unlink(missing_ok=True)
    command = [sys.executable, "-m", "benchmarks.clip", "--case", case, "--side", side, "--data", str(data)]
    command += ["--result", str(result), "--screen", args.screen, "--batch", str(args.batch)]
    command += ["--torch-threads", str(args.torch_threads), *extra]
    started = time.perf_counter()
    if subprocess.run(command, cwd=ROOT, check=False).returncode != 0:
        raise SystemExit(f"case {case} side {side} failed")
    out = json.loads(result.read_text())
    out["wall"] = time.perf_counter() - started
    out["output"] = str(result.with_suffix(".npy"))
    return out


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def alternate(case: str, sides: tuple[str, ...], data: Path, args: argparse.Namespace, extra=()) -> dict:
    results: dict[str, list[dict]] = {side: [] for side in sides}
    for run in range(args.runs):
        for side in sides:
            result = run_child(case, side, data, args, list(extra))
            results[side].append(result)
            print(f"  run {run + 1} {side:10s} {result['seconds']:9.3f}s  peak {result['peak_mb']:7.0f} MiB")
    return results


def case_encode(args: argparse.Namespace, folder: Path) -> None:
    path = jpeg_folder(folder, args.images, args.image_size)
    print(
        f"\n== (a) encode {args.images} JPEGs of {args.image_size}², {MODEL} random weights, 224², "
        f"batch {args.batch}, CPU, median of {args.runs}"
    )
    results = alternate("a", ENCODE_SIDES, path, args)
    rate = {s: statistics.median(r["images"] / r["seconds"] for r in results[s]) for s in ENCODE_SIDES}
    loop = results["loop"]
    per = args.images
    decode_ms = 1e3 * median(loop, "decode_seconds") / per
    model_ms = 1e3 * median(loop, "model_seconds") / per
    ours = results["ours"]
    print(f"{'side':8s} {'images/s':>9s}")
    for side in ENCODE_SIDES:
        print(f"{side:8s} {rate[side]:9.1f}")
    print(
        f"loop: decode + preprocess {decode_ms:.2f} ms/img, model {model_ms:.2f} ms/img; ours: decode "
        f"{1e3 * median(ours, 'decode_seconds') / per:.2f} worker-ms/img on {ours[0]['workers']} threads, "
        f"model {1e3 * median(ours, 'model_seconds') / per:.2f} ms/img"
    )
    print(
        f"ours / loop images/s: {rate['ours'] / rate['loop']:.2f}x (target >= 1.0x); ours / model-only "
        f"ceiling: {rate['ours'] / rate['model']:.2f} (target on a GPU >= 0.9)"
    )


def case_dedup(args: argparse.Namespace, folder: Path) -> None:
    path = dedup_vectors(folder, args.dedup_n, args.dim)
    print(
        f"\n== (b) near-duplicate pairs > {THRESHOLD} over {args.dedup_n:,}×{args.dim} float16, median of {args.runs}"
    )
    results = alternate("b", DEDUP_SIDES, path, args)
    ours_pairs = {tuple(p) for p in np.load(results["ours"][-1]["output"]).tolist()}
    faiss_pairs = {tuple(p) for p in np.load(results["faiss"][-1]["output"]).tolist()}
    vectors = np.load(path)
    differ = sorted(ours_pairs ^ faiss_pairs)
    from facelake.clip.similarity import pair_similarity

    gaps = []
    if differ:
        rows, cols = np.array(differ).T
        gaps = np.abs(pair_similarity(vectors, vectors, rows, cols) - THRESHOLD).tolist()
    stats = results["ours"][-1]["stats"]
    print(
        f"pairs: ours {len(ours_pairs):,}, faiss {len(faiss_pairs):,}, differing {len(differ)}"
        + (
            f" (all within {max(gaps):.1e} of the threshold: faiss decides in float32)"
            if gaps
            else " (same pairs)"
        )
    )
    print(
        f"ours: screen {stats['screen']}, block {stats['block']}, margin {stats['margin']:.2e}, band pairs "
        f"{stats['band_pairs']:,}, knife-edge {stats['knife_edge_pairs']}; seconds "
        + ", ".join(f"{k} {v:.2f}" for k, v in stats["seconds"].items())
    )
    ours, faiss_s, product = (median(results[s], "seconds") for s in DEDUP_SIDES)
    print(
        f"{'side':8s} {'seconds':>9s}\nours     {ours:9.2f}\nfaiss    {faiss_s:9.2f}\nproduct  {product:9.2f}"
    )
    print(
        f"faiss / ours: {faiss_s / ours:.2f}x (target > 1); ours / upper-triangle product "
        f"({results['product'][-1]['screen']}): {ours / product:.2f}x (target <= 2x)"
    )


def case_search(args: argparse.Namespace, folder: Path) -> None:
    base, queries = search_vectors(folder, args.search_n, args.dim, args.queries, args.text_gap)
    print(
        f"\n== (c) {args.queries} text-like queries (text cone weight {args.text_gap}) over "
        f"{args.search_n:,}×{args.dim} float16, top-10, median of {args.runs}"
    )
    results = alternate("c", SEARCH_SIDES, base, args, ["--queries-path", str(queries)])
    exact = np.load(results["exact"][-1]["output"])
    flat = np.load(results["faiss-flat"][-1]["output"])
    from facelake.clip.search import recall_at_k

    print(f"faiss IndexFlatIP top-10 agreement with ours: {recall_at_k(flat, exact):.4f}")
    qps = {s: statistics.median(r["queries_per_second"] for r in results[s]) for s in SEARCH_SIDES}
    prep = {s: median(results[s], "prepare_seconds") for s in SEARCH_SIDES}
    print(f"{'side':11s} {'queries/s':>10s} {'prepare s':>10s}")
    for side in SEARCH_SIDES:
        print(f"{side:11s} {qps[side]:10.1f} {prep[side]:10.2f}")
    ann = results["ann"][-1]
    params = ann["params"]
    print(
        f"ann: {params['kind']} nlist {params['nlist']} nprobe {params['nprobe']} (tuned on "
        f"{params['probe_queries']} probe queries: recall@10 {params['recall_at_10']:.3f}), build "
        f"{median(results['ann'], 'build_seconds'):.1f}s; recall@10 on the measured queries "
        f"{statistics.median(r['recall_at_10'] for r in results['ann']):.3f}"
    )
    print(
        f"exact ours / faiss flat: {qps['exact'] / qps['faiss-flat']:.2f}x queries/s; ann / exact ours: "
        f"{qps['ann'] / qps['exact']:.1f}x (target >= 10x at recall@10 >= 0.95)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--dedup-n", type=int, default=200_000)
    parser.add_argument("--search-n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument(
        "--text-gap",
        type=float,
        default=0.85,
        help="weight of the shared text-cone direction in the text-like queries (0: isotropic, harsher)",
    )
    parser.add_argument("--screen", default="auto")
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="torch threads in the children (0: default)"
    )
    parser.add_argument("--cases", default="abc", help="which cases to run, e.g. 'bc'")
    parser.add_argument("--quick", action="store_true", help="small sizes: about two minutes on 2 cores")
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "facelake-bench-clip"))
    parser.add_argument("--case", choices=("a", "b", "c"), help="child mode")
    parser.add_argument("--side")
    parser.add_argument("--data")
    parser.add_argument("--queries-path")
    parser.add_argument("--result")
    args = parser.parse_args()
    if args.case:
        child(args)
        return
    if args.quick:
        args.images, args.image_size, args.batch = 64, 256, 16
        args.dedup_n, args.search_n = 20_000, 100_000
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    print_machine(args.dim, args.screen)
    if "a" in args.cases:
        case_encode(args, folder)
    if "b" in args.cases:
        case_dedup(args, folder)
    if "c" in args.cases:
        case_search(args, folder)


if __name__ == "__main__":
    main()
