"""The production instance shape: ``deploy/dagster.yaml`` (run, event-log and schedule storage in Postgres).

``dagster asset materialize`` runs the inputs and then part 00000 (meta, images, detections in one run,
default multiprocess executor) against a fresh Postgres database; the materializations, their metadata and
the runs are read back through a DagsterInstance loaded from the same DAGSTER_HOME and straight from the
database with psycopg2. Without Postgres on 127.0.0.1 the test skips locally and fails in CI
(``FACELAKE_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import psycopg2
import pytest
from dagster import AssetCheckKey, AssetKey, DagsterInstance, DagsterRunStatus

from facelake.laion import artifacts
from facelake.settings import load_settings
from tests.cli_helpers import (
    INPUTS,
    PART,
    PART_ASSETS,
    cli_env,
    data_version,
    expected_download_counts,
    make_dagster_home,
    materialization_records,
    materialize,
    metadata_values,
)

pytestmark = [pytest.mark.slow, pytest.mark.services]

PG_URL_ENV = "FACELAKE_DAGSTER_PG_URL"


def sqlalchemy_url(libpq_url: str) -> str:
    """The URL naming its driver, as deploy/dagster.yaml wants it (SQLAlchemy 2.1 defaults to psycopg 3)."""
    return libpq_url.replace("postgresql://", "postgresql+psycopg2://", 1)


def test_cli_runs_are_recorded_in_postgres(laion_world, postgres_database, tmp_path, monkeypatch):
    monkeypatch.setenv(PG_URL_ENV, sqlalchemy_url(postgres_database))
    home = make_dagster_home(tmp_path / "dagster_home", "dagster.yaml")
    cli = cli_env(home)
    materialize(INPUTS, cli)
    materialize(PART_ASSETS, cli, PART)
    with DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert_materializations_match_the_lake(instance, laion_world)
        runs = instance.get_runs()
    assert len(runs) == 2 and all(r.status == DagsterRunStatus.SUCCESS for r in runs)
    part_run = next(r for r in runs if r.tags.get("dagster/partition") == PART)
    assert part_run.asset_selection == {AssetKey(a) for a in PART_ASSETS}
    assert_database_holds(postgres_database, {r.run_id for r in runs})


def assert_materializations_match_the_lake(instance: DagsterInstance, world) -> None:
    """One materialization per asset (partition), whose metadata describes the committed manifest."""
    lake = load_settings().storage()
    committed = {
        "laion_face_ids": artifacts.face_ids(lake),
        "laion_face_optout": artifacts.optout(lake),
        "laion_face_meta": artifacts.meta(lake, PART),
        "laion_face_images": artifacts.images(lake, PART),
        "laion_face_detections": artifacts.detections(lake, PART),
    }
    for asset, artifact in committed.items():
        partition = PART if asset in PART_ASSETS else None
        (record,) = materialization_records(instance, asset, partition)
        manifest = artifact.require_manifest()
        metadata = metadata_values(record.asset_materialization)
        assert record.asset_materialization.partition == partition
        assert (metadata["uri"], metadata["rows"]) == (artifact.prefix, manifest.rows)
        assert (
            data_version(record.asset_materialization)
            == f"{manifest.content_hash[:16]}-{manifest.config_hash}"
        )
    latest = instance.get_latest_materialization_event(AssetKey("laion_face_images"))
    images = metadata_values(latest.asset_materialization)
    assert images["counts_by_status"] == expected_download_counts(world)
    assert images["success_rate"] == pytest.approx(142 / 155)
    check = instance.get_latest_asset_check_evaluation_record(
        AssetCheckKey(AssetKey("laion_face_images"), "success_rate")
    )
    assert check is not None and check.event.dagster_event.event_specific_data.passed


def assert_database_holds(libpq_url: str, run_ids: set[str]) -> None:
    """The runs table has exactly these runs, succeeded; event_logs has one materialization per asset."""
    connection = psycopg2.connect(libpq_url)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT run_id, status FROM runs")
            runs = dict(cursor.fetchall())
            cursor.execute(
                "SELECT asset_key, partition FROM event_logs "
                "WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
            )
            materialized = sorted(cursor.fetchall())
    finally:
        connection.close()
    assert runs == dict.fromkeys(run_ids, "SUCCESS")
    expected = [(AssetKey(a).to_string(), None) for a in INPUTS]
    expected += [(AssetKey(a).to_string(), PART) for a in PART_ASSETS]
    assert materialized == sorted(expected)
