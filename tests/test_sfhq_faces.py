"""SFHQ face embeddings with the real detector (RetinaFace mobilenet0.25, imported offline) and dlib's real
weights on the fixture's real faces: the largest face per image, images without a face, undecodable images,
provenance, and a HyperFace gallery packed from the table."""

from __future__ import annotations

import numpy as np
import pytest

from facelake.faces.detection import load_detector
from facelake.faces.identity import PROVENANCE_COLUMNS, table_embeddings, table_space
from facelake.faces.identity_dlib import DlibEmbedder
from facelake.faces.primary import primary_face
from facelake.faces.stages import StageCounter
from facelake.hyperface.packing import PackingConfig, pack
from facelake.hyperface.references import assemble_gallery
from facelake.lake.images import decode_rgb
from facelake.lake.storage import Storage
from facelake.models.retinaface_import import import_retinaface_mobilenet
from facelake.sfhq.faces import NO_FACE_SCHEMA, embed_faces, embed_part_faces
from facelake.sfhq.layout import IMAGES, SfhqPart, scan_part
from synthetic.sfhq import Faults, write_sfhq_part

pytestmark = pytest.mark.slow


def iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    weights = tmp_path_factory.mktemp("weights")
    import_retinaface_mobilenet(str(weights))
    return load_detector(weights, device="cpu"), DlibEmbedder()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, models):
    folder = tmp_path_factory.mktemp("sfhq")
    storage = Storage(str(folder))
    fixture = write_sfhq_part(storage, str(folder / "part3"), 9, part="3", faults=Faults(no_face_image=1))
    storage.write_bytes(f"{fixture.folder}/images/SFHQ_pt3_99999999.jpg", b"\xff\xd8 truncated jpeg")
    scan = scan_part(SfhqPart(storage, fixture.folder, "3"))
    counter = StageCounter()
    result = embed_part_faces(scan, *models, batch_size=3, threads=2, counter=counter)
    return fixture, scan, result, counter


def test_one_row_per_face_image_the_largest_face_and_images_without_one(embedded):
    fixture, _, result, counter = embedded
    (no_face,) = fixture.fault("no_face_image")
    with_face = [n for n in fixture.names if n != no_face]
    table = result.embeddings
    assert table["name"].to_pylist() == with_face
    assert table["faces_detected"].to_pylist() == [1] * len(with_face)
    for name, box in zip(with_face, table["face_box"].to_pylist(), strict=True):
        assert iou(box, fixture.images[name].face_box) >= 0.5, name  # where the real photo's face was put
    assert result.no_face.schema == NO_FACE_SCHEMA
    assert result.no_face.to_pylist() == [
        {"name": no_face, "reason": "no face detected by retinaface-mobilenet0.25 (score > 0.5)"}
    ]
    assert result.problems.to_pylist()[0]["name"] == "SFHQ_pt3_99999999"
    assert result.problems.to_pylist()[0]["kind"] == "unreadable" and result.problems.num_rows == 1
    assert counter.images == len(fixture.names) and counter.histogram() == {"0": 1, "1": len(with_face)}


def test_rows_are_the_embedder_applied_to_the_primary_face_with_provenance(embedded, models):
    fixture, scan, result, _ = embedded
    detector, embedder = models
    table = result.embeddings
    assert set(PROVENANCE_COLUMNS) <= set(table.column_names)
    space = table_space(table)
    assert space["embedder_name"] == embedder.profile.name and space["embedder_random_init"] is False
    vectors = table_embeddings(table)
    assert vectors.shape == (len(table), 128)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    name = table["name"][1].as_py()
    image = decode_rgb(scan.part.storage.read_bytes(scan.part.uri(IMAGES, name)))
    found = detector.detect([image])[0]
    face = primary_face(found)
    direct = embedder.embed([image], found.boxes[face : face + 1], found.landmarks[face : face + 1])
    np.testing.assert_allclose(vectors[1], direct[0], atol=1e-5)
    again = embed_faces(scan.part, [name], detector, embedder)
    np.testing.assert_allclose(table_embeddings(again.embeddings)[0], vectors[1], atol=1e-5)
    people = np.array([fixture.images[n].person for n in table["name"].to_pylist()])
    distances = np.linalg.norm(vectors[:, None] - vectors[None], axis=2)
    upper = np.triu(np.ones_like(distances, bool), 1)
    same = people[:, None] == people[None]
    assert distances[upper & same].mean() < distances[upper & ~same].mean()


def test_the_table_is_a_hyperface_gallery_that_packs(embedded):
    _, _, result, _ = embedded
    gallery = assemble_gallery([("sfhq_face_embeddings[3]", result.embeddings)])
    assert gallery.vectors.shape == (result.embeddings.num_rows, 128)
    assert gallery.table["source"].to_pylist() == ["sfhq_face_embeddings[3]"] * result.embeddings.num_rows
    config = PackingConfig(identities=4, algorithm="full", iterations=20, seed=0, device="cpu")
    packed = pack(config, gallery.vectors)
    assert packed.points.shape == (4, 128)
    np.testing.assert_allclose(np.linalg.norm(packed.points, axis=1), 1.0, rtol=1e-5)
    assert packed.metrics["min_angle_deg"] >= packed.initial_metrics["min_angle_deg"]
