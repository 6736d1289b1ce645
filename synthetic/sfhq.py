"""An SFHQ-layout part with real faces and known values, plus injected faults (tests, demo, benchmarks).

Images are the two real photos that ship offline (``synthetic.face_photos``), a square window around the face
resized to 1024², mirrored for some, brighter or darker. Each face gets a geometry on SFHQ's 256 grid (the
grid SFHQ's maps and landmarks were made on, then upscaled): axis-aligned rectangles for the 19 parsing
classes placed on the face box of the photo, nested so that every rectangle lies either inside exactly one
earlier rectangle (its parent) or outside all the others. The expected numbers are computed from that
geometry, never from pixels: a class's area is its rectangles' areas minus their children's, a centroid is
the area-weighted mean of rectangle centres (exact rationals), the hairline is the skin rectangle's top
edge when a hair rectangle covers the skin centre column. The map is painted on the grid and upscaled x4
(nearest), as SFHQ's were. The 110 landmarks follow the ASSUMED iBUG-68 order for their first 68 points
(eye groups are hexagons centred exactly on the map's eye rectangles) and two hairline arcs for 68-109.

Features default to seeded random unit vectors under ``CLIP_ViTL_14@336`` (1, 768), pickled with numpy-1
names as the 2022 release was; ``features=`` takes a callable ``(name, rgb image) -> {key: array}`` (e.g. a
tiny saved open_clip model's image encoder). :class:`Faults` injects what a real download may hold; the
returned :class:`SfhqFixture` says which names carry which fault and what every number must be.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import tempfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
from PIL import Image, ImageEnhance

from facelake.lake.storage import Storage
from synthetic.face_photos import PEOPLE, encode_jpeg, face_box, real_faces
from synthetic.laion_pth import Numpy1Pickler, write_malicious_pickle

GRID = 256
SCALE = 4
SIZE = GRID * SCALE
N_CLASSES = 19
LANDMARKS = 110
FEATURE_KEY = "CLIP_ViTL_14@336"
FEATURE_DIM = 768
BAD_LABEL = 25

FeatureFn = Callable[[str, np.ndarray], Mapping[str, np.ndarray]]


# --- the geometry of one face on the 256 grid --------------------------------------------------------


@dataclass(frozen=True)
class Rect:
    """A label painted on ``[x0, x1) x [y0, y1)`` of the 256 grid, inside rectangle ``parent`` (or none)."""

    label: int
    x0: int
    y0: int
    x1: int
    y1: int
    parent: int | None = None

    @property
    def area(self) -> int:
        return (self.x1 - self.x0) * (self.y1 - self.y0)

    def contains(self, other: Rect) -> bool:
        return self.x0 <= other.x0 and other.x1 <= self.x1 and self.y0 <= other.y0 and other.y1 <= self.y1

    def disjoint(self, other: Rect) -> bool:
        return self.x1 <= other.x0 or other.x1 <= self.x0 or self.y1 <= other.y0 or other.y1 <= self.y0

    def centre_px(self) -> tuple[Fraction, Fraction]:
        """Centroid of its pixel centres in 1024-pixel continuous coordinates: the rectangle's centre."""
        return Fraction(SCALE * (self.x0 + self.x1), 2), Fraction(SCALE * (self.y0 + self.y1), 2)


@dataclass(frozen=True, eq=False)
class MapTruth:
    """What the statistics of one map must be (pixels of the 1024² map; ``None`` where absent)."""

    counts: np.ndarray  # int64 [19]
    eyes: dict[int, tuple[float, float]]  # label 4/5 -> centroid (x, y)
    skin_center_x: int
    hairline_y: int | None
    hairline_coverage: float
    inter_ocular: float
    roll_deg: float

    @property
    def fractions(self) -> np.ndarray:
        return self.counts / float(SIZE * SIZE)

    @property
    def hairline_height(self) -> float | None:
        if self.hairline_y is None:
            return None
        return (self.eyes[4][1] + self.eyes[5][1]) / 2 - self.hairline_y


@dataclass(frozen=True, eq=False)
class FaceGeometry:
    """The rectangles of one map and the landmarks drawn from them."""

    rects: list[Rect]
    points: np.ndarray  # float32 [110, 2]
    image_left_eye: tuple[float, float]
    image_right_eye: tuple[float, float]

    def paint(self) -> np.ndarray:
        """The 1024² uint8 label map: rectangles painted in order on the grid, upscaled x4 (nearest)."""
        grid = np.zeros((GRID, GRID), np.uint8)
        for rect in self.rects:
            grid[rect.y0 : rect.y1, rect.x0 : rect.x1] = rect.label
        return np.repeat(np.repeat(grid, SCALE, axis=0), SCALE, axis=1)

    def truth(self) -> MapTruth:
        """The expected statistics, from the rectangles alone."""
        check_nesting(self.rects)
        counts = np.zeros(N_CLASSES, np.int64)
        for i, rect in enumerate(self.rects):
            children = sum(r.area for r in self.rects if r.parent == i)
            counts[rect.label] += (rect.area - children) * SCALE * SCALE
        counts[0] += SIZE * SIZE - sum(r.area for r in self.rects if r.parent is None) * SCALE * SCALE
        eyes = {}
        for label in (4, 5):
            (eye,) = [r for r in self.rects if r.label == label]
            x, y = eye.centre_px()
            eyes[label] = (float(x), float(y))
        (skin_index,) = [i for i, r in enumerate(self.rects) if r.label == 1]
        skin = self.rects[skin_index]
        holes = [r for r in self.rects if r.parent == skin_index]
        area = skin.area - sum(r.area for r in holes)
        x_sum = skin.area * skin.centre_px()[0] - sum(r.area * r.centre_px()[0] for r in holes)
        center = math.floor(x_sum / area)
        hair = [r for r in self.rects if r.label == 17]
        hairline, covered = None, 0
        for rect in hair:  # hair rectangles sit directly on the skin's top edge
            assert rect.y1 == skin.y0, "hair must end on the skin's top edge"
            if SCALE * rect.x0 <= center < SCALE * rect.x1:
                hairline = SCALE * skin.y0
            covered += max(0, min(rect.x1, skin.x1) - max(rect.x0, skin.x0))
        (lx, ly), (rx, ry) = sorted(eyes.values())
        return MapTruth(
            counts,
            eyes,
            center,
            hairline,
            covered / (skin.x1 - skin.x0),
            math.hypot(rx - lx, ry - ly),
            math.degrees(math.atan2(ry - ly, rx - lx)),
        )


def check_nesting(rects: list[Rect]) -> None:
    """Every rectangle lies inside its parent (painted before it) and overlaps no other earlier rectangle
    than its ancestors, so a label's area is its rectangles' areas minus their direct children's."""
    for i, rect in enumerate(rects):
        assert 0 <= rect.x0 < rect.x1 <= GRID and 0 <= rect.y0 < rect.y1 <= GRID, rect
        ancestors, parent = set(), rect.parent
        while parent is not None:
            assert parent < i, (rect, parent)
            ancestors.add(parent)
            parent = rects[parent].parent
        for j, other in enumerate(rects[:i]):
            if j in ancestors:
                assert other.contains(rect), (rect, other)
            else:
                assert rect.disjoint(other), (rect, other)


@dataclass(frozen=True)
class Style:
    """Per-face variations: hair (none = bald) and how much of the skin width it covers, accessories."""

    hair: bool = True
    hair_cut_left: float = 0.0  # fraction of the skin width left bare on the left
    hair_cut_right: float = 0.0
    glasses: bool = False
    hat: bool = False
    earring: bool = False
    necklace: bool = False
    eye_dy: int = 0  # grid rows the image-right eye sits lower than the image-left one (roll)
    swap_eye_labels: bool = False  # label 4 on the image-right eye


def face_geometry(box: np.ndarray, style: Style) -> FaceGeometry:
    """Rectangles and landmarks for a face whose box (1024 px) is ``box``."""
    fx0, fy0, fx1, fy1 = (float(v) / SCALE for v in box)
    sx0, sy0 = max(6, round(fx0)), max(14, round(fy0))
    sx1, sy1 = min(GRID - 6, round(fx1)), min(GRID - 24, round(fy1))
    w, h = sx1 - sx0, sy1 - sy0
    assert w >= 30 and h >= 30, f"face too small on the grid: {w}x{h}"
    cx = sx0 + w // 2
    ew, eh = max(3, round(0.09 * w)), max(2, round(0.035 * h))
    ey = sy0 + round(0.42 * h)
    exl, exr = sx0 + round(0.30 * w), sx0 + round(0.70 * w)
    eyr = ey + style.eye_dy
    rects: list[Rect] = []

    def add(label: int, x0: int, y0: int, x1: int, y1: int, parent: int | None = None) -> int:
        rects.append(Rect(label, x0, y0, x1, y1, parent))
        return len(rects) - 1

    neck_bottom = min(GRID, sy1 + max(8, h // 4))
    neck = add(14, cx - w // 4, sy1, cx + w // 4, neck_bottom)
    if style.necklace:
        add(15, cx - w // 6, neck_bottom - 4, cx + w // 6, neck_bottom - 2, neck)
    if neck_bottom < GRID:
        add(16, 0, neck_bottom, GRID, GRID)
    if style.hair:
        hy0 = max(6, sy0 - round(0.35 * h))
        hx0 = sx0 + round(style.hair_cut_left * w)
        hx1 = sx1 - round(style.hair_cut_right * w)
        add(17, hx0, hy0, hx1, sy0)
        if style.hat:
            add(18, hx0, hy0 - 6, hx1, hy0)
    ear_l = add(7, sx0 - 5, ey - 3, sx0, ey + 9)
    add(8, sx1, ey - 3, sx1 + 5, ey + 9)
    if style.earring:
        add(9, sx0 - 4, ey + 5, sx0 - 1, ey + 8, ear_l)
    skin = add(1, sx0, sy0, sx1, sy1)
    left_label, right_label = (5, 4) if style.swap_eye_labels else (4, 5)
    add(left_label, exl - ew, ey - eh, exl + ew, ey + eh, skin)
    add(right_label, exr - ew, eyr - eh, exr + ew, eyr + eh, skin)
    brow_top = min(ey, eyr) - eh - 5
    add(2 if left_label == 4 else 3, exl - ew - 1, brow_top, exl + ew + 1, brow_top + 2, skin)
    add(3 if left_label == 4 else 2, exr - ew - 1, brow_top, exr + ew + 1, brow_top + 2, skin)
    if style.glasses:
        add(6, exl + ew + 1, ey - 1, exr - ew - 1, ey + 1, skin)
    nose_top, nose_bottom = sy0 + round(0.52 * h), sy0 + round(0.66 * h)
    add(10, cx - max(2, w // 12), nose_top, cx + max(2, w // 12), nose_bottom, skin)
    my, mw = sy0 + round(0.76 * h), max(4, round(0.16 * w))
    add(12, cx - mw, my, cx + mw, my + 2, skin)
    add(11, cx - mw, my + 2, cx + mw, my + 3, skin)
    add(13, cx - mw, my + 3, cx + mw, my + 5, skin)
    check_nesting(rects)
    left = (float(SCALE * exl), float(SCALE * ey))
    right = (float(SCALE * exr), float(SCALE * eyr))
    hy0 = next((r.y0 for r in rects if r.label == 17), max(6, sy0 - round(0.35 * h)))
    points = _landmarks(sx0, sy0, sx1, sy1, hy0, left, right, 4 * ew, 4 * eh, brow_top, my, mw)
    return FaceGeometry(rects, points, left, right)


def _landmarks(sx0, sy0, sx1, sy1, hy0, left, right, a, b, brow_top, my, mw) -> np.ndarray:
    """110 points in pixels: iBUG-68 order for 0-67 (ASSUMED for SFHQ), hairline arcs for 68-109."""
    s = SCALE
    cx, cy = s * (sx0 + sx1) / 2, s * (sy0 + sy1) / 2
    rx, ry = s * (sx1 - sx0) / 2, s * (sy1 - sy0) / 2
    points = np.zeros((LANDMARKS, 2), np.float64)
    angles = np.linspace(np.pi, 0, 17)  # jaw: the lower half-ellipse, image left to right
    points[0:17] = np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], axis=1)
    for start, (ex, _) in ((17, left), (22, right)):  # brows along their top edge
        points[start : start + 5] = np.stack(
            [np.linspace(ex - a - s, ex + a + s, 5), np.full(5, s * brow_top)], axis=1
        )
    points[27:31] = np.stack([np.full(4, cx), np.linspace(left[1], s * (sy0 + 0.62 * (sy1 - sy0)), 4)], 1)
    points[31:36] = np.stack(
        [np.linspace(cx - 2 * s, cx + 2 * s, 5), np.full(5, s * (sy0 + 0.66 * (sy1 - sy0)))], 1
    )
    hexagon = np.array([(-a, 0), (-a / 2, -b), (a / 2, -b), (a, 0), (a / 2, b), (-a / 2, b)], np.float64)
    points[36:42] = np.asarray(left) + hexagon
    points[42:48] = np.asarray(right) + hexagon
    mouth = np.linspace(np.pi, -np.pi, 12, endpoint=False)
    mcx, mcy = cx, s * (my + 2.5)
    points[48:60] = np.stack([mcx + s * mw * np.cos(mouth), mcy + s * 2.5 * np.sin(mouth)], 1)
    inner = np.linspace(np.pi, -np.pi, 8, endpoint=False)
    points[60:68] = np.stack([mcx + s * (mw - 1) * np.cos(inner), mcy + s * 1.0 * np.sin(inner)], 1)
    arc = np.linspace(np.pi, 0, 21)
    points[68:89] = np.stack([cx + rx * np.cos(arc), s * sy0 - 0.15 * ry * np.sin(arc)], 1)  # inner hairline
    points[89:110] = np.stack([cx + 1.1 * rx * np.cos(arc), s * hy0 - 0.1 * ry * np.sin(arc)], 1)  # outer
    points[:36] = np.clip(points[:36], 0, SIZE)
    points[48:] = np.clip(points[48:], 0, SIZE)
    return points.astype(np.float32)


# --- images ---------------------------------------------------------------------------------------------


def face_image(person: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 1024² RGB image of ``person``: a square window around the face (1.8-2.6x its size), maybe
    mirrored, brighter or darker; and the face box in its pixels."""
    photo = Image.fromarray(np.asarray(real_faces()[person]))
    box = face_box(person).box.astype(np.float64)
    width, height = photo.size
    side = min(width, height, max(box[2] - box[0], box[3] - box[1]) * rng.uniform(1.8, 2.6))
    cx = (box[0] + box[2]) / 2 + rng.uniform(-0.1, 0.1) * (box[2] - box[0])
    cy = (box[1] + box[3]) / 2 + rng.uniform(-0.1, 0.1) * (box[3] - box[1])
    x0 = float(np.clip(cx - side / 2, 0, width - side))
    y0 = float(np.clip(cy - side / 2, 0, height - side))
    window = photo.resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
    window = ImageEnhance.Brightness(window).enhance(float(rng.uniform(0.8, 1.2)))
    scale = SIZE / side
    face = (box - np.array([x0, y0, x0, y0])) * scale
    if rng.random() < 0.5:
        window = window.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        face = np.array([SIZE - face[2], face[1], SIZE - face[0], face[3]])
    return np.asarray(window), face.astype(np.float32)


def no_face_image() -> np.ndarray:
    """A 1024² smooth colour gradient: nothing for a face detector to find."""
    ramp = np.linspace(0, 255, SIZE, dtype=np.float32)
    image = np.stack(
        [np.add.outer(ramp, ramp) / 2, np.tile(ramp, (SIZE, 1)), np.full((SIZE, SIZE), 128.0)], 2
    )
    return image.astype(np.uint8)


def encode_png(labels: np.ndarray) -> bytes:
    """A mode-L PNG of a label map."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(labels, np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def encode_npz(points: np.ndarray, key: str = "landmarks") -> bytes:
    """An ``np.savez`` file holding ``points`` under ``key``."""
    buffer = io.BytesIO()
    np.savez(buffer, **{key: points})
    return buffer.getvalue()


def random_features(
    name: str, image: np.ndarray | None = None, *, dim: int = FEATURE_DIM, key: str = FEATURE_KEY
) -> dict:
    """``{key: float32 (1, dim)}``: a unit vector seeded by the name."""
    vector = np.random.default_rng(zlib.crc32(name.encode())).standard_normal(dim)
    return {key: (vector / np.linalg.norm(vector)).astype(np.float32)[None, :]}


def pickle_features(features: Mapping[str, np.ndarray], numpy1: bool = True) -> bytes:
    """Pickle a features dict; ``numpy1`` spells numpy's globals as numpy 1 did (the released files)."""
    buffer = io.BytesIO()
    if numpy1:
        Numpy1Pickler(buffer, protocol=4).dump(dict(features))
    else:
        pickle.dump(dict(features), buffer, protocol=4)
    return buffer.getvalue()


def malicious_pickle(marker: str) -> bytes:
    """A features-shaped pickle that would create ``marker`` if it were ever unpickled."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "evil.pickle")
        write_malicious_pickle(path, marker)
        with open(path, "rb") as handle:
            return handle.read()


# --- the part -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Faults:
    """How many images carry each fault (distinct images, taken in order after the clean ones)."""

    missing_landmarks: int = 0
    missing_segmentation: int = 0
    missing_features: int = 0
    orphan_landmarks: int = 0  # extra npz without an image
    orphan_segmentation: int = 0  # extra map without an image
    orphan_features: int = 0
    corrupt_npz: int = 0
    wrong_shape_npz: int = 0  # a [68, 2] array
    nan_landmarks: int = 0
    outside_landmarks: int = 0
    bad_label_map: int = 0  # a patch of label 25
    corrupt_png: int = 0
    rgb_map: int = 0
    truncated_pickle: int = 0
    missing_feature_key: int = 0
    malicious_pickle: int = 0  # needs SfhqFixture's marker
    no_face_image: int = 0  # a smooth gradient instead of a face (maps and landmarks as usual)
    unexpected_file: bool = False  # a README.txt in images/

    @classmethod
    def all(cls) -> Faults:
        """One of each."""
        return cls(**{name: (True if name == "unexpected_file" else 1) for name in cls.__dataclass_fields__})


@dataclass(eq=False)
class ImageTruth:
    """What one image's rows must hold."""

    name: str
    person: str
    face_box: np.ndarray  # float32 [4], pixels of the 1024² image
    points: np.ndarray  # float32 [110, 2] as written
    landmark_valid: bool
    left_eye: tuple[float, float]  # image-left eye centre (= landmark group left_eye under the assumption)
    right_eye: tuple[float, float]
    map: MapTruth
    style: Style
    features: dict[str, np.ndarray] = field(default_factory=dict)
    has_face: bool = True

    @property
    def landmark_box(self) -> np.ndarray:
        finite = self.points[np.isfinite(self.points).all(axis=1)]
        return np.concatenate([finite.min(axis=0), finite.max(axis=0)]).astype(np.float32)


@dataclass(eq=False)
class SfhqFixture:
    """A written part: where it is, every image's truth, and which names carry which fault."""

    storage: Storage
    folder: str
    part: str
    images: dict[str, ImageTruth]
    faults: dict[str, list[str]]
    orphans: dict[str, list[str]]  # modality -> names of files without an image
    marker: str | None
    feature_key: str

    @property
    def names(self) -> list[str]:
        return sorted(self.images)

    def fault(self, kind: str) -> list[str]:
        return self.faults.get(kind, [])

    def faulty(self, *kinds: str) -> set[str]:
        return {name for kind in kinds for name in self.faults.get(kind, [])}


def image_name(part: str, index: int) -> str:
    """SFHQ's file naming: ``SFHQ_pt{part}_{index:08d}``."""
    return f"SFHQ_pt{part}_{index:08d}"


def _style(rng: np.random.Generator, index: int) -> Style:
    bald = index % 7 == 3
    return Style(
        hair=not bald,
        hair_cut_left=float(rng.choice([0.0, 0.0, 0.25, 0.55])),
        hair_cut_right=float(rng.choice([0.0, 0.0, 0.1])),
        glasses=index % 4 == 1,
        hat=index % 5 == 2 and not bald,
        earring=index % 3 == 0,
        necklace=index % 4 == 2,
        eye_dy=int(rng.integers(-2, 3)),
        swap_eye_labels=index % 2 == 1,
    )


def build_face(
    part: str, index: int, seed: int = 0
) -> tuple[str, str, np.ndarray, np.ndarray, FaceGeometry, Style]:
    """(name, person, image, face box, geometry, style) of image ``index``: deterministic in (part, index, seed)."""
    rng = np.random.default_rng([seed, int(part), index])
    person = PEOPLE[index % len(PEOPLE)]
    image, box = face_image(person, rng)
    style = _style(rng, index)
    return image_name(part, index), person, image, box, face_geometry(box, style), style


def write_sfhq_part(
    storage: Storage,
    folder: str,
    n: int = 8,
    *,
    part: str = "1",
    faults: Faults | None = None,
    marker: str | None = None,
    features: FeatureFn | None = None,
    feature_key: str = FEATURE_KEY,
    feature_dim: int = FEATURE_DIM,
    numpy1_pickles: bool = True,
    seed: int = 0,
    jpeg_quality: int = 90,
) -> SfhqFixture:
    """Write an SFHQ part of ``n`` images (plus orphans) under ``folder`` and return what it must give.

    Faults go to distinct images after the first ``n - faulty`` clean ones (so ``n`` must exceed the number
    of faulty images). ``marker`` is the file the malicious pickle would create (required with that fault).
    """
    faults = faults or Faults()
    folder = folder.rstrip("/")
    counts = {name: int(getattr(faults, name)) for name in faults.__dataclass_fields__}
    orphan_kinds = {
        "orphan_landmarks": "landmarks",
        "orphan_segmentation": "segmentations",
        "orphan_features": "pretrained_features",
    }
    per_image = {k: v for k, v in counts.items() if k not in orphan_kinds and k != "unexpected_file"}
    if sum(per_image.values()) >= n:
        raise ValueError(f"{sum(per_image.values())} faulty images need n > that, got n={n}")
    if counts["malicious_pickle"] and not marker:
        raise ValueError("the malicious_pickle fault needs a marker path")
    assigned: dict[str, list[str]] = {}
    slot = n - sum(per_image.values())
    for kind, count in per_image.items():
        assigned[kind] = [image_name(part, i) for i in range(slot, slot + count)]
        slot += count
    fault_of = {name: kind for kind, names in assigned.items() for name in names}
    make_features = features or (
        lambda name, image: random_features(name, image, dim=feature_dim, key=feature_key)
    )
    images: dict[str, ImageTruth] = {}

    def put(modality: str, name: str, extension: str, data: bytes) -> None:
        storage.write_bytes(f"{folder}/{modality}/{name}{extension}", data)

    total = n + sum(counts[k] for k in orphan_kinds)
    orphans: dict[str, list[str]] = {m: [] for m in orphan_kinds.values()}
    orphan_slots = [m for k, m in orphan_kinds.items() for _ in range(counts[k])]
    for index in range(total):
        name, person, image, box, geometry, style = build_face(part, index, seed)
        orphan = orphan_slots[index - n] if index >= n else None
        fault = fault_of.get(name)
        points = geometry.points.copy()
        if fault == "nan_landmarks":
            points[70] = np.nan
        if fault == "outside_landmarks":
            points[3, 0] = -12.5
            points[90, 1] = SIZE + 6.0
        if fault == "no_face_image":
            image = no_face_image()
        labels = geometry.paint()
        if fault == "bad_label_map":
            labels[:64, :64] = BAD_LABEL
        feats = {k: np.asarray(v) for k, v in make_features(name, image).items()}
        if orphan is not None:
            orphans[orphan].append(name)
        else:
            put("images", name, ".jpg", encode_jpeg(image, jpeg_quality))
            images[name] = ImageTruth(
                name,
                person,
                box,
                points,
                fault not in ("nan_landmarks", "outside_landmarks"),
                geometry.image_left_eye,
                geometry.image_right_eye,
                geometry.truth(),
                style,
                feats,
                has_face=fault != "no_face_image",
            )
        if orphan in (None, "landmarks") and fault != "missing_landmarks":
            data = encode_npz(points)
            if fault == "corrupt_npz":
                data = data[: len(data) // 2]
            if fault == "wrong_shape_npz":
                data = encode_npz(points[:68])
            put("landmarks", name, ".npz", data)
        if orphan in (None, "segmentations") and fault != "missing_segmentation":
            data = encode_png(labels)
            if fault == "corrupt_png":
                data = data[:40] + b"\0" * 64
            if fault == "rgb_map":
                buffer = io.BytesIO()
                Image.fromarray(np.stack([labels] * 3, axis=2)).save(buffer, format="PNG")
                data = buffer.getvalue()
            put("segmentations", name, ".png", data)
        if orphan in (None, "pretrained_features") and fault != "missing_features":
            if fault == "malicious_pickle":
                data = malicious_pickle(str(marker))
            elif fault == "missing_feature_key":
                data = pickle_features({"other_model": next(iter(feats.values()))}, numpy1_pickles)
            else:
                data = pickle_features(feats, numpy1_pickles)
                if fault == "truncated_pickle":
                    data = data[: len(data) // 3]
            put("pretrained_features", name, ".pickle", data)
    if faults.unexpected_file:
        storage.write_bytes(f"{folder}/images/README.txt", b"not an image\n")
        assigned["unexpected_file"] = ["README.txt"]
    return SfhqFixture(storage, folder, part, images, assigned, orphans, marker, feature_key)


# --- the benchmark's maps-and-landmarks-only part --------------------------------------------------------


def write_maps_only_part(folder: str, n: int, distinct: int = 200, seed: int = 0) -> list[str]:
    """A local part of ``n`` names with only ``landmarks/`` and ``segmentations/`` (plus empty ``images/``
    files named like them), made of ``distinct`` faces written many times: fast to build at 20k files.

    The maps are the fixture's rectangles drawn with rounded outlines (ellipses), so PNG decoding costs what
    curved parsing maps cost."""
    from PIL import ImageDraw

    os.makedirs(f"{folder}/landmarks", exist_ok=True)
    os.makedirs(f"{folder}/segmentations", exist_ok=True)
    os.makedirs(f"{folder}/images", exist_ok=True)
    payloads = []
    for index in range(min(distinct, n)):
        rng = np.random.default_rng([seed, 99, index])
        person = PEOPLE[index % 2]
        box = face_box(person).box.astype(np.float64)
        box = (box - box[:2].repeat(2)) / max(box[2] - box[0], box[3] - box[1])
        side = rng.uniform(330, 520)
        x0, y0 = rng.uniform(180, SIZE - side - 180), rng.uniform(200, SIZE - side - 260)
        face = (box * side + np.array([x0, y0, x0, y0])).astype(np.float32)
        geometry = face_geometry(face, _style(rng, index))
        grid = Image.new("L", (GRID, GRID), 0)
        draw = ImageDraw.Draw(grid)
        for rect in geometry.rects:
            shape = draw.rectangle if rect.label in (16,) else draw.ellipse
            shape((rect.x0, rect.y0, rect.x1 - 1, rect.y1 - 1), fill=rect.label)
        labels = np.asarray(grid.resize((SIZE, SIZE), Image.Resampling.NEAREST))
        payloads.append((encode_npz(geometry.points), encode_png(labels)))
    names = [image_name("1", i) for i in range(n)]
    for i, name in enumerate(names):
        npz, png = payloads[i % len(payloads)]
        with open(f"{folder}/landmarks/{name}.npz", "wb") as handle:
            handle.write(npz)
        with open(f"{folder}/segmentations/{name}.png", "wb") as handle:
            handle.write(png)
        open(f"{folder}/images/{name}.jpg", "wb").close()
    return names
