"""nearest_neighbours / nearest_in equal brute force (float64 products of the float32 vectors; ties → smallest j)."""

from __future__ import annotations

import numpy as np
import pytest

from facelake.vectors.neighbours import nearest_in, nearest_neighbours, unit_rows

SCREENS = ("numpy-float32", "torch-float32", "torch-bfloat16")


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute(x: np.ndarray, base: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Arg-max (first = smallest index on ties) and max of the exact dots; the diagonal excluded for self."""
    gram = x.astype(np.float64) @ (x if base is None else base).astype(np.float64).T
    if base is None:
        np.fill_diagonal(gram, -np.inf)
    return gram.argmax(1), gram.max(1).astype(np.float32)


@pytest.mark.parametrize("screen", SCREENS)
@pytest.mark.parametrize(("n", "d", "block"), [(300, 8, 64), (513, 32, 100), (700, 128, 1024), (257, 3, 16)])
def test_equals_brute_force(screen: str, n: int, d: int, block: int) -> None:
    x = _unit(np.random.default_rng(n + d), n, d)
    index, cosine = _brute(x)
    got = nearest_neighbours(x, screen=screen, block=block, device="cpu")
    np.testing.assert_array_equal(got.index, index)
    np.testing.assert_array_equal(got.cosine, cosine)
    assert got.index.dtype == np.int64 and got.cosine.dtype == np.float32
    # agrees with a plain float32 numpy brute force wherever that one is unambiguous
    gram32 = x @ x.T
    np.fill_diagonal(gram32, -np.inf)
    top2 = np.sort(gram32, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-5
    np.testing.assert_array_equal(got.index[clear], gram32.argmax(1)[clear])
    np.testing.assert_allclose(got.cosine, gram32.max(1), atol=2e-6)


@pytest.mark.parametrize("screen", SCREENS)
def test_duplicates_and_ties_pick_smallest_index(screen: str) -> None:
    rng = np.random.default_rng(1)
    x = _unit(rng, 200, 16)
    x[[7, 50, 120]] = x[90]  # four identical rows: each one's neighbour is the smallest other copy
    eye = np.eye(16, dtype=np.float32)
    x[150:166] = eye  # an orthonormal set: exact ties at cosine 0 unless a random row is closer
    x[166] = eye[0]  # a copy of row 150
    index, cosine = _brute(x)
    got = nearest_neighbours(x, screen=screen, block=37, device="cpu")
    np.testing.assert_array_equal(got.index, index)
    np.testing.assert_array_equal(got.cosine, cosine)
    assert got.index[90] == 7 and got.index[7] == 50 and got.index[50] == 7
    assert got.index[150] == 166 and got.index[166] == 150 and got.cosine[150] == 1.0


def test_all_identical_rows_tie_to_smallest_other() -> None:
    x = np.tile(_unit(np.random.default_rng(2), 1, 12), (9, 1))
    got = nearest_neighbours(x, block=4, device="cpu")
    np.testing.assert_array_equal(got.index, [1, 0, 0, 0, 0, 0, 0, 0, 0])


def test_lattice_ties() -> None:
    """Points of a cube's vertices: many exactly equal cosines; smallest index wins."""
    corners = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], dtype=np.float32)
    x = unit_rows(corners)
    index, _ = _brute(x)
    got = nearest_neighbours(x, screen="torch-bfloat16", block=3, device="cpu")
    np.testing.assert_array_equal(got.index, index)


@pytest.mark.parametrize("screen", SCREENS)
def test_nearest_in_equals_brute_force(screen: str) -> None:
    rng = np.random.default_rng(3)
    queries, base = _unit(rng, 333, 24), _unit(rng, 451, 24)
    base[200] = base[10]  # tie → 10
    queries[5] = base[200]
    index, cosine = _brute(queries, base)
    got = nearest_in(queries, base, screen=screen, block=64, device="cpu")
    np.testing.assert_array_equal(got.index, index)
    np.testing.assert_array_equal(got.cosine, cosine)
    assert got.index[5] == 10


def test_unnormalised_input_is_normalised_and_bad_input_named() -> None:
    x = _unit(np.random.default_rng(4), 50, 6)
    scaled = x * np.linspace(0.5, 3.0, 50, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(nearest_neighbours(scaled).index, _brute(x)[0])
    with pytest.raises(ValueError, match="zero length"):
        nearest_neighbours(np.vstack([x, np.zeros((1, 6), np.float32)]))
    with pytest.raises(ValueError, match="NaN"):
        nearest_neighbours(np.full((3, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="2-D"):
        nearest_neighbours(np.ones(5, np.float32))
    with pytest.raises(ValueError, match="at least 2"):
        nearest_neighbours(x[:1])
    with pytest.raises(ValueError, match="dimension"):
        nearest_in(x, _unit(np.random.default_rng(5), 4, 7))
    with pytest.raises(ValueError, match="unknown Gram screen"):
        nearest_neighbours(x, screen="float16")


@pytest.mark.parametrize("screen", ["torch-float32", "torch-bfloat16"])
def test_topk_search_nearest_and_top_k(screen: str) -> None:
    import torch

    from facelake.vectors.gram import select_backend
    from facelake.vectors.neighbours import topk_search

    x = _unit(np.random.default_rng(6), 150, 8)
    x[40] = x[3]
    index, cosine = _brute(x)
    rows, cols, dots, best_index, best = topk_search(
        torch.from_numpy(x), select_backend(screen, 8, "cpu"), 32, k=5
    )
    np.testing.assert_array_equal(best_index.numpy(), index)
    np.testing.assert_array_equal(best.numpy().astype(np.float32), cosine)
    gram = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(gram, -np.inf)
    np.testing.assert_array_equal(rows.numpy(), np.repeat(np.arange(150), 5))
    np.testing.assert_allclose(dots.numpy(), gram[rows.numpy(), cols.numpy()], atol=1e-6)
    assert (cols.numpy() != rows.numpy()).all()
    if screen == "torch-float32":  # float32 screening: the k largest exactly (up to ties)
        kth = -np.sort(-gram, axis=1)[:, 4]
        assert (gram[rows.numpy(), cols.numpy()] >= np.repeat(kth, 5) - 1e-6).all()


def test_auto_screen_moves_to_float32_for_packed_points() -> None:
    import torch

    from facelake.vectors.gram import select_backend
    from facelake.vectors.neighbours import band_density, float32_backend

    rng = np.random.default_rng(7)
    spread = torch.from_numpy(_unit(rng, 400, 64))
    packed = torch.from_numpy(
        np.linalg.qr(rng.standard_normal((64, 64)))[0][:, :60].T.astype(np.float32).copy()
    )
    bf16 = select_backend("torch-bfloat16", 64, "cpu")
    assert band_density(packed, bf16) > 16  # an orthonormal set: every cosine 0 ± bfloat16's band
    assert band_density(spread, bf16) < 16
    assert float32_backend("cpu", 64).screen_dtype == torch.float32
    np.testing.assert_array_equal(nearest_neighbours(packed.numpy()).index, _brute(packed.numpy())[0])


def test_nearest_among_equals_brute_force_over_each_list_with_ties() -> None:
    import torch

    from facelake.vectors.neighbours import nearest_among

    rng = np.random.default_rng(7)
    base = _unit(rng, 50, 16)
    base[10] = base[3]  # exact duplicates: the smaller index must win
    base[11] = base[3]
    queries = _unit(rng, 40, 16)
    queries[0] = base[3]
    lists = np.stack([rng.choice(50, size=6, replace=False) for _ in range(40)])
    lists[0] = [11, 3, 10, 20, 30, 40]
    lists[1] = [10, 11, 3, 0, 1, 2]
    index, value = nearest_among(torch.from_numpy(queries), torch.from_numpy(base), torch.from_numpy(lists))
    exact = np.einsum("nd,nkd->nk", queries.astype(np.float64), base[lists].astype(np.float64))
    best = exact.max(1)
    expected = np.array([lists[i][exact[i] == best[i]].min() for i in range(40)])
    np.testing.assert_array_equal(index.numpy(), expected)
    np.testing.assert_allclose(value.numpy(), best, rtol=0, atol=1e-12)
    assert index[0] == 3
    single, single_value = nearest_among(
        torch.from_numpy(queries), torch.from_numpy(base), torch.from_numpy(lists[:, :1])
    )
    np.testing.assert_array_equal(single.numpy(), lists[:, 0])
    np.testing.assert_allclose(single_value.numpy(), exact[:, 0], rtol=0, atol=1e-12)
