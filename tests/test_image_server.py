"""The local image HTTP server and the real-face fixture photos used by the download tests."""

from __future__ import annotations

import io
import socket
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from synthetic.face_photos import face_box, real_faces, varied_crops
from synthetic.image_server import ImageServer


def fetch(url: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def server():
    with ImageServer() as srv:
        yield srv


def test_serves_registered_payloads_and_404s(server):
    jpeg = varied_crops("astronaut", 1, seed=1)[0].jpeg
    image_url = server.add_image("a/face.jpg", jpeg)
    assert image_url == f"http://127.0.0.1:{server.port}/a/face.jpg"
    status, headers, body = fetch(image_url)
    assert (status, headers["Content-Type"], body) == (200, "image/jpeg", jpeg)

    assert fetch(server.add_not_found("gone.jpg"))[0] == 404
    assert fetch(server.url("never-registered.jpg"))[0] == 404

    status, headers, body = fetch(server.add_html("page.jpg"))
    assert (status, headers["Content-Type"]) == (200, "text/html")
    assert body.startswith(b"<html>")

    status, headers, body = fetch(server.add_noai("noai.jpg", jpeg) + "?size=big")
    assert status == 200 and body == jpeg
    assert "noai" in headers["X-Robots-Tag"]

    status, headers, _ = fetch(
        server.add("custom", b"x", content_type="text/plain", status=503, headers={"A": "b"})
    )
    assert (status, headers["A"]) == (503, "b")

    assert server.requested_paths() == [
        "/a/face.jpg",
        "/gone.jpg",
        "/never-registered.jpg",
        "/page.jpg",
        "/noai.jpg",
        "/custom",
    ]
    assert all(record.answered for record in server.requests)


def test_slow_route_makes_a_short_client_timeout_fire(server):
    url = server.add_slow("slow.jpg", b"late", delay_s=1.5)
    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        fetch(url, timeout=0.3)
    assert fetch(url, timeout=10)[2] == b"late"


def test_die_after_refuses_connections_then_restarts_on_the_same_port(server):
    url = server.add_image("x.jpg", b"payload")
    port = server.port
    server.die_after(2)
    assert fetch(url)[2] == b"payload"
    assert fetch(url)[2] == b"payload"
    with pytest.raises(OSError):  # refused, or dropped without an answer
        fetch(url, timeout=2)
    assert not server.alive

    server.start()
    assert server.port == port
    assert fetch(url)[2] == b"payload"
    assert [r.path for r in server.requests if r.answered] == ["/x.jpg"] * 3


def test_stop_and_start_keep_the_port_and_the_log(server):
    url = server.add_image("y.jpg", b"y")
    fetch(url)
    port = server.port
    server.stop()
    with pytest.raises(OSError):  # refused, or dropped without an answer
        fetch(url, timeout=2)
    server.start()
    assert server.port == port and fetch(url)[2] == b"y"
    assert server.requested_paths() == ["/y.jpg", "/y.jpg"]
    server.clear_log()
    assert server.requests == []


def test_real_faces_are_two_rgb_photos_with_boxes_inside_them():
    faces = real_faces()
    assert set(faces) == {"astronaut", "grace_hopper"}
    assert faces["astronaut"].shape == (512, 512, 3)
    assert faces["grace_hopper"].shape == (600, 512, 3)
    for name, image in faces.items():
        assert image.dtype == np.uint8
        face = face_box(name)
        x1, y1, x2, y2 = face.box
        assert 0 <= x1 < x2 <= image.shape[1] and 0 <= y1 < y2 <= image.shape[0]
        assert ((face.landmarks >= face.box[:2]) & (face.landmarks <= face.box[2:])).all()
        assert face.landmarks[0, 0] < face.landmarks[1, 0]  # left eye is the viewer's left
    with pytest.raises(KeyError, match="unknown face photo"):
        face_box("nobody")


def _gray_patch(image: np.ndarray, box: np.ndarray, size: int = 24) -> np.ndarray:
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    patch = Image.fromarray(image).convert("L").crop((x1, y1, x2, y2)).resize((size, size))
    values = np.asarray(patch, np.float64).ravel()
    return (values - values.mean()) / (values.std() + 1e-9)


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_varied_crops_are_deterministic_and_their_boxes_follow_the_face(name):
    crops = varied_crops(name, 8, seed=7)
    assert [c.jpeg for c in crops] == [c.jpeg for c in varied_crops(name, 8, seed=7)]
    assert [c.jpeg for c in crops] != [c.jpeg for c in varied_crops(name, 8, seed=8)]
    assert len({c.jpeg for c in crops}) == 8
    assert {c.flipped for c in crops} == {True, False}

    original = real_faces()[name]
    reference = _gray_patch(original, face_box(name).box)
    for crop in crops:
        image = np.asarray(Image.open(io.BytesIO(crop.jpeg)).convert("RGB"))
        assert image.shape == (crop.height, crop.width, 3)
        x1, y1, x2, y2 = crop.box
        assert 0 <= x1 < x2 <= crop.width and 0 <= y1 < y2 <= crop.height
        assert crop.landmarks[0, 0] < crop.landmarks[1, 0] and crop.landmarks[3, 0] < crop.landmarks[4, 0]
        if crop.flipped:
            image = image[:, ::-1]
            x1, x2 = crop.width - x2, crop.width - x1
        # the transformed box holds the same face as the original box (correlation of gray patches)
        same = float(np.mean(_gray_patch(image, np.array([x1, y1, x2, y2])) * reference))
        width = x2 - x1
        shifted = float(
            np.mean(_gray_patch(image, np.array([x1 + width / 2, y1, x2 + width / 2, y2])) * reference)
        )
        assert same > 0.85 and same > shifted + 0.2
