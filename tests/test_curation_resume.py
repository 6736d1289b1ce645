"""The alignment stage commits shard by shard: a run killed after its first shard resumes without redoing it; a
truncated committed tar is aligned again alone. A random-weights generator's warning reaches every stage's
metadata, the crops' json and the dataset's summary."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from facelake.curation.aligned import commit_aligned_faces
from facelake.curation.audit import commit_identity_audit
from facelake.curation.dataset import commit_dataset
from facelake.curation.leakage import commit_leakage
from facelake.faces.detection import FaceDetector, load_detector
from facelake.faces.identity import l2_normalise
from facelake.faces.identity_dlib import DlibEmbedder
from facelake.hyperface.references import reference_tables
from facelake.lake.commit import PartitionArtifact
from facelake.lake.storage import Storage
from facelake.models.retinaface_import import import_retinaface_mobilenet
from synthetic.generated_faces import StandInImage, commit_stand_in_variant, jittered_crops

WARNING = "RANDOM TEST WEIGHTS: stand-in generator"


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> FaceDetector:
    out = tmp_path_factory.mktemp("retinaface")
    import_retinaface_mobilenet(str(out))
    return load_detector(out, device="cpu")


def variant(storage: Storage, embedder_space: dict, **kwargs) -> PartitionArtifact:
    images = [StandInImage(0, jpeg) for jpeg in jittered_crops("astronaut", 2, seed=5)]
    images += [StandInImage(1, jpeg) for jpeg in jittered_crops("grace_hopper", 2, seed=5)]
    return commit_stand_in_variant(storage, "v", images, embedder_space, **kwargs)


def test_a_killed_alignment_resumes_at_the_first_uncommitted_shard(tmp_path: Path, detector) -> None:
    storage = Storage(str(tmp_path / "lake"))
    images = variant(storage, DlibEmbedder().profile.provenance())
    aligned = PartitionArtifact(storage, "hyperface", "aligned", "v")

    def killed(message: str) -> None:
        if message.startswith("shards/00000"):
            raise KeyboardInterrupt("killed after shard 0")

    with pytest.raises(KeyboardInterrupt):
        commit_aligned_faces(aligned, images, detector, code_version="1", owner="t", log=killed)
    assert aligned.manifest() is None and storage.exists(aligned.uri("shards/00000.done.json"))
    first = storage.fs.info(aligned.uri("shards/00000.tar"))["mtime"]
    resumed = commit_aligned_faces(aligned, images, detector, code_version="1", owner="t")
    extra = resumed.outcome.manifest.extra
    assert extra["shards_reused"] == 1 and extra["shards_done_now"] == 1
    assert resumed.counter.images == 2 and resumed.counts["aligned"] == 4
    assert storage.fs.info(aligned.uri("shards/00000.tar"))["mtime"] == first
    whole = storage.read_bytes(aligned.uri("shards/00001.tar"))
    storage.write_bytes(aligned.uri("shards/00001.tar"), whole[:200])
    redone = commit_aligned_faces(aligned, images, detector, code_version="1", owner="t", force=True)
    assert redone.counter.images == 2 and storage.read_bytes(aligned.uri("shards/00001.tar")) == whole


def test_random_generator_weights_are_said_at_every_stage(tmp_path: Path, detector) -> None:
    storage = Storage(str(tmp_path / "lake"))
    dlib = DlibEmbedder()
    images = variant(storage, dlib.profile.provenance(), random_init=True, warning=WARNING)
    art = {
        name: PartitionArtifact(storage, "hyperface", name, "v")
        for name in ("aligned", "audit", "leak", "data")
    }
    aligned = commit_aligned_faces(art["aligned"], images, detector, code_version="1", owner="t")
    vectors = l2_normalise(np.random.default_rng(0).standard_normal((2, 128)))
    [(_, refs)] = reference_tables(vectors, "v", dlib.profile.provenance(), 2)
    audit = commit_identity_audit(art["audit"], art["aligned"], dlib, refs, code_version="1", owner="t")
    leakage = commit_leakage(art["leak"], art["audit"], art["aligned"], [], code_version="1", owner="t")
    dataset = commit_dataset(
        art["data"], art["aligned"], art["audit"], art["leak"], code_version="1", owner="t"
    )
    for result in (aligned, audit, leakage, dataset):
        metadata = result.metadata()
        assert metadata["random_init"] is True and WARNING in metadata["warning"]
    with (
        storage.open(art["aligned"].uri("shards/00000.tar"), "rb") as handle,
        tarfile.open(fileobj=handle) as tar,
    ):
        record = json.loads(tar.extractfile(tar.getnames()[1]).read())
    assert record["warning"] == WARNING
    summary = json.loads(
        storage.read_bytes(
            art["data"].uri(
                next(f.path for f in art["data"].require_manifest().files if f.path.endswith("dataset.json"))
            )
        )
    )
    assert summary["random_init"] is True and summary["warning"] == WARNING
