"""The demo's generation step: with the Arc2Face folders configured it embeds in their ArcFace space and adds a
tiny variant; without them it says in one line what to provide and where."""

from __future__ import annotations

from pathlib import Path

from dagster_project.demo_generation import GENERATION_VARIANT, TINY_VARIANT, generation_config, merge_config
from facelake.settings import FacelakeSettings
from synthetic.arc2face_tiny import build_arc2face_components
from synthetic.arcface_tiny import build_test_arcface, write_random_sidecar


def settings_with(models: dict, tmp_path: Path) -> FacelakeSettings:
    return FacelakeSettings(
        root=str(tmp_path / "lake"), models={"cache_dir": str(tmp_path / "cache"), **models}
    )


def test_without_generator_weights_one_line_says_what_and_where(tmp_path: Path) -> None:
    additions, line = generation_config(settings_with({}, tmp_path))
    assert additions == {}
    assert line is not None and "\n" not in line
    assert "stable-diffusion-v1-5, arc2face" in line and str(tmp_path / "cache") in line


def test_with_generator_weights_the_demo_embeds_in_their_arcface_space(tmp_path: Path) -> None:
    arcface = tmp_path / "arcface.onnx"
    build_test_arcface(arcface)
    write_random_sidecar(arcface)
    tiny = build_arc2face_components(tmp_path / "models", preset="tiny", arcface_onnx=arcface)
    settings = settings_with({"paths": tiny.registry_paths()}, tmp_path)
    additions, line = generation_config(settings)
    assert line is None
    assert additions["models"]["embedder"] == "arcface"
    assert additions["models"]["paths"]["arcface"] == str(tiny.arc2face / "arcface.onnx")
    merged = FacelakeSettings(**merge_config(settings.model_dump(), additions))
    assert set(merged.hyperface.variants) == {"demo", "10k", "50k", GENERATION_VARIANT}
    assert (
        merged.generation_for(GENERATION_VARIANT).images_per_identity
        == TINY_VARIANT["generation"]["images_per_identity"]
    )
    assert merged.models.paths["stable-diffusion-v1-5"] == tiny.registry_paths()["stable-diffusion-v1-5"]


def test_an_arc2face_folder_without_its_arcface_model_is_said(tmp_path: Path) -> None:
    tiny = build_arc2face_components(tmp_path / "models", preset="tiny")
    additions, line = generation_config(settings_with({"paths": tiny.registry_paths()}, tmp_path))
    assert additions == {} and "no arcface.onnx" in line
