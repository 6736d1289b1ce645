"""The README's main command (`make demo` = `python -m dagster_project.demo`) on a fresh folder."""

from __future__ import annotations

import pytest
from dagster import AssetKey, DagsterInstance

from dagster_project.demo import main
from tests.conftest import free_port


@pytest.mark.slow
def test_demo_materializes_part_00000_into_a_persistent_instance(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FACELAKE_MODELS__CACHE_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))  # restored after the test
    monkeypatch.setenv("FACELAKE_CONFIG", str(tmp_path / "unused.yaml"))
    main(["--dir", str(tmp_path / "demo"), "--port", str(free_port()), "--fresh"])
    printed = capsys.readouterr().out
    assert "success=142, failed_to_download=9, failed_to_resize=4, opted_out=5" in printed
    assert "our detections   : 142 faces" in printed
    home = tmp_path / "demo" / "dagster_home"
    assert (home / "dagster.yaml").is_file()
    with DagsterInstance.from_config(str(home)) as instance:
        for key in ("laion_face_meta", "laion_face_images", "laion_face_detections", "laion_face_detected"):
            event = instance.get_latest_materialization_event(AssetKey(key))
            assert event is not None and event.asset_materialization.partition == "00000"
        assert instance.get_latest_materialization_event(AssetKey("laion_face_report")) is not None
