"""HyperFace assets in Dagster: the gallery and a variant's reference embeddings, in process and by the CLI.

A gallery table of 500 unit vectors (d=128, dlib-like provenance) is packed into the ``demo`` variant's 200
identities (shards of 64). The run commits identity shards with stable ids, a convergence plot and the
minimum-angle check; a rerun does nothing, a forced rerun reproduces the same ids and vectors, a run killed
after its first checkpoint resumes from it, a gallery mixing two spaces is refused, and random-weight
provenance travels into the shards and the metadata.
"""

from __future__ import annotations

import base64
import io
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from dagster import AssetCheckKey, AssetKey, DagsterInstance
from PIL import Image

from facelake.faces.identity import EmbedderProfile, embedding_table, table_space
from facelake.hyperface import references as hyperface
from facelake.hyperface.packing import StorageCheckpointer
from facelake.lake.storage import Storage
from facelake.settings import load_settings
from tests.cli_helpers import (
    IN_PROCESS,
    cli_env,
    make_dagster_home,
    materialization_records,
    materialize,
    materialize_command,
    metadata_values,
    start_process,
    step_failure_text,
    stop_process_group,
    wait_for,
)

GALLERY, REFERENCE = "hyperface_gallery", "hyperface_reference_embeddings"
CHECK = AssetCheckKey(AssetKey(REFERENCE), "min_angle_reaches_bound")
DLIB = EmbedderProfile("dlib_resnet_v1", 128, "d" * 64, False, 0.18)
OTHER = EmbedderProfile("dlib_resnet_v1", 128, "e" * 64, False, 0.18)
RANDOM_ARCFACE = EmbedderProfile("arcface_r100", 64, "a" * 64, True, 0.35)
IDENTITIES, SHARD_SIZE, CHECKPOINT_EVERY = 200, 64, 10
VARIANTS = {
    "demo": {
        "identities": IDENTITIES,
        "algorithm": "full",
        "iterations": 60,
        "min_angle_deg": 30.0,
        "packing": {"checkpoint_every": CHECKPOINT_EVERY},
    },
    "strict": {"identities": IDENTITIES, "algorithm": "full", "iterations": 5, "min_angle_deg": 179.0},
}


def write_gallery(path: Path, profile: EmbedderProfile, rows: int = 500, seed: int = 0) -> str:
    vectors = np.random.default_rng(seed).standard_normal((rows, profile.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = embedding_table(vectors, profile, {"sample_id": np.arange(rows, dtype=np.int64)})
    pq.write_table(table, path)
    return str(path)


def write_config(path: Path, root: Path, uris: list[str], variants: dict = VARIANTS) -> Path:
    config = {
        "root": str(root),
        "models": {"torch_threads": 1},
        "hyperface": {
            "gallery": {"source": "table", "uris": uris},
            "variants": variants,
            "shard_size": SHARD_SIZE,
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run(
    assets: list[str], instance: DagsterInstance, partition: str | None = None, force: bool = False, **kw
):
    """``dagster.materialize`` of our assets with the code location's resources for the settings in force."""
    from dagster_project.definitions import build_definitions

    defs = build_definitions(load_settings())
    run_config = {"ops": {a: {"config": {"force": True}} for a in assets}} if force else None
    return dagster.materialize(
        list(defs.assets or []),
        resources=defs.resources,
        instance=instance,
        partition_key=partition,
        selection=[AssetKey(a) for a in assets],
        run_config=run_config,
        **kw,
    )


def materialized_metadata(result, asset: str) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == AssetKey(asset)]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def shard_files(lake: Storage, variant: str) -> dict[str, tuple[int, bytes]]:
    files = hyperface.committed_files(hyperface.reference_artifact(lake, variant))
    return {name: (Path(uri).stat().st_mtime_ns, Path(uri).read_bytes()) for name, uri in files.items()}


@dataclass
class DemoRuns:
    lake: Storage
    first: dagster.ExecuteInProcessResult
    files: dict[str, tuple[int, bytes]]
    again: dagster.ExecuteInProcessResult
    files_again: dict[str, tuple[int, bytes]]
    forced: dagster.ExecuteInProcessResult
    table: object
    table_forced: object


@pytest.fixture(scope="module")
def gallery_file(tmp_path_factory) -> str:
    return write_gallery(tmp_path_factory.mktemp("gallery") / "dlib_gallery.parquet", DLIB)


@pytest.fixture(scope="module")
def demo(tmp_path_factory, gallery_file) -> Iterator[DemoRuns]:
    base = tmp_path_factory.mktemp("hyperface")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("FACELAKE_ROOT", raising=False)
        env.setenv(
            "FACELAKE_CONFIG", str(write_config(base / "facelake.yaml", base / "lake", [gallery_file]))
        )
        lake = load_settings().storage()
        instance = DagsterInstance.ephemeral()
        assert run([GALLERY], instance).success
        first = run([REFERENCE], instance, "demo")
        files = shard_files(lake, "demo")
        again = run([REFERENCE], instance, "demo")
        files_again = shard_files(lake, "demo")
        artifact = hyperface.reference_artifact(lake, "demo")
        table = hyperface.read_reference_embeddings(lake, artifact)
        forced = run([REFERENCE], instance, "demo", force=True)
        table_forced = hyperface.read_reference_embeddings(lake, artifact)
        yield DemoRuns(lake, first, files, again, files_again, forced, table, table_forced)


def test_the_reference_asset_carries_the_gpu_pool_tags_and_variant_partitions(
    gallery_file, tmp_path, monkeypatch
):
    monkeypatch.setenv(
        "FACELAKE_CONFIG", str(write_config(tmp_path / "c.yaml", tmp_path / "lake", [gallery_file]))
    )
    from dagster_project.definitions import build_definitions

    defs = build_definitions(load_settings())
    node = defs.resolve_assets_def(REFERENCE)
    assert node.node_def.tags["dagster-celery/queue"] == "gpu" and node.node_def.pool == "gpu"
    assert "nvidia.com/gpu" in str(node.node_def.tags["dagster-k8s/config"])
    assert node.partitions_def.get_partition_keys() == ["demo", "strict"]
    graph = defs.resolve_asset_graph()
    assert graph.get(AssetKey(REFERENCE)).parent_keys == {AssetKey(GALLERY)}
    assert graph.get(AssetKey(GALLERY)).parent_keys == set(), "a table gallery depends on no asset"
    assert CHECK in graph.asset_check_keys
    assert defs.resolve_job_def("hyperface_reference_job").partitions_def.get_partition_keys() == [
        "demo",
        "strict",
    ]


def test_demo_commits_identity_shards_with_stable_ids_and_the_gallery_space(demo):
    assert demo.first.success
    names = set(demo.files)
    assert names == {f"identities-{s:05d}.parquet" for s in range(4)} | {"convergence.png", "packing.json"}
    table = demo.table
    assert table.num_rows == IDENTITIES
    assert table["identity_id"].to_pylist() == [f"demo-{i:07d}" for i in range(IDENTITIES)]
    assert table["shard"].to_pylist() == [i // SHARD_SIZE for i in range(IDENTITIES)]
    assert table_space(table) == DLIB.provenance()
    vectors = hyperface.embedding_matrix("demo", table)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    gram = vectors @ vectors.T
    np.fill_diagonal(gram, -1)
    metadata = materialized_metadata(demo.first, REFERENCE)
    measured = np.degrees(np.arccos(np.clip(gram.max(), -1, 1)))
    assert metadata["min_angle_deg"] == pytest.approx(measured, abs=0.05)
    assert metadata["min_angle_deg"] > metadata["initial_min_angle_deg"], "packing spread the points"
    last = pq.read_table(io.BytesIO(demo.files["identities-00003.parquet"][1]))
    assert last["identity_index"].to_pylist() == list(range(192, 200))


def test_demo_metadata_reports_metrics_plot_device_and_timing(demo):
    metadata = materialized_metadata(demo.first, REFERENCE)
    for key in ("min_angle_deg", "mean_nn_cosine", "mean_gallery_distance", "initial_mean_nn_cosine"):
        assert isinstance(metadata[key], float), key
    assert set(metadata["nn_cosine_quantiles"]) >= {"p01", "p50", "p99"}
    assert metadata["identities"] == IDENTITIES and metadata["dimension"] == 128 and metadata["shards"] == 4
    assert metadata["device"] in ("cpu", "cuda") or metadata["device"].startswith("cuda")
    reported = ("screen", "packing_seconds")  # the time is a measurement: present, its value never asserted
    assert all(key in metadata for key in reported) and metadata["screen"]
    assert metadata["embedder_random_init"] is False and "warning" not in metadata
    assert metadata["reused_committed_partition"] is False and metadata["resumed_from_checkpoint"] is False
    markdown = metadata["convergence_plot"]
    png = base64.b64decode(markdown.split("base64,", 1)[1].rstrip(")"))
    assert png == demo.files["convergence.png"][1]
    assert Image.open(io.BytesIO(png)).format == "PNG"
    assert metadata["convergence_plot_uri"].endswith("convergence.png")


def test_the_min_angle_check_passes_for_demo_and_fails_a_bound_out_of_reach(demo, gallery_file, tmp_path):
    [evaluation] = demo.first.get_asset_check_evaluations()
    assert evaluation.asset_check_key == CHECK and evaluation.passed is True
    assert evaluation.metadata["bound_deg"].value == 30.0
    with pytest.MonkeyPatch.context() as env:
        env.setenv(
            "FACELAKE_CONFIG", str(write_config(tmp_path / "c.yaml", tmp_path / "lake", [gallery_file]))
        )
        instance = DagsterInstance.ephemeral()
        assert run([GALLERY], instance).success
        strict = run([REFERENCE], instance, "strict", raise_on_error=False)
    [evaluation] = strict.get_asset_check_evaluations()
    assert evaluation.passed is False and evaluation.metadata["bound_deg"].value == 179.0
    assert evaluation.metadata["min_angle_deg"].value < 179.0


def test_a_rerun_does_nothing_and_a_forced_rerun_reproduces_ids_and_vectors(demo):
    metadata = materialized_metadata(demo.again, REFERENCE)
    assert metadata["reused_committed_partition"] is True
    assert demo.files_again == demo.files, "the rerun rewrote committed files"
    first = materialized_metadata(demo.first, REFERENCE)
    assert metadata["min_angle_deg"] == first["min_angle_deg"] and metadata["convergence_plot"]
    [evaluation] = demo.again.get_asset_check_evaluations()
    assert evaluation.passed is True
    forced = materialized_metadata(demo.forced, REFERENCE)
    assert forced["reused_committed_partition"] is False
    assert demo.table_forced["identity_id"].to_pylist() == demo.table["identity_id"].to_pylist()
    np.testing.assert_allclose(
        hyperface.embedding_matrix("forced", demo.table_forced),
        hyperface.embedding_matrix("first", demo.table),
        atol=1e-6,
    )


class Killed(Exception):
    """Stands for the process dying right after its first checkpoint reached storage."""


class DiesAfterFirstSave(StorageCheckpointer):
    def save(self, state):
        super().save(state)
        raise Killed("killed after the first checkpoint")


def test_an_interrupted_run_resumes_from_its_checkpoint(demo, gallery_file, tmp_path, monkeypatch):
    monkeypatch.setenv(
        "FACELAKE_CONFIG", str(write_config(tmp_path / "c.yaml", tmp_path / "lake", [gallery_file]))
    )
    lake = load_settings().storage()
    instance = DagsterInstance.ephemeral()
    assert run([GALLERY], instance).success
    with monkeypatch.context() as patch:
        patch.setattr(hyperface, "StorageCheckpointer", DiesAfterFirstSave)
        killed = run([REFERENCE], instance, "demo", raise_on_error=False)
    assert not killed.success and "killed after the first checkpoint" in step_failure_text(killed)
    assert hyperface.reference_artifact(lake, "demo").manifest() is None
    [checkpoint] = lake.find(hyperface.checkpoint_folder(lake, "demo"))

    resumed = run([REFERENCE], instance, "demo")
    metadata = materialized_metadata(resumed, REFERENCE)
    assert metadata["resumed_from_checkpoint"] is True and metadata["resumed_at_step"] == CHECKPOINT_EVERY
    assert not lake.exists(checkpoint), "the checkpoint is deleted once the variant commits"
    table = hyperface.read_reference_embeddings(lake, hyperface.reference_artifact(lake, "demo"))
    np.testing.assert_allclose(
        hyperface.embedding_matrix("resumed", table),
        hyperface.embedding_matrix("uninterrupted", demo.table),
        atol=1e-5,
    )


def test_a_gallery_mixing_two_embedding_spaces_is_refused(gallery_file, tmp_path, monkeypatch):
    other = write_gallery(tmp_path / "other_weights.parquet", OTHER, rows=50, seed=1)
    monkeypatch.setenv(
        "FACELAKE_CONFIG", str(write_config(tmp_path / "c.yaml", tmp_path / "lake", [gallery_file, other]))
    )
    result = run([GALLERY], DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    text = step_failure_text(result)
    assert (
        "dlib_gallery.parquet and " in text
        and "other_weights.parquet are in different embedding spaces" in text
    )
    assert "refusing to mix embedding spaces" in text
    assert hyperface.gallery_artifact(load_settings().storage()).manifest() is None


def test_random_weight_provenance_is_carried_and_stated(tmp_path, monkeypatch):
    uri = write_gallery(tmp_path / "random.parquet", RANDOM_ARCFACE, rows=120)
    variants = {"demo": {"identities": 100, "algorithm": "full", "iterations": 10, "min_angle_deg": 1.0}}
    monkeypatch.setenv(
        "FACELAKE_CONFIG", str(write_config(tmp_path / "c.yaml", tmp_path / "lake", [uri], variants))
    )
    lake = load_settings().storage()
    instance = DagsterInstance.ephemeral()
    gallery = run([GALLERY], instance)
    reference = run([REFERENCE], instance, "demo")
    for result, asset in ((gallery, GALLERY), (reference, REFERENCE)):
        metadata = materialized_metadata(result, asset)
        assert metadata["embedder_random_init"] is True
        assert "RANDOM TEST WEIGHTS" in metadata["warning"] and "RANDOM TEST WEIGHTS" in metadata["embedder"]
    table = hyperface.read_reference_embeddings(lake, hyperface.reference_artifact(lake, "demo"))
    assert set(table["embedder_random_init"].to_pylist()) == {True}
    assert table.schema.field("embedding").type.list_size == 64


LONG_ITERATIONS, LONG_CHECKPOINT_EVERY = 4000, 50
LONG = {
    "identities": IDENTITIES,
    "algorithm": "full",
    "iterations": LONG_ITERATIONS,
    "min_angle_deg": 30.0,
    "packing": {"checkpoint_every": LONG_CHECKPOINT_EVERY},
}
"""A variant whose first checkpoint comes after 1.25% of its steps, so that it can be SIGKILLed early on any
machine: a step takes ~1-3 ms at N=200 on a busy 2-core box (a few times less on a fast one), so the 350
steps between the first checkpoint and the 10% mark leave the test's 5 ms poll ~0.1 s or more to kill it
(here the kill lands at the first checkpoint), while the resumed run stays at seconds."""
KILLED_BY = 0.1
"""The kill must land before this fraction of the variant's steps ran (read from the checkpoint)."""
POLL_S = 0.005


@dataclass
class CliLake:
    """A DAGSTER_HOME and a lake whose gallery the CLI materialized."""

    home: Path
    env: dict[str, str]
    lake: Storage


@pytest.fixture(scope="module")
def cli_lake(tmp_path_factory, gallery_file) -> CliLake:
    base = tmp_path_factory.mktemp("hyperface_cli")
    config = write_config(base / "facelake.yaml", base / "lake", [gallery_file], {**VARIANTS, "long": LONG})
    home = make_dagster_home(base / "dagster_home")
    env = cli_env(home, FACELAKE_CONFIG=str(config), **IN_PROCESS)
    env.pop("FACELAKE_ROOT", None)
    materialize([GALLERY], env)
    return CliLake(home, env, Storage(str(base / "lake")))


def latest_metadata(home: Path, variant: str) -> tuple[str, dict]:
    """The run id and metadata of the variant's one materialization recorded in the DAGSTER_HOME instance."""
    with DagsterInstance.from_config(str(home)) as instance:
        [record] = materialization_records(instance, REFERENCE, variant)
        return record.run_id, metadata_values(record.asset_materialization)


@pytest.mark.slow
def test_the_cli_materializes_the_demo_variant_with_its_check(cli_lake):
    materialize([REFERENCE], cli_lake.env, "demo")
    lake = cli_lake.lake
    table = hyperface.read_reference_embeddings(lake, hyperface.reference_artifact(lake, "demo"))
    assert table["identity_id"].to_pylist() == [f"demo-{i:07d}" for i in range(IDENTITIES)]
    run_id, metadata = latest_metadata(cli_lake.home, "demo")
    assert metadata["shards"] == 4 and metadata["min_angle_deg"] > 30.0
    assert metadata["convergence_plot"].startswith("![convergence](data:image/png;base64,")
    with DagsterInstance.from_config(str(cli_lake.home)) as instance:
        evaluation = instance.get_latest_asset_check_evaluation_record(CHECK)
    assert evaluation is not None and evaluation.run_id == run_id
    assert evaluation.event.dagster_event.event_specific_data.passed is True


def has_checkpoint(folder: Path) -> bool:
    """A whole checkpoint in ``folder`` (cheap enough to poll every few ms; the folder may not exist yet)."""
    try:
        with os.scandir(folder) as entries:
            return any(entry.name.endswith(".npz") for entry in entries)
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_a_sigkilled_cli_run_resumes_from_its_checkpoint(cli_lake, tmp_path):
    lake, env = cli_lake.lake, cli_lake.env
    folder, artifact = hyperface.checkpoint_folder(lake, "long"), hyperface.reference_artifact(lake, "long")

    def checkpoints() -> list[str]:
        """Whole checkpoints (a ``.tmp-*`` file is one being written: killed then, it is never read)."""
        return [uri for uri in lake.find(folder) if uri.endswith(".npz")]

    log = tmp_path / "killed.log"
    process = start_process(materialize_command([REFERENCE], "long"), env, log)
    try:
        # Kill as soon as the first checkpoint appears (atomically renamed into place), polling every 5 ms.
        wait_for(
            lambda: has_checkpoint(Path(folder)) or process.poll() is not None, 240, "a checkpoint", POLL_S
        )
        assert process.poll() is None, f"the run ended before it was killed:\n{log.read_text()}"
        os.killpg(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        stop_process_group(process)
    assert artifact.manifest() is None and checkpoints(), "killed: no manifest, the checkpoint stays"
    [checkpoint] = checkpoints()
    killed_at = int(StorageCheckpointer(lake, checkpoint).load()["step"])
    assert 0 < killed_at <= KILLED_BY * LONG_ITERATIONS, (
        f"the kill landed at step {killed_at} of {LONG_ITERATIONS}, later than {KILLED_BY:.0%} of the run"
    )

    materialize([REFERENCE], env, "long")
    assert artifact.manifest() is not None and not lake.find(folder), "committed; checkpoints deleted"
    _, metadata = latest_metadata(cli_lake.home, "long")
    assert metadata["resumed_from_checkpoint"] is True
    assert metadata["resumed_at_step"] > 0 and metadata["resumed_at_step"] % 50 == 0
    assert metadata["resumed_at_step"] == killed_at, "the resumed run started from the checkpoint it was left"
