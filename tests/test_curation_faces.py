"""HyperFace's last mile on real photos standing in as a generated variant (issue 15): the two real people that
ship offline, augmented (crops, flips, brightness, colour), labelled as two identities, written in the generation
stage's layout; RetinaFace (real weights) aligns them, dlib (real weights) embeds references and images.

Alignment counts add up; the audit separates the two people; a planted leak (a real photo placed among the
generated images, and the same photo in a "real" set) is the top pair; the dataset holds exactly the expected
files in both layouts, read back by torchvision's ImageFolder and by the project's webdataset reader and
exported to a folder and to S3; noise images give no face, counts that say so, and an empty dataset.
On a local and an S3 root."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from facelake.curation.aligned import ALIGNED, NO_FACE, aligned_index, commit_aligned_faces
from facelake.curation.audit import (
    IDENTITIES_FILE,
    IMAGES_FILE,
    AuditOptions,
    audit_embeddings,
    commit_identity_audit,
)
from facelake.curation.dataset import (
    DatasetOptions,
    commit_dataset,
    dataset_image_shards,
    export_dataset,
    image_path,
)
from facelake.curation.leakage import EmbeddingSet, LeakageOptions, commit_leakage
from facelake.curation.outputs import committed_table
from facelake.faces.detection import FaceDetector, load_detector
from facelake.faces.identity import EmbedderProfile, EmbeddingSpaceMismatchError, l2_normalise
from facelake.faces.identity_dlib import DlibEmbedder
from facelake.hyperface.references import reference_tables
from facelake.lake.commit import PartitionArtifact
from facelake.lake.storage import Storage
from facelake.lake.webdataset_reader import iter_shard_images
from facelake.models.retinaface_import import import_retinaface_mobilenet
from synthetic.face_photos import face_box, real_faces
from synthetic.generated_faces import (
    StandInImage,
    commit_stand_in_variant,
    identity_id,
    jittered_crops,
    noise_jpegs,
    original_jpeg,
)

VARIANT = "stand-in"
PEOPLE = ("astronaut", "grace_hopper")
PER_PERSON = 5
CONSISTENCY = 0.93  # between dlib's same person (> 0.96 here) and different people (< 0.908, its threshold)
PLANTED = "0000001-0005"  # grace_hopper's original photo, the 6th image of identity 1
VERSION = "test-1"


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> FaceDetector:
    out = tmp_path_factory.mktemp("retinaface")
    import_retinaface_mobilenet(str(out))
    return load_detector(out, device="cpu")


@pytest.fixture(scope="module")
def dlib() -> DlibEmbedder:
    return DlibEmbedder()


def references(dlib: DlibEmbedder) -> pa.Table:
    """Each person's reference: the normalised mean dlib embedding of their original photo's face."""
    vectors = []
    for name in PEOPLE:
        image, box = real_faces()[name], face_box(name).box
        vectors.append(dlib.embed(np.asarray(image), box[None]).mean(axis=0))
    [(_, table)] = reference_tables(l2_normalise(np.stack(vectors)), VARIANT, dlib.profile.provenance(), 2)
    return table


def stand_in_images() -> list[StandInImage]:
    images = [
        StandInImage(person, jpeg)
        for person, name in enumerate(PEOPLE)
        for jpeg in jittered_crops(name, PER_PERSON, seed=3)
    ]
    return [*images, StandInImage(1, original_jpeg("grace_hopper"))]  # the planted leak


@dataclass
class Chain:
    storage: Storage
    images: PartitionArtifact
    aligned: PartitionArtifact
    audit: PartitionArtifact
    leakage: PartitionArtifact
    dataset: PartitionArtifact
    results: dict


def artifact(storage: Storage, name: str, variant: str = VARIANT) -> PartitionArtifact:
    return PartitionArtifact(storage, "hyperface", name, variant)


def real_set(storage: Storage, detector: FaceDetector, dlib: DlibEmbedder, refs: pa.Table) -> EmbeddingSet:
    """A "real" set embedded by the same alignment and embedder: other crops of both people and the planted
    photo, with their aligned crops as the images."""
    images = [
        StandInImage(person, jpeg)
        for person, name in enumerate(PEOPLE)
        for jpeg in jittered_crops(name, 2, seed=11)
    ]
    images.append(StandInImage(1, original_jpeg("grace_hopper")))
    source = commit_stand_in_variant(storage, "real", images, dlib.profile.provenance())
    aligned = artifact(storage, "aligned", "real")
    commit_aligned_faces(aligned, source, detector, code_version=VERSION, owner="t")
    real_refs = refs.set_column(0, "identity_id", pa.array([identity_id("real", i) for i in range(2)]))
    audit = artifact(storage, "identity_audit", "real")
    commit_identity_audit(audit, aligned, dlib, real_refs, code_version=VERSION, owner="t")
    jpegs = {}
    for shard in dataset_free_tars(aligned):
        with storage.open(shard, "rb") as handle, tarfile.open(fileobj=handle) as tar:
            jpegs.update(
                {m.name[:-4]: tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".jpg")}
            )
    return EmbeddingSet("photos", audit_embeddings(audit), images=jpegs)


def dataset_free_tars(aligned: PartitionArtifact) -> list[str]:
    return [aligned.uri(f.path) for f in aligned.require_manifest().files if f.path.endswith(".tar")]


def run_chain(
    storage: Storage,
    detector: FaceDetector,
    dlib: DlibEmbedder,
    images: list[StandInImage],
    variant: str,
    real: list[EmbeddingSet],
) -> Chain:
    refs = references(dlib) if variant == VARIANT else None
    chain = Chain(
        storage,
        commit_stand_in_variant(storage, variant, images, dlib.profile.provenance()),
        artifact(storage, "aligned", variant),
        artifact(storage, "identity_audit", variant),
        artifact(storage, "leakage", variant),
        artifact(storage, "dataset", variant),
        {},
    )
    if refs is None:
        refs = references(dlib).set_column(
            0, "identity_id", pa.array([identity_id(variant, i) for i in range(2)])
        )
    logged: list[str] = []
    chain.results["aligned"] = commit_aligned_faces(
        chain.aligned, chain.images, detector, code_version=VERSION, owner="t", log=logged.append
    )
    chain.results["audit"] = commit_identity_audit(
        chain.audit,
        chain.aligned,
        dlib,
        refs,
        AuditOptions(consistency=CONSISTENCY),
        code_version=VERSION,
        owner="t",
        log=logged.append,
    )
    chain.results["leakage"] = commit_leakage(
        chain.leakage,
        chain.audit,
        chain.aligned,
        real,
        LeakageOptions(top_k=3, threshold=0.999),
        code_version=VERSION,
        owner="t",
    )
    chain.results["dataset"] = commit_dataset(
        chain.dataset,
        chain.aligned,
        chain.audit,
        chain.leakage,
        DatasetOptions(shard_size=4),
        code_version=VERSION,
        owner="t",
    )
    chain.results["log"] = logged
    chain.results["dlib_threshold"] = dlib.profile.same_identity_cosine_distance
    return chain


@pytest.fixture(scope="module", params=["local", "s3"])
def chain(request, tmp_path_factory, detector: FaceDetector, dlib: DlibEmbedder) -> Chain:
    if request.param == "local":
        storage = Storage(str(tmp_path_factory.mktemp("lake")))
    else:
        storage = request.getfixturevalue("s3_module_storage")
    real = real_set(storage, detector, dlib, references(dlib))
    return run_chain(storage, detector, dlib, stand_in_images(), VARIANT, [real])


@pytest.fixture(scope="module")
def s3_module_storage(s3_endpoint: str) -> Storage:
    import uuid

    from facelake.lake.storage import S3Options
    from tests.conftest import S3_KEY, S3_SECRET

    bucket = f"lake-{uuid.uuid4().hex[:10]}"
    storage = Storage(
        f"s3://{bucket}/root", S3Options(endpoint_url=s3_endpoint, key=S3_KEY, secret=S3_SECRET)
    )
    storage.fs.mkdir(bucket)
    return storage


def test_every_generated_image_is_aligned_or_excluded_and_the_counts_add_up(chain: Chain) -> None:
    counts = chain.results["aligned"].counts
    assert counts["generated"] == 2 * PER_PERSON + 1
    assert (
        counts["generated"]
        == counts["aligned"] + counts["no_face"] + counts["several_faces"] + counts["unreadable"]
    )
    assert counts["aligned"] == counts["generated"]  # one clear face in every photo
    index = aligned_index(chain.storage, chain.aligned, status=None)
    assert index.num_rows == counts["generated"] and set(index["status"].to_pylist()) == {ALIGNED}
    crops = {}
    for path in dataset_free_tars(chain.aligned):
        with chain.storage.open(path, "rb") as handle, tarfile.open(fileobj=handle) as tar:
            crops.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    assert len([n for n in crops if n.endswith(".jpg")]) == counts["aligned"]
    assert Image.open(io.BytesIO(crops[f"{PLANTED}.jpg"])).size == (112, 112)
    metadata = chain.results["aligned"].metadata()
    assert metadata["random_init"] is False and metadata["faces_per_image"] == {"1": counts["generated"]}
    assert any("alignment aligned[stand-in]" in line for line in chain.results["log"])


def test_the_audit_separates_the_two_people(chain: Chain) -> None:
    images = committed_table(chain.audit, IMAGES_FILE)
    own, other = images["own_cosine"].to_numpy(), images["other_cosine"].to_numpy()
    assert images.num_rows == 2 * PER_PERSON + 1
    assert (own > other).all(), (own, other)
    same = 1.0 - chain.results["dlib_threshold"]
    assert own.min() > 0.95 > same > other.max()
    identities = committed_table(chain.audit, IDENTITIES_FILE).to_pylist()
    assert [row["identity_id"] for row in identities] == [identity_id(VARIANT, 0), identity_id(VARIANT, 1)]
    assert [row["nearest_identity_id"] for row in identities] == [
        identity_id(VARIANT, 1),
        identity_id(VARIANT, 0),
    ]
    assert all(row["separated"] and row["margin"] > 0.05 and 0 <= row["spread"] < 0.1 for row in identities)
    summary = chain.results["audit"].metadata()
    assert summary["images"] == 11 and summary["identities_not_separated"] == 0
    assert summary["inconsistent_images"] == int((own < CONSISTENCY).sum())
    assert summary["random_init"] is False and "dlib_resnet_v1" in summary["embedder"]
    assert summary["identities_below_consistency"] == 0 and chain.results["audit"].passed()
    for png in (chain.results["audit"].plot, chain.results["audit"].sheet):
        assert Image.open(io.BytesIO(png)).format == "PNG"


def test_the_planted_leak_is_the_top_pair(chain: Chain) -> None:
    pairs = chain.results["leakage"].leakage.pairs.to_pylist()
    top = pairs[0]
    assert (top["generated_key"], top["real_key"], top["rank"]) == (PLANTED, "0000001-0002", 1)
    assert top["cosine"] > 0.999 and top["top_k"] and top["above_threshold"]
    assert sum(p["top_k"] for p in pairs) == 3 and all(p["cosine"] <= top["cosine"] for p in pairs)
    assert [p for p in pairs if p["above_threshold"]] == [top]
    summary = chain.results["leakage"].metadata()
    assert summary["real_sets"]["photos"]["top_k"] == 3 and summary["pairs"] == len(pairs)
    assert Image.open(io.BytesIO(chain.results["leakage"].sheet)).size[0] == 4 * 128


def expected_files(chain: Chain) -> tuple[set[str], dict[str, int]]:
    removed = set(committed_table(chain.leakage, "pairs.parquet")["generated_key"].to_pylist())
    images = committed_table(chain.audit, IMAGES_FILE)
    removed |= {
        k for k, bad in zip(images["key"].to_pylist(), images["inconsistent"].to_pylist(), strict=True) if bad
    }
    kept = [k for k in images["key"].to_pylist() if k not in removed]
    paths = {image_path(identity_id(VARIANT, int(k[:7])), int(k[-4:])) for k in kept}
    return paths, {k: int(k[:7]) for k in kept}


def test_the_dataset_holds_exactly_the_kept_images_in_both_layouts(chain: Chain, tmp_path: Path) -> None:
    result = chain.results["dataset"]
    counts = result.counts
    paths, labels = expected_files(chain)
    assert counts["kept"] == len(paths) > 0 and not result.empty
    assert counts["kept"] == counts["aligned"] - counts["removed"]
    assert (
        counts["removed"] == counts["leaking"] + counts["inconsistent"] - counts["leaking_and_inconsistent"]
    )
    assert counts["generated"] == 11 and counts["no_face"] == 0
    manifest = chain.dataset.require_manifest()
    assert {f.path for f in manifest.files if f.path.startswith("identities/")} == paths
    out = tmp_path / "export"
    exported = export_dataset(chain.dataset, str(out))
    assert not exported.empty and exported.counts == counts
    found = {str(p.relative_to(out)) for p in (out / "identities").rglob("*.jpg")}
    assert found == paths
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(out / "identities"))
    assert folder.classes == sorted({p.split("/")[1] for p in paths}) and len(folder) == len(paths)
    assert {Path(p).parent.name for p, _ in folder.samples} == set(folder.classes)
    by_key = {}
    for shard in dataset_image_shards(chain.dataset):
        for batch in iter_shard_images(chain.storage, shard, batch_size=3):
            assert not batch.skipped
            for key, image, meta in zip(batch.keys, batch.images, batch.metadata, strict=True):
                assert image.shape == (112, 112, 3)
                by_key[key] = meta["label"]
    assert by_key == labels  # labels 0..C-1 in identity order: here identity index
    tars = sorted((out / "webdataset").glob("*.tar"))
    assert len(tars) == -(-len(paths) // 4)
    with tarfile.open(tars[0]) as tar:
        members = tar.getnames()
        first = members[0].split(".")[0]
        assert {f"{first}.jpg", f"{first}.cls", f"{first}.json"} <= set(members)
        assert int(tar.extractfile(f"{first}.cls").read()) == labels[first]


def test_the_dataset_exports_to_an_s3_root(chain: Chain, s3_storage: Storage, tmp_path: Path) -> None:
    target = f"{s3_storage.root}/export"
    result = export_dataset(chain.dataset, target, layouts=("webdataset",), s3=s3_storage.s3)
    names = {uri.removeprefix(target + "/") for uri in s3_storage.find(target)}
    assert {"dataset.parquet", "labels.parquet", "dataset.json"} <= names
    assert not any(n.startswith("identities/") for n in names) and result.files == len(names)
    assert {n for n in names if n.startswith("webdataset/")} == {
        f.path for f in chain.dataset.require_manifest().files if f.path.startswith("webdataset/")
    }


def test_rerunning_every_stage_with_the_same_config_is_a_no_op(chain: Chain, detector, dlib) -> None:
    again = commit_aligned_faces(chain.aligned, chain.images, detector, code_version=VERSION, owner="t")
    assert again.outcome.reused and again.counts == chain.results["aligned"].counts
    audit = commit_identity_audit(
        chain.audit,
        chain.aligned,
        dlib,
        references(dlib),
        AuditOptions(consistency=CONSISTENCY),
        code_version=VERSION,
        owner="t",
    )
    assert audit.outcome.reused and audit.audit is None and audit.plot == chain.results["audit"].plot


def test_an_embedder_of_another_space_is_refused_before_embedding(tmp_path: Path, detector, dlib) -> None:
    storage = Storage(str(tmp_path / "lake"))
    arcface = EmbedderProfile("arcface_onnx", 512, "a" * 64, True, 0.35)
    [(_, refs)] = reference_tables(l2_normalise(np.eye(2, 512)), VARIANT, arcface.provenance(), 2)
    images = commit_stand_in_variant(
        storage, VARIANT, [StandInImage(0, original_jpeg("astronaut"))], dlib.profile.provenance()
    )
    aligned = artifact(storage, "aligned")
    commit_aligned_faces(aligned, images, detector, code_version=VERSION, owner="t")
    with pytest.raises(EmbeddingSpaceMismatchError, match="references' space") as caught:
        commit_identity_audit(
            artifact(storage, "identity_audit"), aligned, dlib, refs, code_version=VERSION, owner="t"
        )
    assert "arcface_onnx (512-d" in str(caught.value) and "dlib_resnet_v1 (128-d" in str(caught.value)
    assert not storage.exists(artifact(storage, "identity_audit").prefix)


def test_noise_images_give_no_face_and_an_empty_dataset(tmp_path: Path, detector, dlib) -> None:
    storage = Storage(str(tmp_path / "lake"))
    noise = [StandInImage(i % 2, jpeg) for i, jpeg in enumerate(noise_jpegs(4))]
    chain = run_chain(storage, detector, dlib, noise, "noise", [])
    counts = chain.results["aligned"].counts
    assert counts == {"generated": 4, "aligned": 0, "no_face": 4, "several_faces": 0, "unreadable": 0}
    excluded = committed_table(chain.aligned, "excluded.parquet")
    assert excluded.num_rows == 4 and set(excluded["status"].to_pylist()) == {NO_FACE}
    assert "no face detected by retinaface-mobilenet0.25" in excluded["reason"][0].as_py()
    assert chain.results["audit"].metadata()["images"] == 0 and not chain.results["audit"].passed()
    dataset = chain.results["dataset"]
    assert dataset.empty and dataset.counts["kept"] == 0 and dataset.counts["no_face"] == 4
    assert dataset.metadata()["empty"] is True
    exported = export_dataset(chain.dataset, str(tmp_path / "out"))
    assert exported.empty and exported.files == 3


def test_facelake_hyperface_export_copies_the_committed_dataset(chain: Chain, tmp_path: Path) -> None:
    """The command line a user runs: the lake (local or S3) from the environment, a local folder as target."""
    from tests.test_facelake_cli import lake_env, run_facelake

    env = lake_env(chain.storage)
    out = tmp_path / "exported"
    done = run_facelake("hyperface", "export", "--variant", VARIANT, "--to", str(out), cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    paths, _ = expected_files(chain)
    assert {str(p.relative_to(out)) for p in (out / "identities").rglob("*.jpg")} == paths
    assert (out / "dataset.json").is_file() and list((out / "webdataset").glob("*.tar"))
    missing = run_facelake(
        "hyperface", "export", "--variant", "nope", "--to", str(out), cwd=tmp_path, env=env
    )
    assert missing.returncode == 1 and "no committed hyperface_dataset[nope]" in missing.stderr


def test_the_catalog_views_show_every_stage(chain: Chain) -> None:
    from facelake.catalog import open_catalog

    counts = chain.results["dataset"].counts
    with open_catalog(chain.storage) as conn:

        def count(sql: str) -> int:
            return conn.execute(sql).fetchone()[0]

        assert (
            count(f"SELECT count(*) FROM hyperface_aligned WHERE part = '{VARIANT}'") == counts["generated"]
        )
        assert (
            count(f"SELECT count(*) FROM hyperface_aligned WHERE status = 'aligned' AND part = '{VARIANT}'")
            == counts["aligned"]
        )
        assert (
            count(f"SELECT count(*) FROM hyperface_identity_audit WHERE part = '{VARIANT}'")
            == counts["aligned"]
        )
        assert (
            count(f"SELECT count(*) FROM hyperface_identity_audit_identities WHERE part = '{VARIANT}'") == 2
        )
        assert count(f"SELECT count(*) FROM hyperface_dataset WHERE part = '{VARIANT}'") == counts["kept"]
        assert (
            count(f"SELECT count(*) FROM hyperface_dataset_removed WHERE part = '{VARIANT}'")
            == counts["removed"]
        )
        assert count(f"SELECT count(*) FROM hyperface_leakage WHERE rank = 1 AND part = '{VARIANT}'") >= 1
