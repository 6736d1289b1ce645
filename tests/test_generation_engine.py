"""Arc2Face on diffusers: the real loader over random components in the released folder layout, the identity
conditioning (the "id" token's input embedding is the zero-padded identity vector), batch-independent images,
the LCM-LoRA few-step mode, the generator's identity space, and the clear errors when weights are absent."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from facelake.faces.identity import EmbedderProfile, EmbeddingSpaceMismatchError
from facelake.generation.conditioning import MAX_LENGTH, PROMPT
from facelake.generation.generator import (
    RANDOM_WEIGHTS_WARNING,
    Arc2FaceGenerator,
    Sampling,
    load_components,
    load_generator,
)
from facelake.generation.layout import (
    FOLDER_SIDECAR,
    LORA_FILE,
    few_step_available,
    generator_available,
    resolve_arc2face_folders,
)
from facelake.generation.seeds import image_seeds, perturbed_embeddings
from facelake.generation.space import UNPINNED, arc2face_identity_space, check_identity_space
from facelake.lake.errors import InputError
from facelake.models.registry import ModelNotFoundError, ModelRegistry, file_sha256
from synthetic.arc2face_tiny import (
    ARC2FACE_DIR,
    BASE_DIR,
    LORA_DIR,
    Arc2FaceFixture,
    build_arc2face_components,
)

SIZE = 32
STEPS = 2


def tiny_components(tmp_path_factory: pytest.TempPathFactory) -> Arc2FaceFixture:
    """The tiny random components with a LoRA, built once per test session (shared by the generation tests)."""
    root = tmp_path_factory.getbasetemp() / "arc2face-tiny"
    marker = root / ".built"
    if not marker.exists():
        build_arc2face_components(root, preset="tiny", lora=True, seed=0)
        marker.touch()
    return Arc2FaceFixture(root, root / BASE_DIR, root / ARC2FACE_DIR, root / LORA_DIR, "tiny")


def unit_vectors(n: int, seed: int, dimension: int = 512) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, dimension))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Arc2FaceFixture:
    return tiny_components(tmp_path_factory)


@pytest.fixture
def registry(tiny: Arc2FaceFixture, tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "cache", paths=tiny.registry_paths())


@pytest.fixture
def generator(registry: ModelRegistry) -> Arc2FaceGenerator:
    return load_generator(registry, Sampling(steps=STEPS, height=SIZE, width=SIZE))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuses (and records) any urlopen or hub download: proof that nothing is fetched."""
    import huggingface_hub

    calls: list[str] = []

    def refuse(*args, **kwargs):
        calls.append(str(args[:1]))
        raise AssertionError(f"network access attempted: {args[:1]}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return calls


# --- the released layout, loaded through the registry ---------------------------------------------------


def test_components_load_through_the_registry_as_diffusers_and_transformers_classes(
    tiny: Arc2FaceFixture, registry: ModelRegistry, no_network: list[str]
) -> None:
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    folders = resolve_arc2face_folders(registry)
    assert folders.base.root == tiny.base and folders.arc2face.root == tiny.arc2face
    assert folders.arc2face.files["encoder/weights"].name == "pytorch_model.bin"  # as released
    components = load_components(folders, device="cpu")
    pipeline = components.pipeline
    assert type(pipeline) is StableDiffusionPipeline
    assert type(pipeline.unet) is UNet2DConditionModel and type(pipeline.vae) is AutoencoderKL
    assert type(pipeline.text_encoder) is CLIPTextModel and isinstance(pipeline.tokenizer, CLIPTokenizer)
    assert type(pipeline.scheduler) is DPMSolverMultistepScheduler
    assert pipeline.unet.config.cross_attention_dim == pipeline.text_encoder.config.hidden_size == 544
    assert components.dtype == torch.float32 and components.device == "cpu"
    saved = torch.load(tiny.arc2face / "encoder" / "pytorch_model.bin", weights_only=True)
    loaded = pipeline.text_encoder.state_dict()
    assert set(saved) == {f"text_model.{name}" for name in loaded}  # transformers 4 names, as released
    assert all(torch.equal(loaded[name], saved[f"text_model.{name}"]) for name in loaded)
    assert no_network == []


def test_the_tokenizer_is_clips_and_the_identity_prompt_has_one_id_token(
    generator: Arc2FaceGenerator,
) -> None:
    prompt = generator.components.prompt
    ids = prompt.input_ids[0].tolist()
    assert ids[:7] == [49406, 1125, 539, 320, 1014, 2533, 49407]
    assert len(ids) == MAX_LENGTH and set(ids[7:]) == {49407}
    assert prompt.id_token_id == 1014 and prompt.id_position == 4
    assert generator.components.pipeline.tokenizer(PROMPT).input_ids == ids[:7]


def test_the_id_token_input_embedding_is_exactly_the_zero_padded_identity(
    generator: Arc2FaceGenerator,
) -> None:
    encoder = generator.components.pipeline.text_encoder
    table = encoder.get_input_embeddings().weight.detach()
    captured: list[torch.Tensor] = []
    handle = encoder.get_input_embeddings().register_forward_hook(
        lambda module, args, output: captured.append(output.detach().clone())
    )
    try:
        identities = unit_vectors(3, seed=1)
        generator.encode(identities)
        generator.components.prompt.unconditional()
    finally:
        handle.remove()
    conditioned, empty = captured
    position = generator.components.prompt.id_position
    expected = torch.zeros(3, 544)
    expected[:, :512] = torch.from_numpy(identities)
    assert torch.equal(conditioned[:, position], expected)  # exactly: the vector, then 32 zeros
    assert torch.count_nonzero(conditioned[:, position, 512:]) == 0
    ids = generator.components.prompt.input_ids[0]
    others = [p for p in range(MAX_LENGTH) if p != position]
    assert torch.equal(conditioned[:, others], table[ids[others]].expand(3, -1, -1))  # the rest untouched
    assert torch.equal(
        empty[0], table[generator.components.prompt.empty_ids[0]]
    )  # the hook is idle otherwise


def test_two_identities_give_different_conditioning_and_different_images(
    generator: Arc2FaceGenerator,
) -> None:
    first, second = unit_vectors(2, seed=2)
    embeds = generator.encode(np.stack([first, second, first]))
    assert not torch.allclose(embeds[0], embeds[1]) and torch.equal(embeds[0], embeds[2])
    images = generator.generate(np.stack([first, second]), [7, 7], output="float")
    assert images.shape == (2, SIZE, SIZE, 3) and images.dtype == np.float32
    assert np.abs(images[0] - images[1]).max() > 1e-3  # same latent seed, different identity
    again = generator.generate(np.stack([first]), [8], output="float")
    assert np.abs(images[0] - again[0]).max() > 1e-3  # same identity, different latent noise


@pytest.mark.parametrize("few_step", [False, True], ids=["dpm-25-step-default", "lcm-lora"])
def test_an_image_regenerated_alone_equals_the_same_image_in_a_batch(
    registry: ModelRegistry, few_step: bool
) -> None:
    steps = None if few_step else STEPS
    generator = load_generator(registry, Sampling(steps=steps, height=SIZE, width=SIZE, few_step=few_step))
    vectors = unit_vectors(4, seed=3)
    seeds = [11, 12, 13, 14]
    batch = generator.generate(vectors, seeds, output="float")
    alone = generator.generate(vectors[2:3], seeds[2:3], output="float")
    np.testing.assert_allclose(alone[0], batch[2], atol=1e-5, rtol=0)
    reordered = generator.generate(vectors[[3, 2]], [14, 13], output="float")
    np.testing.assert_allclose(reordered[1], batch[2], atol=1e-5, rtol=0)
    as_uint8 = generator.generate(vectors[2:3], seeds[2:3])
    assert (
        as_uint8.dtype == np.uint8 and np.abs(as_uint8[0].astype(float) - batch[2] * 255).max() <= 0.5 + 1e-3
    )


def test_few_step_mode_loads_the_lora_and_says_so(registry: ModelRegistry, tiny: Arc2FaceFixture) -> None:
    default = load_generator(registry, Sampling(steps=STEPS, height=SIZE, width=SIZE))
    fast = load_generator(registry, Sampling(height=SIZE, width=SIZE, few_step=True))
    from diffusers import LCMScheduler

    assert type(fast.components.pipeline.scheduler) is LCMScheduler
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    base_weight = dict(default.components.pipeline.unet.named_parameters())[name]
    fused_weight = dict(fast.components.pipeline.unet.named_parameters())[name]
    assert not torch.equal(base_weight, fused_weight)  # the LoRA is fused into the UNet
    assert not any("lora" in n for n, _ in fast.components.pipeline.unet.named_parameters())
    provenance = fast.provenance()
    assert provenance["mode"] == "lcm-lora" and provenance["scheduler"] == "LCMScheduler"
    assert provenance["steps"] == 2 and provenance["guidance"] == 1.0
    assert provenance["weights"]["lora"] == file_sha256(str(tiny.lora / LORA_FILE))
    assert default.provenance()["mode"] == "default" and "lora" not in default.provenance()["weights"]
    assert default.config()["weights_sha256"] != fast.config()["weights_sha256"]
    vectors = unit_vectors(1, seed=4)
    assert (
        np.abs(
            fast.generate(vectors, [5], output="float") - default.generate(vectors, [5], output="float")
        ).max()
        > 1e-3
    )


def test_random_components_are_labelled_in_every_description(generator: Arc2FaceGenerator) -> None:
    assert generator.random_init and generator.warning == RANDOM_WEIGHTS_WARNING
    provenance = generator.provenance()
    assert provenance["random_init"] is True and provenance["warning"] == RANDOM_WEIGHTS_WARNING
    assert "RANDOM TEST WEIGHTS" in generator.describe()
    assert provenance["steps"] == STEPS and provenance["guidance"] == 3.0
    assert provenance["scheduler"] == "DPMSolverMultistepScheduler" and provenance["dtype"] == "float32"


def test_sampling_defaults_are_arc2faces() -> None:
    default, fast = Sampling(), Sampling(few_step=True)
    assert (default.num_steps, default.guidance_scale, default.scheduler) == (
        25,
        3.0,
        "DPMSolverMultistepScheduler",
    )
    assert (default.height, default.width) == (512, 512)
    assert (fast.num_steps, fast.guidance_scale, fast.scheduler, fast.mode) == (
        2,
        1.0,
        "LCMScheduler",
        "lcm-lora",
    )
    with pytest.raises(ValueError, match="multiples of 8"):
        Sampling(height=100)


# --- missing weights -------------------------------------------------------------------------------------


def test_missing_weights_offline_raise_a_clear_error_and_fetch_nothing(
    tmp_path: Path, no_network: list[str]
) -> None:
    registry = ModelRegistry(tmp_path / "empty-cache")
    with pytest.raises(ModelNotFoundError) as caught:
        load_generator(registry, Sampling(height=SIZE, width=SIZE))
    message = str(caught.value)
    assert "'stable-diffusion-v1-5' not found" in message
    assert str(tmp_path / "empty-cache" / "stable-diffusion-v1-5" / "vae" / "config.json") in message
    assert "vae/, scheduler/ and tokenizer/" in message and "nothing is downloaded" in message
    assert generator_available(registry) == message
    assert not few_step_available(registry)
    assert no_network == []


def test_an_incomplete_or_lora_less_folder_names_what_is_missing(
    tiny: Arc2FaceFixture, tmp_path: Path, no_network: list[str]
) -> None:
    copy = tmp_path / "Arc2Face"
    shutil.copytree(tiny.arc2face, copy)
    (copy / "encoder" / "pytorch_model.bin").unlink()
    registry = ModelRegistry(
        tmp_path / "cache", paths={"stable-diffusion-v1-5": str(tiny.base), "arc2face": str(copy)}
    )
    with pytest.raises(ModelNotFoundError, match="'arc2face' not found") as caught:
        resolve_arc2face_folders(registry)
    assert str(copy / "encoder" / "pytorch_model.bin") in str(caught.value)
    assert "encoder/ (id encoder)" in str(caught.value)
    no_lora = ModelRegistry(
        tmp_path / "cache", paths={"stable-diffusion-v1-5": str(tiny.base), "arc2face": str(tiny.arc2face)}
    )
    with pytest.raises(ModelNotFoundError, match="'lcm-lora-sdv1-5' not found") as caught:
        load_generator(no_lora, Sampling(few_step=True, height=SIZE, width=SIZE))
    assert "latent-consistency/lcm-lora-sdv1-5" in str(caught.value)
    assert generator_available(no_lora) is None and not few_step_available(no_lora)
    assert no_network == []


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_a_malicious_encoder_pickle_is_refused_and_nothing_it_carries_runs(
    tiny: Arc2FaceFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "Arc2Face"
    shutil.copytree(tiny.arc2face, copy)
    torch.save(
        {"text_model.embeddings.token_embedding.weight": _Evil()}, copy / "encoder" / "pytorch_model.bin"
    )
    monkeypatch.chdir(tmp_path)
    registry = ModelRegistry(
        tmp_path / "cache", paths={"stable-diffusion-v1-5": str(tiny.base), "arc2face": str(copy)}
    )
    with pytest.raises(InputError, match="refused to unpickle") as caught:
        load_components(resolve_arc2face_folders(registry), device="cpu")
    assert caught.value.path == str(copy / "encoder" / "pytorch_model.bin")
    assert not (tmp_path / "PWNED").exists()


def test_folders_in_the_cache_dir_are_found_without_configured_paths(tiny: Arc2FaceFixture) -> None:
    registry = ModelRegistry(
        tiny.root
    )  # <cache>/stable-diffusion-v1-5, <cache>/Arc2Face, <cache>/lcm-lora-sdv1-5
    folders = resolve_arc2face_folders(registry, few_step=True)
    assert (folders.base.root, folders.arc2face.root, folders.lora.root) == (
        tiny.base,
        tiny.arc2face,
        tiny.lora,
    )
    assert folders.random_init and json.loads((tiny.base / FOLDER_SIDECAR).read_text())["random_init"] is True


# --- the identity space ----------------------------------------------------------------------------------


def dlib_space() -> EmbedderProfile:
    return EmbedderProfile("dlib_resnet_v1", 128, "d" * 64, False, 0.18)


def test_a_variant_packed_in_dlib_space_is_refused_naming_both_spaces(generator: Arc2FaceGenerator) -> None:
    assert generator.identity_space.name == "arcface_onnx" and generator.identity_space.dimension == 512
    assert generator.identity_space.weights_sha256 == UNPINNED  # no arcface.onnx beside the tiny Arc2Face
    with pytest.raises(EmbeddingSpaceMismatchError) as caught:
        check_identity_space(dlib_space(), generator.identity_space)
    message = str(caught.value)
    assert "dlib_resnet_v1 (128-d" in message and "arcface_onnx (512-d" in message
    assert "models.embedder=arcface" in message
    arcface = EmbedderProfile("arcface_onnx", 512, "a" * 64, True, 0.35)
    assert check_identity_space(arcface.provenance(), generator.identity_space)["embedder_dimension"] == 512


def test_an_arcface_onnx_beside_arc2face_pins_the_space_to_its_weights(tmp_path: Path) -> None:
    onnx = tmp_path / "arcface.onnx"
    onnx.write_bytes(b"pretend ArcFace weights")
    pinned = arc2face_identity_space(onnx)
    assert pinned.weights_sha256 == file_sha256(str(onnx))
    same = EmbedderProfile("arcface_onnx", 512, pinned.weights_sha256, False, 0.35)
    assert check_identity_space(same, pinned)["embedder_weights_sha256"] == pinned.weights_sha256
    other = EmbedderProfile("arcface_onnx", 512, "b" * 64, False, 0.35)
    with pytest.raises(EmbeddingSpaceMismatchError, match="other weights"):
        check_identity_space(other, pinned)
    with pytest.raises(EmbeddingSpaceMismatchError, match="dlib_resnet_v1"):
        check_identity_space(dlib_space(), pinned)


# --- seeds and embedding noise ---------------------------------------------------------------------------


def test_image_seeds_depend_only_on_the_images_name() -> None:
    seeds = image_seeds("v", "v-0000001", 3)
    assert seeds == image_seeds("v", "v-0000001", 3)
    others = [
        image_seeds("w", "v-0000001", 3),
        image_seeds("v", "v-0000002", 3),
        image_seeds("v", "v-0000001", 4),
        image_seeds("v", "v-0000001", 3, base_seed=1),
    ]
    assert len({seeds.latent, *(s.latent for s in others)}) == 5
    assert seeds.latent != seeds.embedding and 0 <= seeds.latent < 2**63


def test_embedding_noise_is_normalize_x_plus_beta_n() -> None:
    x = unit_vectors(3, seed=5)
    noisy = perturbed_embeddings(x, 0.05, [1, 2, 3])
    np.testing.assert_allclose(np.linalg.norm(noisy, axis=1), 1.0, atol=1e-6)
    n = torch.randn(512, generator=torch.Generator().manual_seed(2)).double().numpy()
    expected = x[1] + 0.05 * n
    np.testing.assert_allclose(noisy[1], expected / np.linalg.norm(expected), atol=1e-6)
    np.testing.assert_array_equal(perturbed_embeddings(x[1:2], 0.05, [2]), noisy[1:2])  # alone == in a batch
    np.testing.assert_allclose(perturbed_embeddings(x, 0.0, [1, 2, 3]), x, atol=1e-7)
    cosine = np.sum(noisy * x, axis=1)
    assert np.all(cosine < 1.0) and np.all(cosine > 0.5)  # beta·sqrt(512) ~ 1.1: visibly perturbed, same side
