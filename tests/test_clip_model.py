"""open_clip loading: a tiny config saved as a .pt file and as a local-dir folder loads back through the real
path with equal weights, outputs and space; random weights say so; offline tags fail before open_clip runs;
two spaces are never mixed."""

from __future__ import annotations

import json
import socket

import numpy as np
import open_clip
import pytest
import torch

from facelake.clip import model as clip_model
from facelake.clip.encoder import ClipEncoder
from facelake.clip.model import (
    LOCAL_CONFIG_FILE,
    ClipModelSpec,
    cached_tag_file,
    load_clip,
    save_checkpoint,
    save_local_dir,
)
from facelake.clip.space import FOREIGN_LABELS, canonical_config, config_name, state_dict_sha256
from facelake.lake.errors import InputError
from facelake.models.registry import ModelNotFoundError
from facelake.vectors.spaces import CONFIG_COLUMN, EmbeddingSpaceMismatchError, check_same_space
from synthetic.clip import TINY_NAME, register_tiny_config, textured_jpegs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    register_tiny_config(tmp_path_factory.mktemp("clip-config"))
    return load_clip(ClipModelSpec(TINY_NAME, seed=0))


def test_random_weights_are_seeded_and_flagged(tiny):
    again = load_clip(ClipModelSpec(TINY_NAME, seed=0))
    other = load_clip(ClipModelSpec(TINY_NAME, seed=1))
    assert tiny.random_init and tiny.source == "random"
    assert tiny.provenance()["random_init"] is True
    assert "RANDOM WEIGHTS" in tiny.warning and tiny.profile.name in tiny.warning
    assert "RANDOM TEST WEIGHTS" in tiny.profile.describe()
    assert tiny.profile.provenance()["embedder_random_init"] is True
    assert again.profile == tiny.profile, "same seed, same weights, same space"
    assert other.profile.weights_sha256 != tiny.profile.weights_sha256
    assert tiny.profile.name == "open_clip:custom" and tiny.profile.dimension == 32


def _outputs(loaded) -> tuple[np.ndarray, np.ndarray]:
    encoder = ClipEncoder(loaded, device="cpu", batch_size=4)
    return encoder.encode_images(textured_jpegs(5, seed=3)), encoder.encode_text(["a face", "a smiling man"])


def test_pt_file_and_local_dir_load_back_equal_weights_outputs_and_space(tiny, tmp_path):
    pt = save_checkpoint(tiny, tmp_path / "tiny.pt")
    folder = save_local_dir(tiny, tmp_path / "tiny-dir")
    assert folder == f"local-dir:{tmp_path / 'tiny-dir'}"
    from_file = load_clip(ClipModelSpec(TINY_NAME, pretrained=pt, seed=99))
    from_dir = load_clip(ClipModelSpec(folder, seed=123))
    assert from_file.source == f"file:{pt}" and from_dir.source.startswith("local-dir:")
    reference = tiny.model.state_dict()
    for loaded in (from_file, from_dir):
        state = loaded.model.state_dict()
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[k], reference[k]) for k in reference), (
            "weights differ after the round trip"
        )
        check_same_space([tiny.profile, loaded.profile])
        assert loaded.profile.weights_sha256 == tiny.profile.weights_sha256
        assert loaded.profile.config == tiny.profile.config
        assert loaded.random_init, "the files record that these are random weights"
    images, texts = _outputs(tiny)
    for loaded in (from_file, from_dir):
        other_images, other_texts = _outputs(loaded)
        np.testing.assert_array_equal(other_images, images)
        np.testing.assert_array_equal(other_texts, texts)


def test_weights_hash_is_dtype_normalised_and_key_ordered(tiny):
    state = tiny.model.state_dict()
    half = {k: (v.half().float() if v.is_floating_point() else v) for k, v in state.items()}
    reordered = dict(reversed(list(half.items())))
    assert state_dict_sha256(half) == state_dict_sha256(reordered)
    as_half = {k: (v.half() if v.is_floating_point() else v) for k, v in half.items()}
    assert state_dict_sha256(as_half) == state_dict_sha256(half), "float16 storage of the same values"
    assert state_dict_sha256(half) != state_dict_sha256(state)


def test_a_recorded_hash_that_does_not_match_the_weights_is_refused(tiny, tmp_path):
    pt = save_checkpoint(tiny, tmp_path / "tiny.pt")
    sidecar = tmp_path / "tiny.json"
    sidecar.write_text(json.dumps({"random_init": True, "weights_sha256": "0" * 64}))
    with pytest.raises(InputError, match="does not match"):
        load_clip(ClipModelSpec(TINY_NAME, pretrained=pt))


def test_the_space_is_the_resolved_config_including_quick_gelu(tiny, tmp_path):
    quick = load_clip(ClipModelSpec(TINY_NAME, seed=0, force_quick_gelu=True))
    assert quick.profile.weights_sha256 == tiny.profile.weights_sha256, "QuickGELU has no weights"
    assert json.loads(quick.profile.config)["quick_gelu"] is True
    assert quick.profile.config != tiny.profile.config
    with pytest.raises(EmbeddingSpaceMismatchError) as error:
        check_same_space([tiny.profile, quick.profile])
    assert tiny.profile.name in str(error.value) and "config" in str(error.value)
    # a missing quick_gelu and an explicit false are one config
    explicit = dict(json.loads(tiny.profile.config))
    assert (
        canonical_config({**open_clip.get_model_config(TINY_NAME), "quick_gelu": False})
        == tiny.profile.config
    )
    assert explicit["quick_gelu"] is False


def test_stock_names_come_from_the_config_not_the_spelling():
    plain = canonical_config(open_clip.get_model_config("ViT-B-32"))
    quick = canonical_config({**open_clip.get_model_config("ViT-B-32"), "quick_gelu": True})
    assert config_name(plain) == "ViT-B-32"
    assert config_name(quick) == "ViT-B-32-quickgelu"
    assert config_name(canonical_config(open_clip.get_model_config("ViT-L-14-336-quickgelu"))) == (
        "ViT-L-14-336-quickgelu"
    )


def test_foreign_label_table_maps_sfhq_clip_to_the_quickgelu_config():
    entry = FOREIGN_LABELS["CLIP_ViTL_14@336"]
    assert (entry.model, entry.pretrained, entry.dimension) == ("ViT-L-14-336-quickgelu", "openai", 768)
    spec = ClipModelSpec.from_label("CLIP_ViTL_14@336")
    assert spec.model == "ViT-L-14-336-quickgelu" and spec.pretrained == "openai"
    config = open_clip.get_model_config(spec.model)
    assert config["embed_dim"] == 768 and config["quick_gelu"] is True
    assert config["vision_cfg"]["image_size"] == 336
    with pytest.raises(KeyError, match="CLIP_ViTL_14@336"):
        ClipModelSpec.from_label("CLIP_ViTB_16")


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything opens a socket or reaches open_clip's model factory or downloaders."""

    def refuse(*args, **kwargs):
        raise AssertionError("the network (or open_clip's factory) was reached")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(open_clip, "create_model_and_transforms", refuse)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", refuse)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_hf", refuse)
    monkeypatch.setattr(open_clip.factory, "download_pretrained", refuse)


@pytest.mark.parametrize("switch", ["HF_HUB_OFFLINE", "FACELAKE_OFFLINE"])
def test_an_offline_tag_fails_at_once_naming_the_model_and_how_to_provide_it(
    switch, tmp_path, monkeypatch, no_network
):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("FACELAKE_OFFLINE", raising=False)
    monkeypatch.setenv(switch, "1")
    spec = ClipModelSpec("ViT-L-14-336-quickgelu", "openai", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ModelNotFoundError) as error:
        load_clip(spec)
    message = str(error.value)
    assert "ViT-L-14-336-quickgelu" in message and "openai" in message
    assert f"{switch}=1" in message
    assert "local-dir:" in message and "pretrained" in message, "says how to provide the weights"
    assert "ViT-L-14-336px.pt" in message, "names where it looked"


def test_an_offline_hf_hub_model_fails_at_once(monkeypatch, tmp_path, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFoundError, match="hf-hub:laion/nothing"):
        load_clip(ClipModelSpec("hf-hub:laion/nothing", cache_dir=str(tmp_path / "hub")))


def test_an_offline_tag_uses_a_cached_file_without_the_network(tmp_path):
    cache = tmp_path / "clip-cache"
    cache.mkdir()
    assert cached_tag_file("ViT-L-14-336-quickgelu", "openai", str(cache))[0] is None
    (cache / "ViT-L-14-336px.pt").write_bytes(b"weights")
    found, looked = cached_tag_file("ViT-L-14-336-quickgelu", "openai", str(cache))
    assert found == str(cache / "ViT-L-14-336px.pt") and found in looked


def test_openai_weights_under_the_plain_config_are_refused(monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="ViT-L-14-336-quickgelu"):
        load_clip(ClipModelSpec("ViT-L-14-336", "openai"))


def test_unknown_configs_tags_and_missing_files_are_clear_errors(tiny, tmp_path):
    with pytest.raises(ValueError, match="unknown open_clip model config 'ViT-Nope'"):
        load_clip(ClipModelSpec("ViT-Nope"))
    with pytest.raises(ValueError, match="neither a pretrained tag"):
        load_clip(ClipModelSpec("ViT-B-32", "no-such-tag"))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_clip(ClipModelSpec(TINY_NAME, str(tmp_path / "missing.pt")))
    with pytest.raises(InputError, match=LOCAL_CONFIG_FILE):
        load_clip(ClipModelSpec(f"local-dir:{tmp_path}"))
    folder = save_local_dir(tiny, tmp_path / "dir")
    with pytest.raises(ValueError, match="pretrained=None"):
        load_clip(ClipModelSpec(folder, pretrained="openai"))


def test_space_mismatch_names_both_spaces(tiny):
    other = load_clip(ClipModelSpec(TINY_NAME, seed=1))
    with pytest.raises(EmbeddingSpaceMismatchError) as error:
        check_same_space([tiny.profile.provenance(), other.profile])
    message = str(error.value)
    assert tiny.profile.weights_sha256[:12] in message and other.profile.weights_sha256[:12] in message
    assert CONFIG_COLUMN in tiny.profile.provenance()


def test_module_checks_offline_before_open_clip(monkeypatch, no_network):
    """The offline decision is ours: the factory is never called (it is patched to fail above)."""
    monkeypatch.setenv("FACELAKE_OFFLINE", "yes")
    spec = ClipModelSpec("ViT-B-32-quickgelu", "openai", cache_dir="/nonexistent-cache")
    with pytest.raises(ModelNotFoundError):
        clip_model.load_clip(spec)
