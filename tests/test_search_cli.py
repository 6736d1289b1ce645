"""``facelake search`` as the installed console script, on a small CLIP lake committed with the engine's own
protocol (local disk and the local S3 server): the planted top hit of a text query and of an image query, a
contact sheet, JSON, the random-weights label, and clear failures for another space and for missing weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facelake.clip.catalog import clip_artifact
from facelake.clip.encoder import ClipEncoder
from facelake.clip.layout import SPACE_FILE, metadata_table, space_record, write_part
from facelake.clip.model import ClipModelSpec, load_clip, save_local_dir
from facelake.lake.commit import Attempt, FileEntry, Written, materialize_partition
from facelake.lake.storage import Storage
from synthetic.clip import TINY_NAME, register_tiny_config, textured_jpegs
from tests.conftest import S3_KEY, S3_SECRET
from tests.test_facelake_cli import clean_env, run_facelake

ASSET = "laion_face_clip_embeddings"
QUERY = "a smiling old man with a beard"
PLANTED = "planted-old-man"
IMAGE_ROW = 4


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, object]:
    """The tiny open_clip model saved as a local-dir (seed 0), another space (seed 1), and the first loaded."""
    base = tmp_path_factory.mktemp("clip-models")
    register_tiny_config(base / "config")
    tiny = load_clip(ClipModelSpec(TINY_NAME, seed=0))
    other = load_clip(ClipModelSpec(TINY_NAME, seed=1))
    folder = save_local_dir(tiny, base / "tiny")
    return {
        "tiny": folder,
        "other": save_local_dir(other, base / "other"),
        "loaded": load_clip(ClipModelSpec(folder)),
    }


def plant_lake(storage: Storage, loaded, jpegs: list[bytes]) -> None:
    """Two clip-retrieval parts of ``jpegs``' embeddings; part 1 also holds the text query's own embedding
    under the key PLANTED (so it is the query's top hit, at similarity ~1)."""
    encoder = ClipEncoder(loaded, device="cpu", batch_size=8)
    vectors = encoder.encode_images(jpegs)
    text = encoder.encode_text([QUERY])
    keys = [f"img{i:03d}" for i in range(len(jpegs))]
    half = len(jpegs) // 2
    parts = [
        (vectors[:half], keys[:half], [f"photo {k}" for k in keys[:half]]),
        (
            np.concatenate([vectors[half:], text]),
            [*keys[half:], PLANTED],
            [f"photo {k}" for k in keys[half:]] + ["the planted match"],
        ),
    ]

    def write(attempt: Attempt) -> Written:
        files = []
        for index, (rows, names, captions) in enumerate(parts):
            meta = metadata_table(
                names,
                loaded.profile,
                captions=captions,
                urls=[f"http://images.example/{n}.jpg" for n in names],
                sizes=np.full((len(names), 2), 64, np.int32),
            )
            for written in write_part(storage, attempt.artifact.prefix, index, rows, meta):
                files.append(FileEntry(written.path, written.size, written.sha256, written.rows))
        space = attempt.artifact.uri(SPACE_FILE)
        storage.write_bytes(space, json.dumps(space_record(loaded.profile, loaded.warning)).encode())
        files.append(attempt.entry(space))
        return Written(files, rows=len(jpegs) + 1)

    artifact = clip_artifact(storage, ASSET, "00000")
    materialize_partition(artifact, {"planted": True}, "test", "test", write)


@pytest.fixture
def lake(request, tmp_path, models) -> tuple[Storage, dict[str, str], Path]:
    """The planted lake (local, or on the S3 server with ``indirect`` param ``s3``) and the environment that
    points ``facelake`` at it with the tiny model."""
    jpegs = textured_jpegs(24, size=(64, 48), seed=3)
    image = tmp_path / "query.jpg"
    image.write_bytes(jpegs[IMAGE_ROW])
    if getattr(request, "param", "local") == "local":
        storage = Storage(str(tmp_path / "lake"))
        env = clean_env(FACELAKE_ROOT=storage.root)
    else:
        storage = request.getfixturevalue("s3_storage")
        env = clean_env(
            FACELAKE_ROOT=storage.root,
            FACELAKE_S3__ENDPOINT_URL=storage.s3.endpoint_url,
            FACELAKE_S3__KEY=S3_KEY,
            FACELAKE_S3__SECRET=S3_SECRET,
        )
    plant_lake(storage, models["loaded"], jpegs)
    env.update(FACELAKE_CLIP__MODEL=str(models["tiny"]), HF_HUB_OFFLINE="1")
    return storage, env, image


def table_rows(stdout: str) -> list[list[str]]:
    """The data rows of the table (after the RANK header), split on runs of 2+ spaces."""
    import re

    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("RANK"))
    return [re.split(r"\s{2,}", line) for line in lines[start + 1 :]]


@pytest.mark.parametrize("lake", ["local", "s3"], indirect=True)
def test_text_query_returns_the_planted_top_hit(lake, tmp_path):
    _, env, _ = lake
    done = run_facelake(
        "search", QUERY, "--asset", ASSET, "--part", "00000", "-k", "5", cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"{ASSET}[00000]: 25 images, open_clip:custom" in out and "exact search" in out
    assert "WARNING: RANDOM WEIGHTS" in out, "random weights are labelled"
    rows = table_rows(out)
    assert len(rows) == 5
    rank, score, key, caption, url = rows[0]
    assert (rank, key, caption) == ("1", PLANTED, "the planted match")
    assert float(score) > 0.999 and url == f"http://images.example/{PLANTED}.jpg"
    assert [float(r[1]) for r in rows] == sorted((float(r[1]) for r in rows), reverse=True)


def test_image_query_json_and_contact_sheet(lake, tmp_path):
    _, env, image = lake
    sheet = tmp_path / "hits.png"
    args = ["--image", str(image), "--asset", ASSET, "-k", "3", "--format", "json", "--sheet", str(sheet)]
    done = run_facelake("search", *args, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["part"] == "00000", "the only committed part is the default"
    assert result["random_init"] is True and "RANDOM WEIGHTS" in result["warning"]
    top = result["hits"][0]
    assert (top["query"], top["rank"], top["image_path"]) == (str(image), 1, f"img{IMAGE_ROW:03d}")
    assert top["score"] > 0.999 and len(result["hits"]) == 3
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("grey tiles" in note for note in result["notes"]), "no LAION images in this lake: said so"


def test_refuses_another_space_and_missing_weights_clearly(lake, tmp_path, models):
    _, env, _ = lake
    other = {**env, "FACELAKE_CLIP__MODEL": str(models["other"])}
    done = run_facelake("search", QUERY, "--asset", ASSET, cwd=tmp_path, env=other)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    tiny, second = models["loaded"].profile.weights_sha256, load_clip(ClipModelSpec(str(models["other"])))
    assert tiny[:12] in done.stderr and second.profile.weights_sha256[:12] in done.stderr, done.stderr

    missing = {**env, "FACELAKE_CLIP__MODEL": "ViT-B-32", "FACELAKE_CLIP__PRETRAINED": "laion2b_s34b_b79k"}
    done = run_facelake("search", QUERY, "--asset", ASSET, cwd=tmp_path, env=missing)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "not found" in done.stderr and "To provide it" in done.stderr and "HF_HUB_OFFLINE" in done.stderr

    done = run_facelake("search", "--asset", ASSET, cwd=tmp_path, env=env)
    assert done.returncode == 2 and "give a text query" in done.stderr
