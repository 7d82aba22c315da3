"""The built-in synthetic dataset's generator: scenes of coloured shapes with exact labels.

Not from the paper: a dataset that needs no download and that a CPU learns in minutes, so that
`python train.py` shows the whole method (Figure 2, Eq. (3.2c)-(3.2d), Eq. (3.4b)) at work. Each
scene holds stuff (the background) and things (shapes told apart by outline only), so it has
both semantic and panoptic ground truth (`data.ShapesDataset` turns it into the set of
(class, mask) pairs of Eq. (3.2b)).

Reading order: `generate_shapes` (one scene from a seeded rng) -> `ShapesScene` -> `shape_mask`
(`shape_outline`, `polygon_mask`) -> the background and paint helpers.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image

SHAPES_CLASSES = ("background", "circle", "square", "triangle", "ring", "cross", "star")
SHAPES_PALETTE = np.array([(40, 40, 40), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
                           (245, 130, 48), (145, 30, 180)], np.uint8)


def shape_outline(kind: str, r: float, angle: float) -> np.ndarray:
    """Polygon vertices (V, 2) as (x, y) around the centre, for a shape of size r rotated by angle.
    Scale factors give all kinds similar areas (1.9-2.4 r²), so that size says nothing of class."""
    if kind == "cross":  # a plus sign: arms of half-width 0.34 r reaching out to r
        a = 0.34 * r
        points = np.array([(a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r),
                           (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a), (-a, -r)])
        c, s = np.cos(angle), np.sin(angle)
        return points @ np.array([[c, s], [-s, c]])
    corners, radius = {"square": (4, [1.05 * r]), "triangle": (3, [1.25 * r]), "star": (10, [1.2 * r, 0.54 * r])}[kind]
    t = angle + np.arange(corners) * 2 * np.pi / corners  # (V,)
    radii = np.resize(np.array(radius), corners)  # star: alternate outer and inner points
    return radii[:, None] * np.stack([np.cos(t), np.sin(t)], 1)


def polygon_mask(xs: np.ndarray, ys: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test for every pixel centre at once (vectorised over pixels)."""
    inside = np.zeros(xs.shape, bool)
    vx, vy = vertices[:, 0], vertices[:, 1]
    for i in range(len(vertices)):  # one pass per edge (j -> i)
        j = i - 1
        crosses = (vy[i] > ys) != (vy[j] > ys)
        x_at_y = vx[i] + (ys - vy[i]) * (vx[j] - vx[i]) / (vy[j] - vy[i] + 1e-12)
        inside ^= crosses & (xs < x_at_y)
    return inside


def shape_mask(kind: str, xs: np.ndarray, ys: np.ndarray, r: float, angle: float) -> np.ndarray:
    """Boolean mask of one shape; xs, ys are pixel-centre offsets from its centre."""
    d2 = xs * xs + ys * ys
    if kind == "circle":
        return d2 <= (0.85 * r) ** 2  # area 2.3 r²
    if kind == "ring":
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)  # area 2.2 r²
    return polygon_mask(xs, ys, shape_outline(kind, r, angle))


@dataclass(frozen=True)
class ShapesScene:
    image: np.ndarray  # uint8 (S, S, 3)
    instances: np.ndarray  # int32 (S, S): 0 = background, k = k-th shape
    classes: np.ndarray  # int64 (n + 1,): class of background (0) and of each shape


def generate_shapes(rng: np.random.Generator, size: int = 128, max_shapes: int = 5,
                    min_visible: float = 0.7) -> ShapesScene:
    """One random scene: a textured background and 2..max_shapes shapes painted back to front.

    The class is the shape's outline, never its colour: colours, shading, stripes, sizes
    (r = 0.12-0.24 x size) and rotations are random per instance. A shape may cover earlier ones
    but every shape keeps >= min_visible of its area (placements breaking that are redrawn).
    """
    S = size
    image = _shapes_background(rng, S)
    instances = np.zeros((S, S), np.int32)
    classes, full_area, visible = [0], [0], [S * S]
    ys, xs = _pixel_grid(S) + 0.5  # pixel centres
    wanted = int(rng.integers(2, max_shapes + 1))
    for _ in range(4 * wanted):
        if len(classes) - 1 == wanted:
            break
        c = int(rng.integers(1, len(SHAPES_CLASSES)))
        r = rng.uniform(0.12, 0.24) * S
        cx, cy = rng.uniform(r, S - r, 2)
        angle = rng.uniform(0, 2 * np.pi)
        y0, y1 = max(int(cy - 1.3 * r), 0), min(int(cy + 1.3 * r) + 2, S)  # bounding box
        x0, x1 = max(int(cx - 1.3 * r), 0), min(int(cx + 1.3 * r) + 2, S)
        dx, dy = xs[y0:y1, x0:x1] - cx, ys[y0:y1, x0:x1] - cy
        mask = shape_mask(SHAPES_CLASSES[c], dx, dy, r, angle)
        box = instances[y0:y1, x0:x1]
        lost = np.bincount(box[mask], minlength=len(classes))  # pixels each earlier shape would lose
        remaining = np.array(visible) - lost
        if np.any(remaining[1:] < min_visible * np.array(full_area[1:])):
            continue
        region = image[y0:y1, x0:x1]
        region[mask] = _shapes_paint(rng, region[mask], dx[mask], dy[mask], r)
        box[mask] = len(classes)
        visible = list(remaining) + [int(mask.sum())]
        classes.append(c)
        full_area.append(int(mask.sum()))
    y, x = rng.integers(0, S, 2)  # sensor noise: a random window of a fixed noise texture (fast)
    image += _noise_texture(S)[y:y + S, x:x + S] * rng.uniform(3, 10)
    return ShapesScene(np.clip(image, 0, 255).astype(np.uint8), instances, np.array(classes, np.int64))


@functools.lru_cache(maxsize=4)
def _pixel_grid(S: int) -> np.ndarray:
    grid = np.mgrid[0:S, 0:S].astype(np.float32)  # (2, S, S): row and column index
    grid.flags.writeable = False  # cached: shared by every call
    return grid


@functools.lru_cache(maxsize=4)
def _noise_texture(S: int) -> np.ndarray:
    noise = np.random.default_rng(12345).standard_normal((2 * S, 2 * S, 3), dtype=np.float32)
    noise.flags.writeable = False
    return noise


def _shapes_background(rng: np.random.Generator, S: int) -> np.ndarray:
    """Smooth random colour field (a 2x2..5x5 grid of colours, bicubic) plus, often, faint stripes."""
    grid = int(rng.integers(2, 6))
    colours = rng.integers(0, 256, (grid, grid, 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(colours).resize((S, S), Image.BICUBIC), np.float32).copy()  # (S, S, 3)
    if rng.random() < 0.6:
        ys, xs = _pixel_grid(S)
        phi, frequency, amplitude = rng.uniform(0, np.pi), rng.uniform(0.15, 0.6), rng.uniform(8, 25)
        image += amplitude * np.sin(frequency * (xs * np.cos(phi) + ys * np.sin(phi)))[..., None]
    return image


def _shapes_paint(rng: np.random.Generator, under: np.ndarray, dx: np.ndarray, dy: np.ndarray, r: float):
    """Colours (n, 3) of a shape's n pixels: a random colour far enough (>= 80 in RGB) from what it
    covers, a linear shading ramp, and sometimes stripes."""
    candidates = rng.uniform(0, 255, (8, 3)).astype(np.float32)
    distance = np.linalg.norm(candidates - under.mean(0), axis=1)
    far = np.nonzero(distance >= 80)[0]
    colour = candidates[far[0] if len(far) else int(np.argmax(distance))]
    phi = rng.uniform(0, 2 * np.pi)
    ramp = (dx * np.cos(phi) + dy * np.sin(phi)) / r  # -1..1 across the shape
    paint = colour * (1 + rng.uniform(0, 0.25) * ramp)[:, None]  # (n, 3)
    if rng.random() < 0.3:
        other = rng.uniform(0, 255, 3).astype(np.float32)
        stripes = np.sin(rng.uniform(0.3, 0.8) * (dx * np.cos(phi + 1) + dy * np.sin(phi + 1))) > 0
        paint[stripes] = 0.6 * paint[stripes] + 0.4 * other
    return paint
