"""Training augmentation and each dataset's recipe of sizes (the paper's §4 settings, docs/recipe.md).

Paper: §4 "Training settings" names the augmentation only briefly (random scale, crop, flip, colour
jitter); docs/recipe.md gives the official numbers. Each augmentation takes (image, maps, rng) and
returns (image, maps): image is uint8 (H, W, 3), maps a dict of int32 (H, W) label maps that move
with it (sem_seg, pan_seg); labels are always resized with nearest neighbour, and pixels a crop
or pad adds to a label map get 255, the ignore label (data.IGNORE_INDEX).

Reading order: `AugmentationRecipe` and `recipe_for` (the sizes per dataset) ->
`build_augmentations` (the official order) -> `ResizeShortestEdge` -> `RandomCrop` ->
`RandomSizeCrop` and `DetrCropBranch` (COCO panoptic) -> `ColorAugSSD` -> `RandomFlip` ->
`apply_augmentations`.

Differences from the official code (detectron2's transforms): PIL/numpy only (no OpenCV); the
SSD colour jitter does its HSV round trip with PIL, whose hue has 256 steps per turn (OpenCV:
180), so the hue shift is converted to cover the same angle (±36°). One recipe per dataset for every
backbone: the official COCO-panoptic Swin-L config caps the training long edge at 1000 (1333 here).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from PIL import Image


def shortest_edge_size(h: int, w: int, size: int, max_size: int) -> tuple[int, int]:
    """Output (h, w) when the short edge goes to `size` and the long edge stays <= `max_size`
    (detectron2 ResizeShortestEdge's arithmetic, rounding included)."""
    scale = size / min(h, w)
    new_h, new_w = h * scale, w * scale
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


def resize(image: np.ndarray, maps: dict[str, np.ndarray], size: tuple[int, int]):
    """Resize the image (PIL bilinear, as detectron2) and the label maps (nearest) to (h, w)."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image, maps
    image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    maps = {k: np.asarray(Image.fromarray(m).resize((w, h), Image.NEAREST)) for k, m in maps.items()}
    return image, maps


class ResizeShortestEdge:
    """Resize so the short edge is a random choice of `sizes`, the long edge at most `max_size`."""

    def __init__(self, sizes: tuple[int, ...], max_size: int):
        self.sizes, self.max_size = tuple(sizes), max_size

    def __call__(self, image, maps, rng: np.random.Generator):
        size = self.sizes[int(rng.integers(len(self.sizes)))]
        return resize(image, maps, shortest_edge_size(*image.shape[:2], size, self.max_size))


class RandomCrop:
    """Random crop of (h, w) (smaller if the image is smaller), with detectron2's optional
    category-area constraint: retry up to 10 times while one class covers more than
    `single_category_max_area` of the crop's labelled pixels (1.0 = off, the official setting)."""

    def __init__(self, crop_size: tuple[int, int], single_category_max_area: float = 1.0,
                 ignore_index: int = 255):
        self.crop_size, self.ignore_index = crop_size, ignore_index
        self.single_category_max_area = single_category_max_area

    def __call__(self, image, maps, rng: np.random.Generator):
        H, W = image.shape[:2]
        h, w = min(self.crop_size[0], H), min(self.crop_size[1], W)
        for _ in range(1 if self.single_category_max_area >= 1.0 else 10):
            y0, x0 = int(rng.integers(H - h + 1)), int(rng.integers(W - w + 1))
            if self._balanced(maps["sem_seg"][y0:y0 + h, x0:x0 + w]):
                break
        return image[y0:y0 + h, x0:x0 + w], {k: m[y0:y0 + h, x0:x0 + w] for k, m in maps.items()}

    def _balanced(self, sem_seg: np.ndarray) -> bool:
        if self.single_category_max_area >= 1.0:
            return True
        classes, counts = np.unique(sem_seg, return_counts=True)
        counts = counts[classes != self.ignore_index]
        return len(counts) > 1 and counts.max() < self.single_category_max_area * counts.sum()


class RandomSizeCrop:
    """detectron2's RandomCrop("absolute_range", (low, high)): crop height drawn uniformly from
    [min(H, low), min(H, high)], then the width likewise from W, then a random position."""

    def __init__(self, low: int, high: int):
        self.low, self.high = low, high

    def __call__(self, image, maps, rng: np.random.Generator):
        H, W = image.shape[:2]
        h = int(rng.integers(min(H, self.low), min(H, self.high) + 1))
        w = int(rng.integers(min(W, self.low), min(W, self.high) + 1))
        return RandomCrop((h, w))(image, maps, rng)


class DetrCropBranch:
    """COCO panoptic's extra branch (official DETRPanopticDatasetMapper, from DETR): with probability
    1/2, resize the short edge to one of {400, 500, 600} (no long-edge cap), then crop a random
    384-600 x 384-600 window; otherwise leave the image as it is. The recipe's usual resize follows."""

    def __init__(self, sizes: tuple[int, ...] = (400, 500, 600), crop_range: tuple[int, int] = (384, 600)):
        self.resize, self.crop = ResizeShortestEdge(sizes, sys.maxsize), RandomSizeCrop(*crop_range)

    def __call__(self, image, maps, rng: np.random.Generator):
        if rng.random() > 0.5:  # the official `np.random.rand() > 0.5`: no crop
            return image, maps
        return self.crop(*self.resize(image, maps, rng), rng)


class ColorAugSSD:
    """The SSD photometric distortion (detectron2's ColorAugSSDTransform): random brightness,
    then either (contrast, saturation, hue) or (saturation, hue, contrast), each step applied
    with probability 1/2, rounding to uint8 after each step as the original does.

    Deviation: the HSV round trip uses PIL (hue in 256 steps per turn) instead of OpenCV (180
    steps); the hue shift, drawn in OpenCV units in [-18, 18], is converted to the same angle.
    """

    def __init__(self, brightness_delta: float = 32, contrast: tuple[float, float] = (0.5, 1.5),
                 saturation: tuple[float, float] = (0.5, 1.5), hue_delta: int = 18):
        self.brightness_delta, self.contrast_range = brightness_delta, contrast
        self.saturation_range, self.hue_delta = saturation, hue_delta

    def __call__(self, image, maps, rng: np.random.Generator):
        image = self.brightness(image, rng)
        if rng.random() < 0.5:
            image = self.hue(self.saturation(self.contrast(image, rng), rng), rng)
        else:
            image = self.contrast(self.hue(self.saturation(image, rng), rng), rng)
        return image, maps

    @staticmethod
    def _scale_shift(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def brightness(self, image, rng):
        if rng.random() < 0.5:
            return self._scale_shift(image, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        return image

    def contrast(self, image, rng):
        if rng.random() < 0.5:
            return self._scale_shift(image, alpha=rng.uniform(*self.contrast_range))
        return image

    def saturation(self, image, rng):
        if rng.random() < 0.5:
            hsv = np.array(Image.fromarray(image).convert("HSV"))
            hsv[..., 1] = self._scale_shift(hsv[..., 1], alpha=rng.uniform(*self.saturation_range))
            return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
        return image

    def hue(self, image, rng):
        if rng.random() < 0.5:
            hsv = np.array(Image.fromarray(image).convert("HSV"))
            degrees = 2 * int(rng.integers(-self.hue_delta, self.hue_delta + 1))  # OpenCV unit = 2°
            hsv[..., 0] = (hsv[..., 0].astype(np.int32) + round(degrees * 256 / 360)) % 256
            return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
        return image


class RandomFlip:
    """Horizontal flip with probability `prob`."""

    def __init__(self, prob: float = 0.5):
        self.prob = prob

    def __call__(self, image, maps, rng: np.random.Generator):
        if rng.random() < self.prob:
            return image[:, ::-1], {k: m[:, ::-1] for k, m in maps.items()}
        return image, maps


@dataclass(frozen=True)
class AugmentationRecipe:
    """Resize/crop sizes of a dataset's official recipe. Training: random short edge from
    `train_sizes` (long edge <= train_max_size), random crop `crop_size` (h, w) (None = no crop),
    SSD colour jitter if `color_jitter`, horizontal flip; padded to crop_size with ignore.
    `detr_crop` (COCO panoptic): the official DETR-style order instead: flip, `DetrCropBranch`, resize.
    Test: short edge `test_size`, long edge <= test_max_size. Multi-scale test (infer.py --tta):
    short edges {0.5, ..., 1.75} x test_size, long edge <= tta_max_scale x test_size (official
    TEST.AUG.MAX_SIZE: 3584 = 7 x 512 for ADE20K, 4096 = 4 x 1024 for Cityscapes)."""

    crop_size: tuple[int, int] | None
    train_sizes: tuple[int, ...]
    train_max_size: int
    test_size: int
    test_max_size: int
    color_jitter: bool = True
    single_category_max_area: float = 1.0
    detr_crop: bool = False
    tta_max_scale: int = 7


def recipe_for(name: str, crop_size: int | None = None) -> AugmentationRecipe | None:
    """The official recipe of dataset `name`; crop_size (the crop's short side) rescales every size.

    ade20k / folder, crop c (default 512; 640 = Swin-B/L): short edge {0.5, 0.6, ..., 2.0} x c,
    long edge <= 4c, crop c x c; test short edge c (long <= 4c).
    cityscapes, crop c (default 512): crop c x 2c, short edge {0.5, ..., 2.0} x 2c (long <= 8c);
    test 2c (long <= 4c). c = 512 is the official 512x1024 crop, 1024 test size.
    coco_panoptic (no crop_size; it must be None): the DETR-style recipe of the official code: flip,
    with probability 1/2 a resize to {400, 500, 600} and a random 384-600 crop, then short edge
    {480, 512, ..., 800} (long <= 1333); no colour jitter; test 800 (long <= 1333).
    ade20k_full: as ade20k (crop 512). ade20k_panoptic: as ade20k with crop 640 (short edge
    {0.5, ..., 2.0} x 640, long <= 2560; test 640, long <= 2560).
    coco_stuff_10k, crop c (default 640): short edge {0.5, 0.6, ..., 1.5} x c, long <= 4c, crop c x c;
    test c (long <= 4c).
    mapillary, crop c (default 1280): short edge {0.5, ..., 2.0} x 1.6c (2048 for c = 1280), long
    <= 6.4c (8192), crop c x c; test short edge 1.6c with long edge <= 1.6c (2048 / 2048).
    shapes: None (generated at its final size; every index is already a fresh random scene).
    """
    if name in ("ade20k", "folder", "ade20k_full", "ade20k_panoptic"):
        c = crop_size or (640 if name == "ade20k_panoptic" else 512)
        return AugmentationRecipe((c, c), tuple(int(x * 0.1 * c) for x in range(5, 21)), 4 * c, c, 4 * c)
    if name == "cityscapes":
        c = crop_size or 512
        return AugmentationRecipe((c, 2 * c), tuple(int(x * 0.1 * 2 * c) for x in range(5, 21)), 8 * c, 2 * c, 4 * c,
                                  tta_max_scale=4)
    if name == "coco_stuff_10k":
        c = crop_size or 640
        return AugmentationRecipe((c, c), tuple(int(x * 0.1 * c) for x in range(5, 16)), 4 * c, c, 4 * c)
    if name == "mapillary":
        c = crop_size or 1280
        s = 2048 * c // 1280  # the short-edge scale: 2048 at the official 1280 crop
        return AugmentationRecipe((c, c), tuple(int(x * 0.1 * s) for x in range(5, 21)), 4 * s, s, s)
    if name == "coco_panoptic":
        if crop_size is not None:
            raise ValueError(f"crop_size={crop_size}: coco_panoptic follows the official DETR-style recipe, "
                               "which has no crop (short edge 480..800, long <= 1333); pass crop_size=None")
        return AugmentationRecipe(None, tuple(range(480, 801, 32)), 1333, 800, 1333, color_jitter=False,
                                  detr_crop=True)
    return None


RECIPES: dict[str, AugmentationRecipe | None] = {
    name: recipe_for(name) for name in ("ade20k", "cityscapes", "coco_panoptic", "coco_stuff_10k", "ade20k_full",
                                    "mapillary", "ade20k_panoptic", "folder", "shapes")
}


def build_augmentations(recipe: AugmentationRecipe | None, train: bool, ignore_index: int = 255) -> list:
    """The augmentation list of a recipe: the official training order, or the test resize."""
    if recipe is None:
        return []
    if not train:
        return [ResizeShortestEdge((recipe.test_size,), recipe.test_max_size)]
    if recipe.detr_crop:  # COCO panoptic: the official DETR-style order
        return [RandomFlip(), DetrCropBranch(), ResizeShortestEdge(recipe.train_sizes, recipe.train_max_size)]
    augs: list = [ResizeShortestEdge(recipe.train_sizes, recipe.train_max_size)]
    if recipe.crop_size is not None:
        augs.append(RandomCrop(recipe.crop_size, recipe.single_category_max_area, ignore_index))
    if recipe.color_jitter:
        augs.append(ColorAugSSD())
    augs.append(RandomFlip())
    return augs


def apply_augmentations(augs: list, image: np.ndarray, maps: dict[str, np.ndarray], rng: np.random.Generator):
    for aug in augs:
        image, maps = aug(image, maps, rng)
    return image, maps
