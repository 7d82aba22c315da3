"""The built-in synthetic dataset's generator: scenes of coloured shapes with exact labels.

Not from the paper: a dataset that needs no download and that a CPU learns in minutes, so that
`python train.py` shows the whole method (Figure 2, Eq. (3.2c)-(3.2d), Eq. (3.4b)) at work. Each
scene holds stuff (the background) and things (shapes told apart by outline only), so it has
both semantic and panoptic ground truth (`data.ShapesDataset` turns it into the set of
(class, mask) pairs of Eq. (3.2b)).

Reading order: `generate_shapes` (one scene from a seeded rng) -> `ShapesScene` -> `shape_mask`
(`shape_outline`, `polygon_mask`) -> the background and paint helpers -> the options (last section):
many classes (outline x colour, up to 97 classes: `--shapes-colours`) and panoptic "stuff" (textured
background regions: `--shapes-stuff`), for the §4 studies of tooling/experiments.py.
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
    classes: np.ndarray  # int64 (n + 1,): class of background (0) and of each shape (`thing_class`)
    stuff: np.ndarray | None = None  # int32 (S, S): the stuff class of each pixel (stuff > 0 only)


def generate_shapes(rng: np.random.Generator, size: int = 128, max_shapes: int = 5,
                    min_visible: float = 0.7, colours: int = 0, stuff: int = 0) -> ShapesScene:
    """One random scene: a textured background and 2..max_shapes shapes painted back to front.

    The class is the shape's outline, never its colour: colours, shading, stripes, sizes
    (r = 0.12-0.24 x size) and rotations are random per instance. A shape may cover earlier ones
    but every shape keeps >= min_visible of its area (placements breaking that are redrawn).
    Options (`num_shapes_classes`): colours = c > 0 makes the class outline x colour (c of
    TONE_NAMES; the colour is then the class's, without stripes); stuff = s > 0 splits the
    background into 2-4 regions of s textures (STUFF_TEXTURES), the "stuff" of panoptic targets.
    """
    S = size
    image, stuff_map = _stuff_background(rng, S, stuff) if stuff else (_shapes_background(rng, S), None)
    instances = np.zeros((S, S), np.int32)
    classes, full_area, visible = [0], [0], [S * S]
    ys, xs = _pixel_grid(S) + 0.5  # pixel centres
    wanted = int(rng.integers(2, max_shapes + 1))
    for _ in range(4 * wanted):
        if len(classes) - 1 == wanted:
            break
        c = int(rng.integers(1, len(SHAPES_CLASSES)))
        tone = int(rng.integers(colours)) if colours else 0
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
        region[mask] = (_tone_paint(rng, dx[mask], dy[mask], r, tone) if colours else
                        _shapes_paint(rng, region[mask], dx[mask], dy[mask], r))
        box[mask] = len(classes)
        visible = list(remaining) + [int(mask.sum())]
        classes.append(thing_class(c, tone, colours))
        full_area.append(int(mask.sum()))
    y, x = rng.integers(0, S, 2)  # sensor noise: a random window of a fixed noise texture (fast)
    image += _noise_texture(S)[y:y + S, x:x + S] * rng.uniform(3, 10)
    return ShapesScene(np.clip(image, 0, 255).astype(np.uint8), instances, np.array(classes, np.int64), stuff_map)


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


# ----------------------------------------------------------------------------------------------
# Options: many classes (outline x colour) and panoptic stuff (textured background regions)
# ----------------------------------------------------------------------------------------------
TONE_NAMES = ("red", "green", "yellow", "blue", "orange", "purple", "cyan", "magenta", "lime", "pink",
              "teal", "lavender", "brown", "beige", "maroon", "navy")
TONE_PALETTE = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                         (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
                         (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
                         (0, 0, 128)], np.uint8)
STUFF_TEXTURES = ("smooth", "stripes", "checks", "dots", "grain", "waves")
STUFF_PALETTE = np.array([(90, 90, 90), (120, 100, 70), (70, 110, 90), (100, 80, 120), (130, 130, 100),
                          (60, 90, 130)], np.uint8)


def check_options(colours: int, stuff: int) -> None:
    if not 0 <= colours <= len(TONE_NAMES):
        raise ValueError(f"colours={colours}: expected 0..{len(TONE_NAMES)}")
    if not 0 <= stuff <= len(STUFF_TEXTURES):
        raise ValueError(f"stuff={stuff}: expected 0..{len(STUFF_TEXTURES)}")


def num_shapes_classes(colours: int = 0, stuff: int = 0) -> int:
    """K: the stuff classes (1 background, or `stuff` textures), then 6 outlines x max(colours, 1)."""
    return max(stuff, 1) + (len(SHAPES_CLASSES) - 1) * max(colours, 1)


def thing_class(kind: int, tone: int, colours: int) -> int:
    """A scene's class of a shape: 1.. (outline kind 1..6, and its colour when colours > 0)."""
    return 1 + (kind - 1) * max(colours, 1) + tone


def shapes_class_names(colours: int = 0, stuff: int = 0) -> list[str]:
    """Names of the K classes in dataset order: stuff first, then things (outline-major)."""
    stuff_names = list(STUFF_TEXTURES[:stuff]) if stuff else ["background"]
    kinds = SHAPES_CLASSES[1:]
    things = [f"{tone} {kind}" for kind in kinds for tone in TONE_NAMES[:colours]] if colours else list(kinds)
    return stuff_names + things


def shapes_palette(colours: int = 0, stuff: int = 0) -> np.ndarray:
    """(K, 3) uint8 colours: SHAPES_PALETTE by default; a colour class is drawn in its own colour."""
    if not colours and not stuff:
        return SHAPES_PALETTE
    stuff_colours = STUFF_PALETTE[:stuff] if stuff else SHAPES_PALETTE[:1]
    things = np.tile(TONE_PALETTE[:colours], (len(SHAPES_CLASSES) - 1, 1)) if colours else SHAPES_PALETTE[1:]
    return np.concatenate([stuff_colours, things]).astype(np.uint8)


def _tone_paint(rng: np.random.Generator, dx: np.ndarray, dy: np.ndarray, r: float, tone: int) -> np.ndarray:
    """Colours (n, 3) of a shape whose class includes its colour: the tone with a mild shading ramp."""
    phi = rng.uniform(0, 2 * np.pi)
    ramp = (dx * np.cos(phi) + dy * np.sin(phi)) / r  # -1..1 across the shape
    return TONE_PALETTE[tone].astype(np.float32) * (1 + rng.uniform(0, 0.15) * ramp)[:, None]  # (n, 3)


def _stuff_background(rng: np.random.Generator, S: int, stuff: int) -> tuple[np.ndarray, np.ndarray]:
    """A background of 2-4 Voronoi regions, each a random one of `stuff` textures in random colours.
    Returns the image (S, S, 3) float32 and the stuff class map (S, S) int32."""
    ys, xs = _pixel_grid(S)
    centres = rng.uniform(0, S, (int(rng.integers(2, 5)), 2))  # (R, 2) region seeds (x, y)
    distance = (xs[None] - centres[:, 0, None, None]) ** 2 + (ys[None] - centres[:, 1, None, None]) ** 2
    region = distance.argmin(0)  # (S, S) nearest seed
    kinds = rng.integers(0, stuff, len(centres))  # the texture (stuff class) of each region
    image = np.zeros((S, S, 3), np.float32)
    for k, kind in enumerate(kinds):
        inside = region == k
        image[inside] = _texture(rng, STUFF_TEXTURES[kind], xs[inside], ys[inside])
    return image, kinds[region].astype(np.int32)


def _texture(rng: np.random.Generator, kind: str, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Colours (n, 3) of one stuff region's pixels: a random base colour and the texture's pattern."""
    base = rng.uniform(60, 200, 3).astype(np.float32)
    phi, period = rng.uniform(0, np.pi), rng.uniform(5, 9)
    u = (xs * np.cos(phi) + ys * np.sin(phi)) * 2 * np.pi / period  # along the pattern
    v = (-xs * np.sin(phi) + ys * np.cos(phi)) * 2 * np.pi / period  # across it
    if kind == "smooth":
        pattern = 0.1 * np.sin(u / 6)
    elif kind == "stripes":
        pattern = np.sign(np.sin(u))
    elif kind == "checks":
        pattern = np.sign(np.sin(u) * np.sin(v))
    elif kind == "dots":
        pattern = 2.0 * ((np.cos(u) + np.cos(v)) > 1.2) - 1
    elif kind == "grain":
        pattern = rng.standard_normal(xs.shape).astype(np.float32)
    else:  # waves: concentric rings around a random point
        cx, cy = rng.uniform(-20, 80, 2)
        pattern = np.sin(np.hypot(xs - cx, ys - cy) * 2 * np.pi / period)
    return base + 45 * pattern[:, None]  # (n, 3)
