"""CLIP embeddings: unit norm, determinism, batch-size independence, the decode pool, clip-retrieval's layout
(read back with plain numpy and pyarrow), and the per-shard stage's commit and resume after a kill."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from facelake.clip.encoder import ClipEncoder, EncodeStats
from facelake.clip.layout import (
    SPACE_FILE,
    check_unit,
    combine,
    metadata_table,
    read_layout,
    read_partition,
    write_part,
)
from facelake.clip.model import ClipModelSpec, load_clip
from facelake.clip.stage import ClipSample, commit_clip_embeddings, webdataset_samples
from facelake.lake.commit import PartitionArtifact
from facelake.lake.errors import InputError
from facelake.lake.hashing import combine_hashes
from facelake.lake.webdataset_reader import ImageShard
from facelake.vectors.spaces import EmbeddingSpaceMismatchError
from synthetic.clip import TINY_NAME, register_tiny_config, textured_jpegs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    register_tiny_config(tmp_path_factory.mktemp("clip-config"))
    return load_clip(ClipModelSpec(TINY_NAME, seed=0))


@pytest.fixture(scope="module")
def other(tiny):
    return load_clip(ClipModelSpec(TINY_NAME, seed=1))


@pytest.fixture(scope="module")
def jpegs():
    return textured_jpegs(23, size=(48, 40), seed=0) + textured_jpegs(4, size=(96, 64), seed=5)


def test_embeddings_are_unit_deterministic_and_batch_size_independent(tiny, jpegs):
    first = ClipEncoder(tiny, device="cpu", batch_size=8).encode_images(jpegs)
    again = ClipEncoder(tiny, device="cpu", batch_size=8).encode_images(jpegs)
    np.testing.assert_array_equal(first, again)
    for batch_size, workers in ((1, 1), (5, 3), (64, 2)):
        other = ClipEncoder(tiny, device="cpu", batch_size=batch_size, decode_workers=workers)
        np.testing.assert_allclose(other.encode_images(jpegs), first, atol=2e-6)
    assert first.dtype == np.float32 and first.shape == (len(jpegs), 32)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-6)
    stored = first.astype(np.float16)
    assert check_unit(stored) < 1e-3, "unit to float16 precision"
    assert len({row.tobytes() for row in stored}) == len(jpegs), "distinct images, distinct vectors"


def test_the_pool_path_equals_decoding_each_image_then_encoding(tiny, jpegs):
    from PIL import Image

    encoder = ClipEncoder(tiny, device="cpu", batch_size=16)
    import torch

    plain = encoder.encode_tensors(
        torch.stack([tiny.preprocess(Image.open(io.BytesIO(data)).convert("RGB")) for data in jpegs[:16]])
    )
    np.testing.assert_array_equal(encoder.encode_images(jpegs[:16]), plain)


def test_text_embeddings_and_bf16(tiny, jpegs):
    fp32 = ClipEncoder(tiny, device="cpu", batch_size=2)
    texts = fp32.encode_text(["a smiling old man with a beard", "a cat", "a smiling old man with a beard"])
    assert texts.shape == (3, 32)
    np.testing.assert_array_equal(texts[0], texts[2])
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-6)
    bf16 = ClipEncoder(tiny, device="cpu", precision="bf16")
    assert bf16.settings()["precision"] == "bf16"
    cos = np.sum(bf16.encode_images(jpegs[:4]) * fp32.encode_images(jpegs[:4]), axis=1)
    assert (cos > 0.98).all()
    with pytest.raises(ValueError, match="fp16"):
        ClipEncoder(tiny, device="cpu", precision="fp16")


def test_undecodable_images_are_skipped_and_reported(tiny, jpegs):
    encoder = ClipEncoder(tiny, device="cpu", batch_size=4)
    items = [(f"k{i}", data) for i, data in enumerate(jpegs[:6])]
    items.insert(2, ("broken", b"not an image"))
    stats = EncodeStats()
    batches = list(encoder.stream(items, stats))
    assert [key for b in batches for key, _ in b.failed] == ["broken"]
    assert [key for b in batches for key in b.items] == [f"k{i}" for i in range(6)]
    assert stats.images == 6 and stats.failed == 1 and stats.batches == 2
    assert np.concatenate([b.sizes for b in batches]).tolist() == [[48, 40]] * 6
    with pytest.raises(ValueError, match="image 1 does not decode"):
        encoder.encode_images([jpegs[0], b"junk"])


def test_layout_files_load_with_numpy_and_pyarrow(tiny, jpegs, local_storage):
    vectors = ClipEncoder(tiny, device="cpu").encode_images(jpegs[:7])
    sizes = np.array([[48, 40]] * 7)
    meta = metadata_table(
        [f"key{i}" for i in range(7)],
        tiny.profile,
        captions=[f"caption {i}" for i in range(7)],
        urls=[f"http://x/{i}.jpg" for i in range(7)],
        sample_ids=list(range(100, 107)),
        sizes=sizes,
    )
    prefix = local_storage.uri("emb")
    written = write_part(local_storage, prefix, 3, vectors, meta)
    assert [w.path for w in written] == ["img_emb/img_emb_00003.npy", "metadata/metadata_00003.parquet"]
    array = np.load(f"{prefix}/img_emb/img_emb_00003.npy")
    assert array.dtype == np.float16 and array.shape == (7, 32)
    np.testing.assert_allclose(np.linalg.norm(array.astype(np.float64), axis=1), 1.0, atol=1e-3)
    np.testing.assert_array_equal(array, vectors.astype(np.float16))
    table = pq.read_table(f"{prefix}/metadata/metadata_00003.parquet")
    assert table.column("image_path").to_pylist() == [f"key{i}" for i in range(7)]
    assert table.column("SAMPLE_ID").to_pylist() == list(range(100, 107))
    assert {"caption", "url", "width", "height", "embedder_weights_sha256"} <= set(table.column_names)
    back = read_layout(local_storage, prefix)
    assert back.space == tiny.profile.provenance() and back.parts == [("00003", 7)]
    np.testing.assert_array_equal(back.vectors, array)


def test_reading_refuses_parts_of_two_spaces_naming_both(tiny, other, jpegs, local_storage):
    prefix = local_storage.uri("mixed")
    for index, loaded in ((0, tiny), (1, other)):
        vectors = ClipEncoder(loaded, device="cpu").encode_images(jpegs[:3])
        write_part(local_storage, prefix, index, vectors, metadata_table(["a", "b", "c"], loaded.profile))
    with pytest.raises(EmbeddingSpaceMismatchError) as error:
        read_layout(local_storage, prefix)
    assert tiny.profile.weights_sha256[:12] in str(error.value)
    assert other.profile.weights_sha256[:12] in str(error.value)
    one = local_storage.uri("one")
    two = local_storage.uri("two")
    for loaded, where in ((tiny, one), (other, two)):
        vectors = ClipEncoder(loaded, device="cpu").encode_images(jpegs[:2])
        write_part(local_storage, where, 0, vectors, metadata_table(["a", "b"], loaded.profile))
    with pytest.raises(EmbeddingSpaceMismatchError):
        combine([read_layout(local_storage, one), read_layout(local_storage, two)])
    local_storage.rm(f"{one}/metadata/metadata_00000.parquet")
    with pytest.raises(InputError, match="only embeddings"):
        read_layout(local_storage, one)


# --- the per-shard stage ------------------------------------------------------------------------


def _write_shard(storage, uri: str, keys: list[str], ids: list[int], images: list[bytes]) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for key, sample_id, image in zip(keys, ids, images, strict=True):
            meta = json.dumps({"SAMPLE_ID": sample_id, "caption": f"photo {key}", "url": f"http://h/{key}"})
            for name, data in ((f"{key}.jpg", image), (f"{key}.txt", b"c"), (f"{key}.json", meta.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    storage.write_bytes(uri, buffer.getvalue())


@pytest.fixture
def shards(local_storage, jpegs):
    """Three webdataset shards of 9 images each (the middle one with a corrupt image)."""
    out = {}
    for shard_id in range(3):
        keys = [f"{shard_id:05d}{i:04d}" for i in range(9)]
        ids = [1000 * shard_id + i for i in range(9)]
        images = list(jpegs[9 * shard_id : 9 * shard_id + 9])
        if len(images) < 9:
            images += textured_jpegs(9 - len(images), seed=50)
        if shard_id == 1:
            images[4] = b"\xff\xd8 truncated"
        uri = local_storage.uri("images", f"{shard_id:05d}.tar")
        _write_shard(local_storage, uri, keys, ids, images)
        fingerprint = combine_hashes([uri, *keys])
        out[shard_id] = ImageShard(shard_id, uri, np.array(ids, np.int64), tuple(keys), fingerprint)
    return out


def _commit(storage, shards, encoder, root: str, samples_of=None, force=False):
    artifact = PartitionArtifact(storage, "laion_face", root, "00000")
    samples_of = samples_of or (lambda i: webdataset_samples(storage, shards[i]))
    outcome = commit_clip_embeddings(
        artifact, {"model": "tiny"}, "v1", "test", shards, samples_of, encoder, force=force
    )
    return artifact, outcome


def test_stage_commits_the_layout_and_resumes_after_a_kill(tiny, shards, local_storage):
    encoder = ClipEncoder(tiny, device="cpu", batch_size=4)
    reference, outcome = _commit(local_storage, shards, encoder, "clip_reference")
    full = read_partition(reference)
    assert outcome.manifest.rows == 26 and outcome.manifest.extra["failed_images"] == 1
    assert (
        outcome.manifest.extra["random_init"] is True
        and "RANDOM WEIGHTS" in outcome.manifest.extra["warning"]
    )
    assert outcome.manifest.extra["images_per_second"] > 0
    assert full.parts == [("00000", 9), ("00001", 8), ("00002", 9)]
    assert "000010004" not in full.keys, "the corrupt image is skipped"
    assert full.metadata.column("SAMPLE_ID").to_pylist()[:2] == [0, 1]
    assert full.metadata.column("caption").to_pylist()[0] == "photo 000000000"
    assert full.metadata.column("url").to_pylist()[0] == "http://h/000000000"
    assert full.metadata.column("width").to_pylist()[0] == 48
    space = json.loads(local_storage.read_bytes(reference.uri(SPACE_FILE)))
    assert space["space"] == tiny.profile.provenance() and space["random_init"] is True
    listed = {f.path for f in outcome.manifest.files}
    assert {"img_emb/img_emb_00001.npy", "metadata/metadata_00001.parquet", SPACE_FILE} <= listed

    # a run killed while embedding shard 2 leaves shards 0 and 1 committed, and no partition
    def dies_on_two(i):
        if i == 2:
            raise KeyboardInterrupt("killed")
        return webdataset_samples(local_storage, shards[i])

    with pytest.raises(KeyboardInterrupt):
        _commit(local_storage, shards, encoder, "clip", samples_of=dies_on_two)
    artifact = PartitionArtifact(local_storage, "laion_face", "clip", "00000")
    assert artifact.manifest() is None
    resumed = _commit(local_storage, shards, encoder, "clip")[1]
    assert resumed.manifest.extra["shards_reused"] == 2 and resumed.manifest.extra["shards_done_now"] == 1
    back = read_partition(artifact)
    np.testing.assert_array_equal(back.vectors, full.vectors)
    assert back.metadata.equals(full.metadata)

    # a committed shard whose npy went missing is redone, not trusted
    local_storage.rm(artifact.uri("img_emb/img_emb_00000.npy"))
    again = _commit(local_storage, shards, encoder, "clip", force=True)[1]
    assert again.manifest.extra["shards_incomplete_redone"] == 1
    assert again.manifest.extra["shards_done_now"] == 1
    np.testing.assert_array_equal(read_partition(artifact).vectors, full.vectors)


def test_stage_redoes_every_shard_for_another_space(tiny, other, shards, local_storage):
    _commit(local_storage, shards, ClipEncoder(tiny, device="cpu"), "clip")
    outcome = _commit(local_storage, shards, ClipEncoder(other, device="cpu"), "clip", force=True)[1]
    assert outcome.manifest.extra["shards_done_now"] == 3
    artifact = PartitionArtifact(local_storage, "laion_face", "clip", "00000")
    assert read_partition(artifact).space == other.profile.provenance()


def test_samples_from_any_source(tiny, jpegs):
    encoder = ClipEncoder(tiny, device="cpu")
    from facelake.clip.stage import embed_samples

    samples = [ClipSample(f"img{i}.jpg", data, caption=None) for i, data in enumerate(jpegs[:3])]
    shard = embed_samples(encoder, samples)
    assert shard.metadata.column("image_path").to_pylist() == ["img0.jpg", "img1.jpg", "img2.jpg"]
    assert shard.metadata.column("SAMPLE_ID").null_count == 3


def test_jpeg_draft_decodes_at_reduced_scale_but_reports_the_original_size(tiny):
    big = textured_jpegs(4, size=(256, 192), seed=9)
    full = ClipEncoder(tiny, device="cpu")
    draft = ClipEncoder(tiny, device="cpu", jpeg_draft=True)
    assert draft.settings()["jpeg_draft"] is True and full.settings()["jpeg_draft"] is False
    prepared = draft.prepare(big[0])
    assert prepared.size == (256, 192) and tuple(prepared.tensor.shape) == (3, 32, 32)
    cos = np.sum(draft.encode_images(big) * full.encode_images(big), axis=1)
    assert (cos > 0.95).all()
    assert not np.array_equal(draft.encode_images(big), full.encode_images(big)), (
        "pixels differ, so it is a setting"
    )
