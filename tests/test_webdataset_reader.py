"""Reading a downloaded part's images: success samples only, decoded, streamed from local disk and S3."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance
from PIL import Image

from facelake.laion import artifacts
from facelake.laion.download_accounting import RESOLVED_SCHEMA
from facelake.lake.commit import PartitionArtifact
from facelake.lake.errors import InputError
from facelake.lake.webdataset_reader import (
    CORRUPT,
    MISSING,
    ImageShard,
    iter_shard_images,
    part_image_shards,
)
from tests.test_laion_assets import run_part, samples_table


def success_ids(storage) -> set[int]:
    samples = samples_table(storage)
    return set(samples.filter(pc.equal(samples["status"], "success"))["sample_id"].to_pylist())


def read_all(storage, shards, **options) -> dict[int, np.ndarray]:
    images = {}
    for shard in shards:
        for batch in iter_shard_images(storage, shard, **options):
            assert batch.skipped == []
            assert len(batch.images) == len(batch.sample_ids) == len(batch.keys) == len(batch.metadata)
            images.update(zip(batch.sample_ids.tolist(), batch.images, strict=True))
    return images


def assert_world_images(world, images: dict[int, np.ndarray], expected_ids: set[int]) -> None:
    assert set(images) == expected_ids
    for sid, image in images.items():
        crop = world.crops[sid]
        assert image.dtype == np.uint8 and image.shape == (crop.height, crop.width, 3)


def check_part_reads(world, storage) -> None:
    """Every success sample, decoded to its photo's size; the thread pool and raw bytes agree."""
    shards = part_image_shards(storage, artifacts.images(storage, "00000"))
    expected = success_ids(storage)
    assert [s.shard_id for s in shards] == [0, 1, 2, 3]
    assert sum(len(s) for s in shards) == len(expected) == len(world.ids_of("face", "slow"))

    images = read_all(storage, shards, batch_size=16)
    assert_world_images(world, images, expected)
    some = sorted(images)[0]
    photo = np.asarray(Image.open(io.BytesIO(world.crops[some].jpeg)).convert("RGB"))
    assert np.abs(images[some].astype(int) - photo.astype(int)).mean() < 8, "the photo, re-encoded once"

    pooled = read_all(storage, shards, batch_size=16, decode_threads=2)
    assert all(np.array_equal(pooled[sid], images[sid]) for sid in images)
    batch = next(iter_shard_images(storage, shards[0], batch_size=5, decode=False))
    assert len(batch) == 5 and all(isinstance(b, bytes) and b[:2] == b"\xff\xd8" for b in batch.images)
    assert [m["SAMPLE_ID"] for m in batch.metadata] == batch.sample_ids.tolist()
    # the leakage sheet's real images: stored bytes by key, read from the keys' shards only
    from facelake.curation.real_sets import laion_images_by_key

    wanted = [batch.keys[0], shards[-1].keys[-1], "99999999"]
    found = laion_images_by_key(storage, "00000")(wanted)
    assert set(found) == set(wanted[:2]) and found[batch.keys[0]] == batch.images[0]


def test_reader_yields_the_success_samples_and_never_a_later_opt_out(laion_world):
    instance = DagsterInstance.ephemeral()
    storage, _ = run_part(instance)
    check_part_reads(laion_world, storage)

    victim = sorted(laion_world.ids_of("face"))[0]
    optout = laion_world.sources / "optout.csv"
    optout.write_text(optout.read_text() + f"{victim},\n")
    run_part(instance)
    shards = part_image_shards(storage, artifacts.images(storage, "00000"))
    images = read_all(storage, shards, batch_size=32)
    assert victim not in images
    assert_world_images(laion_world, images, laion_world.ids_of("face", "slow") - {victim})
    tar_keys = set()
    for shard in shards:
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(shard.tar_uri))) as tar:
            tar_keys |= {m.name.split(".")[0] for m in tar.getmembers() if m.name.endswith(".jpg")}
    assert len(tar_keys) == len(images) + 1, "the victim's jpg is still in its tar, unread"


def test_reader_streams_the_shards_from_s3(s3_laion_world):
    storage, _ = run_part(DagsterInstance.ephemeral())
    assert storage.protocol == "s3"
    check_part_reads(s3_laion_world, storage)


# --- unit tests on hand-built tars ------------------------------------------------------------------


def jpeg(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_tar(storage, uri: str, members: list[tuple[str, bytes]]) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    storage.write_bytes(uri, buffer.getvalue())


def sample_files(key: str, sample_id: int, image: bytes) -> list[tuple[str, bytes]]:
    meta = f'{{"SAMPLE_ID": {sample_id}, "key": "{key}"}}'.encode()
    return [(f"{key}.jpg", image), (f"{key}.txt", b"a caption"), (f"{key}.json", meta)]


def test_corrupt_images_are_skipped_and_reported_not_fatal(any_storage):
    good = {f"00000{i:02d}": jpeg(20 + i, 10 + i, i) for i in range(5)}
    members = []
    for i, (key, data) in enumerate(good.items()):
        members += sample_files(key, 100 + i, data)
    members += sample_files("0000090", 190, b"\xff\xd8 not really a jpeg")
    members += sample_files("0000091", 191, good["0000000"][: len(good["0000000"]) // 2])  # truncated
    members += sample_files("0000092", 192, jpeg(8, 8, 9))  # in the tar, but not a success any more
    uri = any_storage.uri("tars", "00000.tar")
    write_tar(any_storage, uri, members)
    keys = (*good, "0000090", "0000091", "0000099")  # 0000099: a success absent from the tar
    ids = np.array([100, 101, 102, 103, 104, 190, 191, 199], np.int64)
    shard = ImageShard(0, uri, ids, keys, "fp")

    for threads in (0, 2):
        batches = list(iter_shard_images(any_storage, shard, batch_size=2, decode_threads=threads))
        assert [b.keys for b in batches] == [["0000000", "0000001"], ["0000002", "0000003"], ["0000004"]]
        assert np.concatenate([b.sample_ids for b in batches]).tolist() == [100, 101, 102, 103, 104]
        assert [img.shape for b in batches for img in b.images] == [(10 + i, 20 + i, 3) for i in range(5)]
        skipped = [(s.key, s.sample_id, s.reason) for b in batches for s in b.skipped]
        assert skipped == [("0000090", 190, CORRUPT), ("0000091", 191, CORRUPT), ("0000099", 199, MISSING)]
        assert batches[-1].skipped, "skips at the shard's end ride on the last batch"

    raw = list(iter_shard_images(any_storage, shard, batch_size=10, decode=False))
    assert [len(b) for b in raw] == [7] and raw[0].images[0] == good["0000000"]


def test_a_shard_of_only_corrupt_images_yields_one_empty_batch(local_storage):
    uri = local_storage.uri("00003.tar")
    write_tar(local_storage, uri, sample_files("0003000", 7, b"garbage"))
    shard = ImageShard(3, uri, np.array([7], np.int64), ("0003000",), "fp")
    [batch] = list(iter_shard_images(local_storage, shard, batch_size=4))
    assert len(batch) == 0 and batch.sample_ids.dtype == np.int64
    assert [(s.sample_id, s.reason) for s in batch.skipped] == [(7, CORRUPT)]
    empty = ImageShard(3, uri, np.zeros(0, np.int64), (), "fp")
    assert list(iter_shard_images(local_storage, empty)) == []


def test_truncated_tar_is_an_error_naming_the_tar(local_storage):
    uri = local_storage.uri("00000.tar")
    write_tar(local_storage, uri, sample_files("0000000", 1, jpeg(64, 64, 0)))
    local_storage.write_bytes(uri, local_storage.read_bytes(uri)[:1200])
    shard = ImageShard(0, uri, np.array([1], np.int64), ("0000000",), "fp")
    with pytest.raises(InputError, match=r"00000\.tar: unreadable webdataset tar"):
        list(iter_shard_images(local_storage, shard))


def test_success_pointing_at_an_unlisted_shard_is_refused(local_storage):
    artifact = PartitionArtifact(local_storage, "laion_face", "images", "00000")
    attempt = artifact.begin({}, "1")
    samples = pa.table(
        {
            "sample_id": [1, 2],
            "status": ["success", "success"],
            "error_message": [None, None],
            "shard_id": [0, 7],
            "key": ["0000000", "0007000"],
            "attempts": [1, 1],
        },
        schema=RESOLVED_SCHEMA,
    )
    samples_uri = attempt.uri("samples.parquet")
    with local_storage.open(samples_uri, "wb") as handle:
        pq.write_table(samples, handle)
    tar_uri = artifact.uri("shards/00000.tar")
    write_tar(local_storage, tar_uri, sample_files("0000000", 1, jpeg(8, 8, 0)))
    attempt.commit([attempt.entry(samples_uri), attempt.entry(tar_uri)])
    with pytest.raises(InputError, match=r"samples\.parquet: success samples point at shards \[7\]"):
        part_image_shards(local_storage, artifact)
