"""A tiny ONNX model with ArcFace's signature and RANDOM TEST WEIGHTS (seeded): the ArcFace ONNX loader's
real path runs on it, and an end-to-end HyperFace run packs and generates in its 512-d space.

``build_test_arcface`` writes the model; ``write_random_sidecar`` labels the file so the model registry
reports ``random_init`` for it; ``expected_test_arcface`` is its output computed in numpy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

POOL = 8  # 112 / 8 = 14: the test model average-pools to [N, 3, 14, 14] then projects to 512


def build_test_arcface(
    path: Path, batch: int | str = "None", mxnet_style: bool = False
) -> dict[str, np.ndarray]:
    """A tiny ONNX model with ArcFace's signature: input 'input.1' [N,3,112,112] float32 -> [N,512].

    Random test weights (seeded). Returns them so tests can compute the expected output in numpy.
    """
    rng = np.random.default_rng(5)
    weights = {"W": rng.normal(0, 0.1, (3 * 14 * 14, 512)).astype(np.float32)}
    weights["C"] = rng.normal(0, 0.5, 512).astype(np.float32)
    nodes, first = [], "input.1"
    if mxnet_style:  # mxnet conversions normalise inside the graph: Sub then Mul first
        weights["mean"] = np.array(127.5, np.float32)
        weights["scale"] = np.array(1 / 127.5, np.float32)
        nodes += [
            helper.make_node("Sub", ["input.1", "mean"], ["centred"], name="Sub_0"),
            helper.make_node("Mul", ["centred", "scale"], ["scaled"], name="Mul_1"),
        ]
        first = "scaled"
    nodes += [
        helper.make_node(
            "AveragePool",
            [first],
            ["pooled"],
            name="AveragePool_2",
            kernel_shape=[POOL, POOL],
            strides=[POOL, POOL],
        ),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="Flatten_3"),
        helper.make_node("Gemm", ["flat", "W", "C"], ["683"], name="Gemm_4"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_arcface_random_test_weights",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [batch, 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, [batch, 512])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return weights


def expected_test_arcface(weights: dict[str, np.ndarray], faces: np.ndarray) -> np.ndarray:
    """The test model's output in numpy for RGB uint8 faces, with insightface's pre-processing."""
    blob = (faces.astype(np.float64) - 127.5) / 127.5
    pooled = blob.transpose(0, 3, 1, 2).reshape(len(faces), 3, 14, POOL, 14, POOL).mean(axis=(3, 5))
    out = pooled.reshape(len(faces), -1) @ weights["W"] + weights["C"]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def write_random_sidecar(path: Path) -> Path:
    """The registry's JSON sidecar beside ``path``: random test weights, so every output says so."""
    sidecar = Path(path).with_suffix(".json")
    sidecar.write_text(
        json.dumps({"random_init": True, "note": "tiny ArcFace-signature model, random test weights"})
    )
    return sidecar
