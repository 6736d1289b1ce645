"""``facelake sfhq describe`` as the installed console script on SFHQ-layout fixtures (counts, every problem by
name, exit status, ``--sources``), and the pieces ``facelake search`` uses for SFHQ's shipped features: where
the asset lives, the declared space of a key whose weights are not here, and the check of a declared space
against the model that loads."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from facelake.clip.foreign import (
    FOREIGN_ASSETS,
    UNVERIFIED,
    asset_location,
    declared_profile,
    feature_spec,
    resolve_space,
    searchable,
    weights_here,
)
from facelake.clip.layout import ClipEmbeddings
from facelake.clip.model import ClipModelSpec, load_clip, resolve_model_config, save_local_dir
from facelake.clip.space import canonical_config
from facelake.lake.errors import InputError
from facelake.lake.storage import Storage
from facelake.vectors.spaces import EmbeddingSpaceMismatchError
from synthetic.clip import TINY_NAME, register_tiny_config
from synthetic.sfhq import Faults, write_sfhq_part
from tests.test_facelake_cli import clean_env, run_facelake


def count_line(label: str, value: int, note: str = "") -> str:
    return f"  {label:22s} {value:>9,}{note}"


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """Part 1 with faults and a clean part 2 under ``<sources>/sfhq/part{N}`` (the default template)."""
    base = tmp_path_factory.mktemp("sfhq-sources")
    storage = Storage(str(base))
    faults = Faults(missing_landmarks=1, orphan_segmentation=1, missing_features=2, unexpected_file=True)
    write_sfhq_part(storage, str(base / "sfhq" / "part1"), 6, faults=faults)
    write_sfhq_part(storage, str(base / "sfhq" / "part2"), 3, part="2")
    return base


def describe(tmp_path: Path, *args: str, **env: str):
    environment = clean_env(FACELAKE_ROOT=str(tmp_path / "no-lake"), **env)
    return run_facelake("sfhq", "describe", *args, cwd=tmp_path, env=environment)


def test_describe_prints_counts_and_every_problem_by_name(sources, tmp_path):
    done = describe(tmp_path, "--part", "1", "--sources", str(sources))
    assert done.returncode == 3, done.stderr  # problems found
    lines = done.stdout.splitlines()
    assert lines[:7] == [
        f"SFHQ part 1: {sources}/sfhq/part1",
        count_line("images/", 6, " .jpg files"),
        count_line("landmarks/", 5, " .npz files"),
        count_line("segmentations/", 7, " .png files"),
        count_line("pretrained_features/", 4, " .pickle files"),
        count_line("names", 7, " (in any folder)"),
        count_line("complete", 3, " (image + landmarks + map + features)"),
    ]
    assert "validation: PROBLEMS: missing 3, orphan 1, unexpected 1" in lines
    assert "landmarks missing: 1" in lines and "pretrained_features missing: 2" in lines
    assert "  README.txt: not a .jpg file" in lines
    assert "  SFHQ_pt1_00000006: no image of this name" in lines
    limited = describe(tmp_path, "--part", "1", "--sources", str(sources), "--max-names", "1")
    assert "  ... and 1 more" in limited.stdout.splitlines()


def test_describe_a_clean_part_from_the_settings_sources(sources, tmp_path):
    done = describe(tmp_path, "--part", "2", FACELAKE_SOURCES=str(sources))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"SFHQ part 2: {sources}/sfhq/part2"
    assert count_line("complete", 3, " (image + landmarks + map + features)") in lines
    assert lines[-1] == "validation: OK"


def test_describe_errors_are_one_line(sources, tmp_path):
    done = describe(tmp_path, "--part", "5", "--sources", str(sources))
    assert done.returncode == 2 and "facelake sfhq: error:" in done.stderr and "1, 2, 3, 4" in done.stderr
    done = describe(tmp_path, "--part", "3", "--sources", str(sources))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == (
        f"facelake sfhq: error: {sources}/sfhq/part3/images: no .jpg images: expected an SFHQ part "
        "(images/, landmarks/, segmentations/, pretrained_features/)"
    )
    done = run_facelake("sfhq", cwd=tmp_path, env=clean_env())
    assert done.returncode == 2 and "SUBCOMMAND" in done.stderr


# --- what search uses for the shipped features ----------------------------------------------------------------


def test_sfhq_clip_features_lives_under_sfhq_and_other_assets_under_clip():
    assert (
        asset_location("sfhq_clip_features")
        == ("sfhq", "clip_features")
        == FOREIGN_ASSETS["sfhq_clip_features"]
    )
    assert asset_location("laion_face_clip_embeddings") == ("clip", "laion_face_clip_embeddings")


def test_the_real_key_without_weights_gets_a_declared_unverified_space(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = feature_spec("CLIP_ViTL_14@336")
    assert (spec.model, spec.pretrained) == ("ViT-L-14-336-quickgelu", "openai")
    here, why = weights_here(spec)
    assert not here and "are not here (looked at" in why
    space = resolve_space("CLIP_ViTL_14@336", 768)
    assert not space.verified and space.loaded is None and space.reason == why
    profile = space.profile
    assert profile.name == "open_clip:ViT-L-14-336-quickgelu" and profile.dimension == 768
    assert profile.weights_sha256 == f"{UNVERIFIED}ViT-L-14-336-quickgelu/openai" and not profile.random_init
    assert profile.config == canonical_config(resolve_model_config(spec))
    assert space.record() == {
        "label": "CLIP_ViTL_14@336",
        "spec": spec.describe(),
        "weights_verified": False,
        "reason": why,
    }
    with pytest.raises(InputError, match="the features are 512-d but CLIP_ViTL_14@336 is 768-d"):
        resolve_space("CLIP_ViTL_14@336", 512)
    with pytest.raises(KeyError, match="unknown CLIP feature label 'CLIP_ViTB_16'"):
        resolve_space("CLIP_ViTB_16", 512)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny-clip")
    register_tiny_config(base / "config")
    folder = save_local_dir(load_clip(ClipModelSpec(TINY_NAME, seed=0)), base / "tiny")
    return folder, load_clip(ClipModelSpec(folder))


def test_a_key_given_a_local_model_gets_that_models_exact_space(tiny):
    folder, loaded = tiny
    space = resolve_space("ANY_KEY", 32, model=folder, pretrained="ignored-for-local-dir")
    assert space.verified and space.spec == ClipModelSpec(folder)
    assert space.profile == loaded.profile
    with pytest.raises(InputError, match="the features are 16-d but local-dir:"):
        resolve_space("ANY_KEY", 16, model=folder)
    assert weights_here(ClipModelSpec("local-dir:/no/such/folder")) == (
        False,
        "local-dir:/no/such/folder: no such folder",
    )


def test_a_declared_space_is_searched_only_by_a_model_of_its_config_and_width(tiny):
    folder, loaded = tiny
    declared = declared_profile(ClipModelSpec(folder), 32)
    assert declared.config == loaded.profile.config and declared.weights_sha256.startswith(UNVERIFIED)
    vectors = np.eye(2, 32, dtype=np.float16)
    data = ClipEmbeddings(vectors, None, declared.provenance())
    record = {"label": "K", "spec": {"model": folder}, "weights_verified": False, "reason": "not here"}
    adopted, note = searchable(data, record, loaded.profile)
    assert adopted.space == loaded.profile.provenance() and adopted.vectors is vectors
    assert note.startswith("K features: weights not verified when committed (not here)")
    verified = {**record, "weights_verified": True}
    assert searchable(data, verified, loaded.profile) == (data, None)
    other = dataclasses.replace(loaded.profile, config=json.dumps({"other": True}))
    with pytest.raises(EmbeddingSpaceMismatchError, match="K features declare"):
        searchable(data, record, other)


# --- the Dagster area the commands read from -----------------------------------------------------------------


def test_the_sfhq_area_has_its_parts_queues_job_and_gallery_source():
    from dagster import AssetKey

    from dagster_project.definitions import build_definitions
    from facelake.settings import load_settings

    settings = load_settings()
    defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    gpu = {"sfhq_face_embeddings", "sfhq_clip_embeddings"}
    names = ["sfhq_index", "sfhq_landmarks", "sfhq_segmentations", "sfhq_clip_features", "sfhq_report", *gpu]
    for name in names:
        node = graph.get(AssetKey(name))
        assert node.partitions_def.get_partition_keys() == ["1", "2", "3", "4"], name
        assert node.code_version and "+cfg." in node.code_version, name
        op = defs.resolve_assets_def(name).node_def
        assert op.tags["dagster-celery/queue"] == ("gpu" if name in gpu else "cpu"), name
    assert graph.get(AssetKey("sfhq_report")).parent_keys == {
        AssetKey(n) for n in ("sfhq_index", "sfhq_landmarks", "sfhq_segmentations", "sfhq_clip_features")
    }
    job = defs.resolve_job_def("sfhq_part_job")
    assert job.partitions_def.get_partition_keys() == ["1", "2", "3", "4"]
    assert {k.to_user_string() for k in job.asset_layer.selected_asset_keys} == set(names) - {
        "sfhq_clip_embeddings"
    }
    gallery = settings.hyperface.gallery.model_copy(update={"source": "sfhq_face_embeddings", "parts": ["3"]})
    hyperface = settings.hyperface.model_copy(update={"gallery": gallery})
    other = build_definitions(settings.model_copy(update={"hyperface": hyperface}))
    assert other.resolve_asset_graph().get(AssetKey("hyperface_gallery")).parent_keys == {
        AssetKey("sfhq_face_embeddings")
    }
