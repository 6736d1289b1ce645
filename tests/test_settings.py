"""Settings: defaults < YAML file < environment; invalid values are refused with the field named."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from facelake.laion.formats import LAION_20M_PARTS
from facelake.settings import load_settings


def test_yaml_file_then_env_override(tmp_path, monkeypatch):
    config = tmp_path / "facelake.yaml"
    config.write_text(
        "root: s3://bucket/lake\ndownload:\n  processes: 3\n  threads: 7\nschedule:\n  subset: 50m\n"
    )
    monkeypatch.setenv("FACELAKE_CONFIG", str(config))
    monkeypatch.setenv("FACELAKE_DOWNLOAD__THREADS", "9")
    monkeypatch.setenv("FACELAKE_S3__ENDPOINT_URL", "http://127.0.0.1:9000")
    settings = load_settings()
    assert settings.root == "s3://bucket/lake"
    assert settings.download.processes == 3 and settings.download.threads == 9
    assert settings.s3.endpoint_url == "http://127.0.0.1:9000"
    assert len(settings.schedule_parts()) == 32
    assert settings.storage().protocol == "s3"


def test_defaults_and_the_20m_subset(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FACELAKE_CONFIG", raising=False)
    settings = load_settings()
    assert settings.schedule_parts() == LAION_20M_PARTS
    assert [f"{i:05d}" for i in (0, 2, 5, 8, 13, 15, 17, 18, 21, 22, 24, 25, 28)] == LAION_20M_PARTS
    uri = settings.source_uri(settings.laion.meta_uri_template, part=7)
    assert uri.endswith("laion400m-meta/part-00007-5b54c5d5-bbcf-484d-a2ce-0d6f73df1a36-c000.snappy.parquet")


def test_invalid_values_name_the_field(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FACELAKE_DOWNLOAD__PROCESSES", "0")
    with pytest.raises(ValidationError, match="processes"):
        load_settings()


def test_missing_named_config_file_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("FACELAKE_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        load_settings()


def test_models_section_from_yaml_and_env(tmp_path, monkeypatch):
    config = tmp_path / "facelake.yaml"
    config.write_text("models:\n  cache_dir: /srv/models\n  paths:\n    arcface: /srv/glintr100.onnx\n")
    monkeypatch.setenv("FACELAKE_CONFIG", str(config))
    monkeypatch.setenv("FACELAKE_MODELS__EMBEDDER", "arcface")
    models = load_settings().models
    assert (models.cache_dir, models.paths, models.embedder) == (
        "/srv/models",
        {"arcface": "/srv/glintr100.onnx"},
        "arcface",
    )
    assert (models.allow_download, models.detector_backbone, models.detector_max_side) == (
        False,
        "mobilenet0.25",
        1024,
    )
    monkeypatch.setenv("FACELAKE_MODELS__EMBEDDER", "clip")
    with pytest.raises(ValidationError, match="embedder"):
        load_settings()
