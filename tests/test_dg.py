"""``dg`` (dagster-dg-cli) loads this code location: ``dg check defs`` and ``dg list defs`` from the repository root.

``dg.toml`` at the root makes the repository a dg project without moving anything: ``root_module`` is
``dagster_project`` and ``code_location_target_module`` is ``dagster_project.definitions`` (the same module
``workspace.yaml`` and ``[tool.dagster]`` name), so the card's layout (``dagster_project/``, ``assets/``,
``resources/`` … at the top) stays as it is. dg runs the project's ``.venv`` interpreter; the CLI is run here with
this interpreter's virtual environment activated, as a person would after ``source .venv/bin/activate``.
"""

from __future__ import annotations

import json
import tomllib

import pytest

from tests.cli_helpers import BIN_DIR, REPO_ROOT, cli_env, make_dagster_home, run_cli

pytestmark = pytest.mark.slow

DG_TIMEOUT_S = 240


def dg(tmp_path, *args: str, **env: str):
    """``dg <args>`` from the repository root, with this virtual environment active and a scratch home."""
    home = make_dagster_home(tmp_path / "dagster_home")
    environment = cli_env(home, VIRTUAL_ENV=str(BIN_DIR.parent), DAGSTER_IS_DEV_CLI="0", **env)
    environment["PATH"] = f"{BIN_DIR}:{environment.get('PATH', '')}"
    return run_cli([str(BIN_DIR / "dg"), *args], environment, timeout_s=DG_TIMEOUT_S)


@pytest.fixture(scope="module")
def code_location():
    from dagster_project.definitions import defs

    return defs


def test_dg_toml_points_at_the_code_location_without_moving_it():
    config = tomllib.loads((REPO_ROOT / "dg.toml").read_text())
    assert config["directory_type"] == "project"
    project = config["project"]
    assert project["root_module"] == "dagster_project"
    assert project["code_location_target_module"] == "dagster_project.definitions"
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["dagster"]["module_name"] == project["code_location_target_module"]
    assert project["code_location_name"] == pyproject["tool"]["dagster"]["code_location_name"]
    for top in ("pyproject.toml", "workspace.yaml", "docker-compose.yml", "dagster_project", "assets"):
        assert (REPO_ROOT / top).exists(), top


def test_dg_check_defs_loads_the_definitions(tmp_path):
    result = dg(tmp_path, "check", "defs")
    result.assert_ok()
    assert "All definitions loaded successfully." in result.output


def test_dg_check_defs_fails_when_the_definitions_do_not_load(tmp_path):
    """A settings file the code location refuses: dg check defs must exit non-zero, naming the problem."""
    bad = tmp_path / "facelake.yaml"
    bad.write_text("download: {processes: not-a-number}\n")
    result = dg(tmp_path, "check", "defs", FACELAKE_CONFIG=str(bad))
    assert result.returncode != 0, result.output[-3000:]
    assert "processes" in result.output, result.output[-3000:]
    assert "All definitions loaded successfully." not in result.output


def test_dg_list_defs_lists_what_the_code_location_defines(tmp_path, code_location):
    result = dg(tmp_path, "list", "defs", "--json")
    result.assert_ok()
    listed = json.loads(result.output[result.output.index("{") :])
    assets = {a["asset_key"] for a in listed["assets"]}
    assert assets == {key.to_user_string() for key in code_location.resolve_all_asset_keys()}
    assert {"laion_face_images", "laion_face_embeddings", "hyperface_reference_embeddings"} <= assets
    executable = {a["asset_key"] for a in listed["assets"] if a["is_executable"]}
    graph = code_location.resolve_asset_graph()
    assert executable == {
        key.to_user_string() for key in graph.get_all_asset_keys() if graph.get(key).is_executable
    }
    assert "laion_face_images" in executable
    jobs = {j["name"] for j in listed["jobs"]}
    expected_jobs = {job.name for job in code_location.resolve_all_job_defs()} - {"__ASSET_JOB"}
    assert jobs == expected_jobs and "laion_face_part_job" in jobs
    schedule_names = [s.name for s in code_location.schedules or []]
    assert {s["name"]: s["cron_schedule"] for s in listed["schedules"]} == {
        s.name: s.cron_schedule for s in map(code_location.resolve_schedule_def, schedule_names)
    }
    checks = {c["key"] for c in listed["asset_checks"]}
    assert "laion_face_images:success_rate" in checks
    assert checks == {
        f"{key.asset_key.to_user_string()}:{key.name}"
        for key in code_location.resolve_asset_graph().asset_check_keys
    }
    assert {r["name"] for r in listed["resources"]} >= {"storage", "models", "img2dataset", "catalog"}
