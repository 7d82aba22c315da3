"""Data: datasets, augmentation and batching for MaskFormer.

Paper part: the ground truth z_gt of §3.2, Eq. (3.2b): a set of N_gt (class, binary mask) pairs.
Every dataset here yields an image together with that set ("labels", "masks"), built per class
for semantic data (one mask per class present, as the official semantic mapper does) and per
segment for panoptic data (one mask per "thing" instance or "stuff" region). §4 names the
datasets; REFERENCE.md gives the official augmentation recipe that the defaults follow.

Reading order:
  1. `build_dataset` (bottom of the file): name -> dataset with its default `Recipe`.
  2. `SegmentationDataset.__getitem__`: load -> augment -> tensors -> targets (Eq. 3.2b).
  3. The augmentations (`ResizeShortestEdge`, `RandomCrop`, `ColorAugSSD`, `RandomFlip`).
  4. `semantic_to_targets` / `panoptic_to_targets`: the set z_gt of Eq. (3.2b).
  5. `collate`: pads a list of items into a batch whose size is divisible by 32.
  6. `ShapesDataset`: the built-in synthetic set (the default of train.py; no download).

Differences from the official code (facebookresearch/MaskFormer + detectron2), each also noted
where it happens:
  * Written with PIL/numpy/torch only (no detectron2, no OpenCV). The SSD colour jitter does its
    HSV round trip with PIL, whose hue has 256 steps per turn (OpenCV: 180); the hue shift is
    converted so that it covers the same angle (±36°).
  * Official training pads the image with 128 (raw 0-255 value) before normalisation; here the
    image is padded with 0 *after* normalisation (the mean colour), like the model-side padding
    of the official code and like `collate`.
  * EXIF orientation is not applied: label files are aligned with the stored pixels.
  * COCO panoptic uses the DETR-style recipe without its random-crop branch (see `recipe_for`);
    segments that a transform removes entirely get no (empty) target mask.
  * Randomness comes from an explicit numpy Generator per item, seeded from torch's global RNG
    (so DataLoader workers differ and `torch.manual_seed` makes runs repeatable), not from the
    global `random` module.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

MEAN = (123.675, 116.28, 103.53)  # ImageNet mean, 0-255 RGB
STD = (58.395, 57.12, 57.375)  # ImageNet std, 0-255 RGB
IGNORE_INDEX = 255  # label of pixels that no loss or metric looks at
SIZE_DIVISIBILITY = 32  # collate pads batches to a multiple of the backbone's largest stride
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class DatasetError(ValueError):
    """Bad or missing data; the message names the file (or argument) and what was expected."""


# ----------------------------------------------------------------------------------------------
# Ground truth as a set of (class, mask) pairs: Eq. (3.2b)
# ----------------------------------------------------------------------------------------------


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def semantic_to_targets(sem_seg: torch.Tensor | np.ndarray,
                        ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """One (class, mask) pair per class present: z_gt of Eq. (3.2b) for semantic segmentation.

    sem_seg: (H, W) class map (values >= 0). Returns CPU tensors labels (n,) long, sorted, and
    masks (n, H, W) bool with masks[j] = (sem_seg == labels[j]); ignored pixels are in no mask.
    Computed with numpy: single-threaded and fast inside DataLoader workers.
    """
    sem = _numpy(sem_seg)  # (H, W)
    labels = np.flatnonzero(np.bincount(sem.ravel()))  # (n,) values present, sorted
    labels = labels[labels != ignore_index]
    masks = sem[None] == labels[:, None, None]  # (n, H, W)
    return torch.from_numpy(labels).long(), torch.from_numpy(masks)


def panoptic_to_targets(pan_seg: torch.Tensor | np.ndarray,
                        segments_info: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """One (class, mask) pair per segment: z_gt of Eq. (3.2b) for panoptic segmentation.

    pan_seg: (H, W) segment-id map (0 = void). segments_info: dicts with "id", "category_id"
    (contiguous) and "iscrowd". Crowd regions are not targets (as in the official panoptic
    mappers) and segments absent from pan_seg (e.g. cropped away) are skipped. Returns CPU
    tensors labels (n,) long and masks (n, H, W) bool.
    """
    pan = _numpy(pan_seg)  # (H, W)
    segments = [s for s in segments_info if not s["iscrowd"]]
    ids = np.array([s["id"] for s in segments], np.int64)  # (n,)
    labels = np.array([s["category_id"] for s in segments], np.int64)  # (n,)
    masks = pan[None] == ids[:, None, None]  # (n, H, W)
    present = masks.reshape(len(ids), -1).any(1)  # (n,)
    return torch.from_numpy(labels[present]), torch.from_numpy(masks[present])


# ----------------------------------------------------------------------------------------------
# Reading files (every failure becomes a DatasetError naming the file)
# ----------------------------------------------------------------------------------------------


def _decode(path: Path, decode):
    """Open an image file and return decode(PIL image); an unreadable file becomes a DatasetError."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so that truncated files fail here
            return decode(img)
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetError(f"{path}: cannot read the file ({type(error).__name__}: {error})") from None


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode.startswith("I"):  # 16-bit (I;16*) or 32-bit integer grayscale
        scaled = np.asarray(img).astype(np.float32) / 257.0  # 0..65535 -> 0..255
        img = Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8))
    elif img.mode == "P":
        img = img.convert("RGBA")  # palette images may carry transparency
    return np.asarray(img.convert("RGB"))


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to uint8 (H, W, 3) RGB.

    Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit images are converted to RGB.
    """
    return _decode(path, _to_rgb)


def read_label(path: Path) -> np.ndarray:
    """Decode a single-channel label PNG (mode L, P = palette indices, or 16-bit) to int32 (H, W)."""

    def class_ids(img: Image.Image) -> np.ndarray:
        if img.mode not in ("L", "P") and not img.mode.startswith("I"):
            raise DatasetError(f"{path}: a label map must be a single-channel image (mode L, P or 16-bit) "
                               f"holding class ids, got mode {img.mode}")
        return np.asarray(img).astype(np.int32)

    return _decode(path, class_ids)


def read_panoptic_png(path: Path) -> np.ndarray:
    """Decode a COCO panoptic PNG to its int32 (H, W) segment-id map: id = R + 256 G + 256² B."""

    def segment_ids(img: Image.Image) -> np.ndarray:
        if img.mode not in ("RGB", "RGBA"):
            raise DatasetError(f"{path}: a panoptic PNG must be RGB (id = R + 256 G + 256² B), got {img.mode}")
        rgb = np.asarray(img.convert("RGB")).astype(np.int32)
        return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]

    return _decode(path, segment_ids)


def _check_same_size(image: np.ndarray, label: np.ndarray, image_path: Path, label_path: Path) -> None:
    if image.shape[:2] != label.shape[:2]:
        raise DatasetError(
            f"{label_path}: label size {label.shape[1]}x{label.shape[0]} (WxH) differs from its image "
            f"{image_path} ({image.shape[1]}x{image.shape[0]})"
        )


def _check_values(label: np.ndarray, allowed: np.ndarray, path: Path, expected: str) -> None:
    """Raise if `label` holds a value outside the set `allowed` (bool lookup table)."""
    values = np.unique(label)
    bad = values[(values < 0) | (values >= len(allowed))]
    if len(bad) == 0:
        bad = values[~allowed[values]]
    if len(bad):
        raise DatasetError(f"{path}: label value {int(bad[0])} is out of range (expected {expected})")


# ----------------------------------------------------------------------------------------------
# Augmentation (REFERENCE.md, "Train augmentation"): each takes (image, maps, rng) and returns
# (image, maps); image is uint8 (H, W, 3), maps is a dict of int32 (H, W) label maps that must
# move with the image (sem_seg, pan_seg). Labels are always resized with nearest neighbour.
# ----------------------------------------------------------------------------------------------


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
                 ignore_index: int = IGNORE_INDEX):
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
class Recipe:
    """Resize/crop sizes of a dataset's official recipe. Training: random short edge from
    `train_sizes` (long edge <= train_max_size), random crop `crop_size` (h, w) (None = no crop),
    SSD colour jitter if `color_jitter`, horizontal flip; padded to crop_size with ignore.
    Test: short edge `test_size`, long edge <= test_max_size."""

    crop_size: tuple[int, int] | None
    train_sizes: tuple[int, ...]
    train_max_size: int
    test_size: int
    test_max_size: int
    color_jitter: bool = True
    single_category_max_area: float = 1.0


def recipe_for(name: str, crop_size: int | None = None) -> Recipe | None:
    """The official recipe of dataset `name`; crop_size (the crop's short side) rescales every size.

    ade20k / folder, crop c (default 512; 640 = Swin-B/L): short edge {0.5, 0.6, ..., 2.0} x c,
    long edge <= 4c, crop c x c; test short edge c (long <= 4c).
    cityscapes, crop c (default 512): crop c x 2c, short edge {0.5, ..., 2.0} x 2c (long <= 8c);
    test 2c (long <= 4c). c = 512 is the official 512x1024 crop, 1024 test size.
    coco_panoptic (no crop; crop_size must be None): the DETR-style recipe of the official code:
    short edge {480, 512, ..., 800} (long <= 1333), flip, no colour jitter; test 800 (long <= 1333).
    Deviation: its extra 50% branch (resize to {400, 500, 600}, random 384-600 crop) is left out.
    shapes: None (generated at its final size; every index is already a fresh random scene).
    """
    if name in ("ade20k", "folder"):
        c = crop_size or 512
        return Recipe((c, c), tuple(int(x * 0.1 * c) for x in range(5, 21)), 4 * c, c, 4 * c)
    if name == "cityscapes":
        c = crop_size or 512
        return Recipe((c, 2 * c), tuple(int(x * 0.1 * 2 * c) for x in range(5, 21)), 8 * c, 2 * c, 4 * c)
    if name == "coco_panoptic":
        if crop_size is not None:
            raise DatasetError(f"crop_size={crop_size}: coco_panoptic follows the official DETR-style recipe, "
                               "which has no crop (short edge 480..800, long <= 1333); pass crop_size=None")
        return Recipe(None, tuple(range(480, 801, 32)), 1333, 800, 1333, color_jitter=False)
    return None


RECIPES: dict[str, Recipe | None] = {
    name: recipe_for(name) for name in ("ade20k", "cityscapes", "coco_panoptic", "folder", "shapes")
}


def build_augmentations(recipe: Recipe | None, train: bool, ignore_index: int = IGNORE_INDEX) -> list:
    """The augmentation list of a recipe: the official training order, or the test resize."""
    if recipe is None:
        return []
    if not train:
        return [ResizeShortestEdge((recipe.test_size,), recipe.test_max_size)]
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


def normalize(image: np.ndarray, pad_to: tuple[int, int] | None = None) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float (3, H, W), (x - MEAN) / STD, then zero-padded at the bottom/right
    up to `pad_to` (0 after normalisation = the mean colour). numpy: faster than torch here."""
    x = (image - np.array(MEAN, np.float32)) / np.array(STD, np.float32)  # (H, W, 3) float32
    if pad_to is not None:
        x = pad_map(x, pad_to, 0.0)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))  # (3, H', W')


def pad_map(array: np.ndarray, size: tuple[int, int], value: float) -> np.ndarray:
    """Pad the (H, W, ...) array with `value` at the bottom/right up to at least `size`."""
    h, w = array.shape[:2]
    padding = [(0, max(size[0] - h, 0)), (0, max(size[1] - w, 0))] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, padding, constant_values=value)


def denormalize(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """Normalised (3, H, W) image -> uint8 (H, W, 3) RGB numpy array, for drawing."""
    x = torch.as_tensor(image).detach().float().cpu()
    x = x * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    return x.round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


def make_palette(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 colours, PASCAL-VOC style (bits of k+1 spread over R, G, B; never black)."""
    ids = np.arange(1, num_classes + 1)
    palette = np.zeros((num_classes, 3), np.int64)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= ((ids >> (3 * bit + channel)) & 1) << (7 - bit)
    return palette.astype(np.uint8)


def colorize(sem_seg: torch.Tensor | np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) class map -> uint8 (H, W, 3) colours; ignored (255) and other unknown ids are black."""
    sem = _numpy(sem_seg)
    known = (sem >= 0) & (sem < len(palette))
    out = np.zeros((*sem.shape, 3), np.uint8)
    out[known] = palette[sem[known]]
    return out


# ----------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One decoded image with its label maps at the original resolution."""

    image: np.ndarray  # uint8 (H, W, 3) RGB
    sem_seg: np.ndarray  # int32 (H, W), class ids 0..K-1, IGNORE_INDEX = ignore
    file_name: str
    image_id: Any
    pan_seg: np.ndarray | None = None  # int32 (H, W) segment ids, 0 = void (panoptic sets)
    segments_info: list[dict] | None = None


class SegmentationDataset(Dataset):
    """Common item building: load (subclass) -> augment -> tensors -> targets of Eq. (3.2b).

    Attributes every dataset has: num_classes, class_names, is_thing, palette (K, 3) uint8,
    ignore_index (255), task ("semantic": one target mask per class; "panoptic": one per segment).
    """

    panoptic = False  # whether samples carry pan_seg / segments_info

    def __init__(self, class_names: list[str], is_thing: list[bool], palette: np.ndarray, train: bool,
                 recipe: Recipe | None, task: str = "semantic"):
        if task not in ("semantic", "panoptic") or (task == "panoptic" and not self.panoptic):
            allowed = "'semantic' or 'panoptic'" if self.panoptic else "'semantic' (no panoptic labels)"
            raise DatasetError(f"task={task!r}: this dataset supports {allowed}")
        self.class_names, self.is_thing, self.palette = list(class_names), list(is_thing), palette
        self.num_classes, self.ignore_index = len(class_names), IGNORE_INDEX
        self.train, self.recipe, self.task = train, recipe, task
        self.augmentations = build_augmentations(recipe, train, IGNORE_INDEX)

    def load(self, index: int) -> Sample:
        raise NotImplementedError

    @staticmethod
    def rng() -> np.random.Generator:
        """A fresh augmentation generator seeded from torch's global RNG. In a DataLoader worker that
        RNG is seeded with base_seed + worker_id (a new base_seed every epoch), so workers draw
        different crops; in the main process it follows torch.manual_seed (repeatable runs)."""
        return np.random.default_rng(int(torch.randint(0, 2**63 - 1, (1,))))

    def __getitem__(self, index: int) -> dict:
        return self.get(index)

    def get(self, index: int, rng: np.random.Generator | None = None) -> dict:
        """Item `index`; the training augmentation draws from `rng` (default: `self.rng()`)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} items")
        sample = self.load(index)
        maps = {"sem_seg": sample.sem_seg}
        if sample.pan_seg is not None:
            maps["pan_seg"] = sample.pan_seg
        if self.augmentations:
            image, maps = apply_augmentations(self.augmentations, sample.image, maps, rng or self.rng())
        else:
            image = sample.image

        # training crops smaller than crop_size are padded: image 0 (after normalisation), labels
        # ignore, pan_seg void. Official: the raw image is padded with 128 before normalisation
        # (0.07-0.43 after it); 0 keeps one padding value for the dataset and `collate`.
        pad_to = self.recipe.crop_size if self.train and self.recipe and self.recipe.crop_size else None
        if pad_to is not None:
            maps = {k: pad_map(m, pad_to, IGNORE_INDEX if k == "sem_seg" else 0) for k, m in maps.items()}
        item: dict[str, Any] = {"image": normalize(image, pad_to)}  # (3, H, W)
        item["sem_seg"] = _long_tensor(maps["sem_seg"])  # (H, W)
        if sample.pan_seg is not None:
            item["pan_seg"] = _long_tensor(maps["pan_seg"])  # (H, W)
            item["segments_info"] = sample.segments_info

        # z_gt of Eq. (3.2b), at the item's (augmented, padded) size
        if self.task == "panoptic":
            item["labels"], item["masks"] = panoptic_to_targets(maps["pan_seg"], sample.segments_info)
        else:
            item["labels"], item["masks"] = semantic_to_targets(maps["sem_seg"], self.ignore_index)
        item["file_name"], item["image_id"] = sample.file_name, sample.image_id
        if not self.train:  # evaluation compares at the original resolution
            item["orig_size"] = tuple(sample.sem_seg.shape)
            item["orig_sem_seg"] = _long_tensor(sample.sem_seg)
            if sample.pan_seg is not None:
                item["orig_pan_seg"] = _long_tensor(sample.pan_seg)
        return item


def _long_tensor(label_map: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(label_map, dtype=np.int64))  # a copy: PIL's arrays are read-only


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _pair_labels(images: list[Path], label_dir: Path, label_name) -> list[tuple[Path, Path]]:
    """Pair each image with its label file (label_name(image) -> file name); error if one is missing."""
    present = {p.name for p in label_dir.iterdir()} if label_dir.is_dir() else set()
    pairs = []
    for image in images:
        name = label_name(image)
        if name not in present:
            raise DatasetError(f"{image}: no label file {label_dir / name} (each image needs a label map)")
        pairs.append((image, label_dir / name))
    return pairs


def _split_folder(split: str) -> str:
    if split not in ("train", "val"):
        raise DatasetError(f"split={split!r}: expected 'train' or 'val'")
    return split


def _missing_root(name: str, root: Path, layout: str, url: str) -> DatasetError:
    return DatasetError(f"{name}: dataset not found under root={str(root)!r}; expected the layout {layout} "
                        f"(download: {url})")


class SemanticFolderDataset(SegmentationDataset):
    """Image/label-map pairs on disk; a subclass says how to decode the label file."""

    def __init__(self, pairs: list[tuple[Path, Path]], where: str, **kwargs):
        super().__init__(**kwargs)
        if not pairs:
            raise DatasetError(f"{where}: no images found")
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def decode_label(self, label: np.ndarray, path: Path) -> np.ndarray:
        raise NotImplementedError

    def load(self, index: int) -> Sample:
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        label = read_label(label_path)
        _check_same_size(image, label, image_path, label_path)
        return Sample(image, self.decode_label(label, label_path), str(image_path), image_path.stem)


ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)  # fmt: skip


class ADE20KDataset(SemanticFolderDataset):
    """ADE20K SceneParsing-150: ADEChallengeData2016/{images,annotations}/{training,validation}/.

    Label PNG value 0 ("other") -> ignore 255; 1..150 -> class 0..149. root may be the folder
    ADEChallengeData2016 itself or its parent.
    """

    URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"

    def __init__(self, root: Path, split: str = "train", **kwargs):
        folder = {"train": "training", "val": "validation"}[_split_folder(split)]
        base = next((r for r in (root / "ADEChallengeData2016", root) if (r / "images" / folder).is_dir()), None)
        if base is None:
            raise _missing_root("ade20k", root, f"ADEChallengeData2016/images/{folder}/*.jpg and "
                                f"ADEChallengeData2016/annotations/{folder}/*.png", self.URL)
        images = _list_images(base / "images" / folder)
        pairs = _pair_labels(images, base / "annotations" / folder, lambda p: p.stem + ".png")
        self.lookup = np.full(256, IGNORE_INDEX, np.int32)  # PNG value -> class id
        self.lookup[1:151] = np.arange(150)
        super().__init__(pairs, str(base / "images" / folder), class_names=list(ADE20K_CLASSES),
                         is_thing=[False] * 150, palette=make_palette(150), **kwargs)

    def decode_label(self, label: np.ndarray, path: Path) -> np.ndarray:
        _check_values(label, np.ones(151, bool), path, "0 = other, 1..150 = classes")
        return self.lookup[label]


CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)  # train id order
CITYSCAPES_PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
    (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
], np.uint8)  # fmt: skip


class CityscapesDataset(SemanticFolderDataset):
    """Cityscapes fine: leftImg8bit/{split}/{city}/*_leftImg8bit.png with
    gtFine/{split}/{city}/*_gtFine_labelIds.png; label ids 0..33 -> the 19 train ids, others 255
    (255, i.e. the license plate's id -1 stored as uint8, is also ignore)."""

    URL = "https://www.cityscapes-dataset.com/downloads/ (leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip)"

    def __init__(self, root: Path, split: str = "train", **kwargs):
        split = _split_folder(split)
        image_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
        if not image_dir.is_dir():
            raise _missing_root("cityscapes", root, f"leftImg8bit/{split}/<city>/*_leftImg8bit.png and "
                                f"gtFine/{split}/<city>/*_gtFine_labelIds.png", self.URL)
        pairs = []
        for city in sorted(p for p in image_dir.iterdir() if p.is_dir()):
            images = [p for p in _list_images(city) if p.name.endswith("_leftImg8bit.png")]
            name = lambda p: p.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")  # noqa: E731
            pairs += _pair_labels(images, label_dir / city.name, name)
        self.lookup = np.full(256, IGNORE_INDEX, np.int32)  # label id -> train id
        self.lookup[list(CITYSCAPES_LABEL_IDS)] = np.arange(19)
        self.allowed = np.zeros(256, bool)
        self.allowed[:34] = self.allowed[255] = True
        things = {"person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"}
        super().__init__(pairs, str(image_dir), class_names=list(CITYSCAPES_CLASSES),
                         is_thing=[c in things for c in CITYSCAPES_CLASSES], palette=CITYSCAPES_PALETTE, **kwargs)

    def load(self, index: int) -> Sample:
        sample = super().load(index)
        sample.image_id = sample.image_id.replace("_leftImg8bit", "")
        return sample

    def decode_label(self, label: np.ndarray, path: Path) -> np.ndarray:
        _check_values(label, self.allowed, path, "Cityscapes label ids 0..33")
        return self.lookup[label]


class FolderDataset(SemanticFolderDataset):
    """Your own data: root/images/{train,val}/<name>.<jpg|png|...>, root/labels/{train,val}/<name>.png
    (single-channel class ids 0..K-1, `ignore_index` for unlabelled pixels) and root/classes.txt
    (one class name per line, line k = class k). The file's ignore value becomes 255 in items."""

    def __init__(self, root: Path, split: str = "train", ignore_index: int = IGNORE_INDEX, **kwargs):
        split = _split_folder(split)
        names_file = root / "classes.txt"
        if not (root / "images" / split).is_dir() or not names_file.is_file():
            raise _missing_root("folder", root, f"classes.txt, images/{split}/*.jpg|png and labels/{split}/*.png",
                                "your own data; see the README section 'Datasets'")
        names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
        if not names:
            raise DatasetError(f"{names_file}: no class names (expected one name per line)")
        if len(names) >= IGNORE_INDEX:
            raise DatasetError(f"{names_file}: {len(names)} classes; at most {IGNORE_INDEX - 1} are supported "
                               f"(label {IGNORE_INDEX} marks ignored pixels)")
        images = _list_images(root / "images" / split)
        pairs = _pair_labels(images, root / "labels" / split, lambda p: p.stem + ".png")
        self.file_ignore_index = ignore_index
        super().__init__(pairs, str(root / "images" / split), class_names=names, is_thing=[False] * len(names),
                         palette=make_palette(len(names)), **kwargs)

    def decode_label(self, label: np.ndarray, path: Path) -> np.ndarray:
        K = self.num_classes
        bad = (label < 0) | (label >= K)
        bad &= label != self.file_ignore_index
        if bad.any():
            value = int(label[bad][0])
            raise DatasetError(f"{path}: label value {value} is out of range (expected 0..{K - 1} for the "
                               f"{K} classes of classes.txt, or ignore_index={self.file_ignore_index})")
        return np.where(label == self.file_ignore_index, IGNORE_INDEX, label).astype(np.int32)


class CocoPanopticDataset(SegmentationDataset):
    """COCO panoptic 2017: annotations/panoptic_{split}2017.json, PNGs in
    annotations/panoptic_{split}2017/ (or panoptic_{split}2017/ at the root, detectron2's layout),
    images in {split}2017/. The 133 categories (80 things + 53 stuff) get contiguous ids in
    category-id order. Crowd regions: ignore (255) in sem_seg, kept in pan_seg/segments_info
    (panoptic evaluation needs them), never a target. segments_info "area" is the JSON's
    (original resolution)."""

    panoptic = True
    URL = "https://cocodataset.org/#download (2017 images, panoptic_annotations_trainval2017.zip)"

    def __init__(self, root: Path, split: str = "train", task: str = "panoptic", **kwargs):
        split = _split_folder(split)
        json_path = root / "annotations" / f"panoptic_{split}2017.json"
        if not json_path.is_file():
            raise _missing_root("coco_panoptic", root, f"annotations/panoptic_{split}2017.json, "
                                f"annotations/panoptic_{split}2017/*.png and {split}2017/*.jpg", self.URL)
        try:
            meta = json.loads(json_path.read_text())
            categories = sorted(meta["categories"], key=lambda c: c["id"])
            images = {im["id"]: im["file_name"] for im in meta["images"]}
            annotations = meta["annotations"]
        except (ValueError, KeyError, TypeError) as error:
            raise DatasetError(f"{json_path}: not a COCO panoptic JSON ({type(error).__name__}: {error})") from None
        self.json_path = json_path
        self.contiguous = {c["id"]: k for k, c in enumerate(categories)}
        png_dir = root / "annotations" / f"panoptic_{split}2017"
        png_dir = png_dir if png_dir.is_dir() else root / f"panoptic_{split}2017"
        image_dir = root / f"{split}2017"
        have_png = {p.name for p in png_dir.iterdir()} if png_dir.is_dir() else set()
        have_image = {p.name for p in image_dir.iterdir()} if image_dir.is_dir() else set()
        self.records = []
        for ann in annotations:
            image_name = images.get(ann["image_id"])
            if image_name is None or image_name not in have_image:
                raise DatasetError(f"{json_path}: image of image_id {ann['image_id']} not found in {image_dir}")
            if ann["file_name"] not in have_png:
                raise DatasetError(f"{image_dir / image_name}: no panoptic label {png_dir / ann['file_name']}")
            self.records.append((image_dir / image_name, png_dir / ann["file_name"], ann["image_id"],
                                 ann["segments_info"]))
        if not self.records:
            raise DatasetError(f"{json_path}: no annotations")
        palette = np.array([c.get("color", (0, 0, 0)) for c in categories], np.uint8).reshape(-1, 3)
        super().__init__(class_names=[c["name"] for c in categories],
                         is_thing=[bool(c["isthing"]) for c in categories], palette=palette, task=task, **kwargs)

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> Sample:
        image_path, png_path, image_id, raw_segments = self.records[index]
        image = read_image(image_path)
        pan_seg = read_panoptic_png(png_path)
        _check_same_size(image, pan_seg, image_path, png_path)
        segments_info = []
        for s in raw_segments:
            if s["category_id"] not in self.contiguous:
                raise DatasetError(f"{self.json_path}: segment {s['id']} of {png_path.name} has unknown "
                                   f"category_id {s['category_id']}")
            category = self.contiguous[s["category_id"]]
            segments_info.append({"id": s["id"], "category_id": category, "isthing": self.is_thing[category],
                                  "iscrowd": int(s.get("iscrowd", 0)), "area": s.get("area")})
        # sem_seg: the category of each pixel's segment; void (id 0) and crowd -> ignore
        ids, inverse = np.unique(pan_seg, return_inverse=True)
        category_of = {s["id"]: (IGNORE_INDEX if s["iscrowd"] else s["category_id"]) for s in segments_info}
        unknown = [int(i) for i in ids if i != 0 and i not in category_of]
        if unknown:
            raise DatasetError(f"{png_path}: segment id {unknown[0]} is in the PNG but not in its segments_info "
                               f"in {self.json_path}")
        lookup = np.array([category_of.get(int(i), IGNORE_INDEX) for i in ids], np.int32)
        sem_seg = lookup[inverse.reshape(pan_seg.shape)]
        return Sample(image, sem_seg, str(image_path), image_id, pan_seg, segments_info)


# ----------------------------------------------------------------------------------------------
# The built-in synthetic set: shapes
# ----------------------------------------------------------------------------------------------

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


class ShapesDataset(SegmentationDataset):
    """Synthetic shapes, generated on the fly; item i of a split is the same for a given seed.

    Classes: background (stuff, class 0) and six shapes (things): circle, square, triangle,
    ring, cross, star, told apart by outline only. Both semantic (sem_seg) and panoptic
    (pan_seg: 1 = background, 2.. = shapes; segments_info) ground truth; `task` picks which
    targets `labels`/`masks` hold. No augmentation: every index is already a fresh scene.
    """

    panoptic = True

    def __init__(self, split: str = "train", image_size: int = 128, num_images: int | None = None,
                 seed: int = 0, task: str = "semantic", train: bool = False):
        split = _split_folder(split)
        if image_size < 32:
            raise DatasetError(f"image_size={image_size}: expected >= 32 pixels")
        self.split, self.image_size, self.seed = split, image_size, seed
        self.num_images = num_images if num_images is not None else {"train": 10000, "val": 100}[split]
        super().__init__(class_names=list(SHAPES_CLASSES), is_thing=[False] + [True] * 6, palette=SHAPES_PALETTE,
                         train=train, recipe=None, task=task)

    def __len__(self) -> int:
        return self.num_images

    def scene(self, index: int) -> ShapesScene:
        split_code = {"train": 0, "val": 1}[self.split]
        return generate_shapes(np.random.default_rng([self.seed, split_code, index]), self.image_size)

    def load(self, index: int) -> Sample:
        scene = self.scene(index)
        pan_seg = scene.instances + 1  # segment ids: 1 = background, k + 1 = k-th shape
        areas = np.bincount(pan_seg.ravel(), minlength=len(scene.classes) + 1)
        segments_info = [{"id": k + 1, "category_id": int(c), "isthing": bool(c > 0), "iscrowd": 0,
                          "area": int(areas[k + 1])} for k, c in enumerate(scene.classes) if areas[k + 1] > 0]
        sem_seg = scene.classes[scene.instances].astype(np.int32)
        return Sample(scene.image, sem_seg, f"shapes/{self.split}/{index:06d}", index, pan_seg, segments_info)


# ----------------------------------------------------------------------------------------------
# Building datasets and batches
# ----------------------------------------------------------------------------------------------

DATASETS = ("ade20k", "coco_panoptic", "cityscapes", "folder", "shapes")


def build_dataset(name: str, root: str | Path | None = None, split: str = "train", train: bool = False,
                  **kwargs) -> SegmentationDataset:
    """Build a dataset by name: "ade20k", "coco_panoptic", "cityscapes", "folder" or "shapes".

    train=True applies the training augmentation of the dataset's recipe (`recipe_for`); train=False
    the test resize (and items carry orig_size / orig_sem_seg / orig_pan_seg).
    kwargs: crop_size (int, rescales the recipe, e.g. 640 for Swin-B/L on ADE20K; for shapes: the
    generated image size), single_category_max_area, ignore_index (folder), task
    ("semantic"/"panoptic"; coco_panoptic, shapes), image_size / num_images / seed (shapes).
    """
    if name not in DATASETS:
        raise DatasetError(f"dataset {name!r} unknown; expected one of {', '.join(DATASETS)}")
    allowed = {"crop_size", "task"} | (
        {"image_size", "num_images", "seed"} if name == "shapes" else
        {"single_category_max_area"} | ({"ignore_index"} if name == "folder" else set()))
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise DatasetError(f"{name}: unknown argument {unknown[0]!r}; expected some of {', '.join(sorted(allowed))}")
    if name == "shapes":
        if root is not None:
            raise DatasetError("root: the shapes dataset is generated on the fly; pass root=None")
        crop_size = kwargs.pop("crop_size", None)  # shapes are generated at the crop size
        if crop_size is not None and kwargs.setdefault("image_size", crop_size) != crop_size:
            raise DatasetError(f"crop_size={crop_size} and image_size={kwargs['image_size']}: give one of them")
        return ShapesDataset(split=split, train=train, **kwargs)
    if root is None:
        raise DatasetError(f"root: dataset {name!r} needs root=<folder holding its files> (only 'shapes' needs none)")
    crop_size = kwargs.pop("crop_size", None)
    recipe = recipe_for(name, None if crop_size is None else int(crop_size))
    if "single_category_max_area" in kwargs:
        recipe = replace(recipe, single_category_max_area=float(kwargs.pop("single_category_max_area")))
    cls = {"ade20k": ADE20KDataset, "coco_panoptic": CocoPanopticDataset, "cityscapes": CityscapesDataset,
           "folder": FolderDataset}[name]
    return cls(Path(root), split=split, train=train, recipe=recipe, **kwargs)


def collate(items: list[dict]) -> dict:
    """Batch items: images zero-padded (after normalisation) to a common size divisible by 32,
    sem_seg padded with 255, target masks padded with False, pan_seg with 0 (void).

    Returns {"images": (B, 3, Hp, Wp), "sem_seg": (B, Hp, Wp), "targets": list of per-image dicts
    ("labels", "masks" (n, Hp, Wp) and the item's other keys), "image_sizes": [(h, w), ...]}.
    """
    image_sizes = [tuple(item["image"].shape[-2:]) for item in items]
    Hp = math.ceil(max(h for h, _ in image_sizes) / SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY
    Wp = math.ceil(max(w for _, w in image_sizes) / SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY
    images = torch.stack([pad_tensor(item["image"], (Hp, Wp), 0.0) for item in items])  # (B, 3, Hp, Wp)
    sem_seg = torch.stack([pad_tensor(item["sem_seg"], (Hp, Wp), IGNORE_INDEX) for item in items])  # (B, Hp, Wp)
    targets = []
    for item in items:
        target = {key: value for key, value in item.items() if key not in ("image", "sem_seg")}
        target["masks"] = pad_tensor(item["masks"], (Hp, Wp), False)  # (n, Hp, Wp)
        if "pan_seg" in item:
            target["pan_seg"] = pad_tensor(item["pan_seg"], (Hp, Wp), 0)  # (Hp, Wp)
        targets.append(target)
    return {"images": images, "sem_seg": sem_seg, "targets": targets, "image_sizes": image_sizes}


def pad_tensor(x: torch.Tensor, size: tuple[int, int], value: float | bool) -> torch.Tensor:
    """Pad the last two dims of `x` at the bottom/right with `value` up to `size` (x itself if no padding)."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    out = x.new_full((*x.shape[:-2], *size), value)
    out[..., :h, :w] = x
    return out


# ----------------------------------------------------------------------------------------------
# Benchmark and preview:  python data.py --benchmark   |   python data.py --preview shapes out.png
# ----------------------------------------------------------------------------------------------


def write_ade_like_fixture(root: Path, num_images: int = 16, size: tuple[int, int] = (512, 683),
                           seed: int = 0) -> Path:
    """Write an ADE20K-layout folder of `num_images` training (and 2 validation) JPEG/PNG pairs of
    ADE's typical size (H, W): smooth photo-like images, blocky label maps of 15 classes (0..150)
    each. Returns the root."""
    rng = np.random.default_rng(seed)
    H, W = size
    for split, folder in (("train", "training"), ("val", "validation")):
        (root / "images" / folder).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / folder).mkdir(parents=True, exist_ok=True)
        for i in range(num_images if split == "train" else 2):
            low = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
            image = np.asarray(Image.fromarray(low).resize((W, H), Image.BICUBIC), np.float32)
            image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
            label = rng.choice(rng.choice(151, 15, replace=False), (8, 10)).astype(np.uint8)
            name = f"ADE_{split}_{i:08d}"
            Image.fromarray(image).save(root / "images" / folder / f"{name}.jpg", quality=90)
            Image.fromarray(label).resize((W, H), Image.NEAREST).save(root / "annotations" / folder / f"{name}.png")
    return root


def benchmark(root: str | Path | None = None, workers: tuple[int, ...] = (0, 2), num_batches: int = 8,
              batch_size: int = 8, crop_size: int = 512) -> dict[str, float]:
    """Speed of the ADE20K training pipeline (decode + augment + targets, crop `crop_size`).

    Measures, in this process, the milliseconds per image of each stage, then the samples per
    second through a DataLoader with `collate` for each worker count (start-up and the first batch
    not timed), and the speed of the shapes generator. root: an ADE20K root; None writes
    ADE-sized (683x512) JPEG/PNG fixtures to a temporary folder. Prints and returns the figures.
    """
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if root is None:
            root = write_ade_like_fixture(Path(tmp), num_images=16)
        dataset = build_dataset("ade20k", root, split="train", train=True, crop_size=crop_size)
        rng, n = np.random.default_rng(0), 2 * batch_size
        clock = {"decode_ms": 0.0, "augment_ms": 0.0, "item_ms": 0.0}
        for i in range(n):
            t0 = time.perf_counter()
            sample = dataset.load(i % len(dataset))
            t1 = time.perf_counter()
            apply_augmentations(dataset.augmentations, sample.image, {"sem_seg": sample.sem_seg}, rng)
            t2 = time.perf_counter()
            dataset.get(i % len(dataset), rng)
            t3 = time.perf_counter()
            clock["decode_ms"] += (t1 - t0) * 1000 / n
            clock["augment_ms"] += (t2 - t1) * 1000 / n
            clock["item_ms"] += (t3 - t2) * 1000 / n
        results.update(clock)
        for workers_n in workers:
            sampler = torch.utils.data.RandomSampler(dataset, replacement=True,
                                                     num_samples=(num_batches + 1) * batch_size)
            loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers_n,
                                collate_fn=collate)
            batches = iter(loader)
            next(batches)  # worker start-up and the first batch are not timed
            start = time.perf_counter()
            seen = sum(len(batch["targets"]) for batch in batches)
            results[f"ade20k_workers={workers_n}"] = seen / (time.perf_counter() - start)
    shapes = ShapesDataset("train")
    start = time.perf_counter()
    for i in range(200):
        shapes.scene(i)
    results["shapes_generate"] = 200 / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(200):
        shapes[i]
    results["shapes_items"] = 200 / (time.perf_counter() - start)

    threads = torch.get_num_threads()
    print(f"data benchmark: ADE20K-sized images, {crop_size}x{crop_size} crops, torch threads {threads}")
    units = {"_ms": "ms per image (this process)", "ade20k": "samples/s (DataLoader + collate)",
             "shapes": "images/s (128x128)"}
    for key, value in results.items():
        unit = next(text for end, text in units.items() if key.endswith(end) or key.startswith(end))
        print(f"  {key:18s} {value:8.1f}  {unit}")
    return results


def preview(dataset: SegmentationDataset, path: str | Path, num_items: int = 6, columns: int = 2,
            zoom: int = 1) -> None:
    """Save a PNG grid of items: each cell is the image, its colourised sem_seg and, for panoptic
    sets, its segments (pan_seg) in arbitrary colours; `zoom` enlarges small images (nearest)."""
    cells = []
    for i in range(min(num_items, len(dataset))):
        item = dataset[i]
        panels = [denormalize(item["image"]), colorize(item["sem_seg"], dataset.palette)]
        if "pan_seg" in item:
            _, segment_index = torch.unique(item["pan_seg"], return_inverse=True)  # ids -> 0, 1, 2, ...
            panels.append(colorize(segment_index, make_palette(int(segment_index.max()) + 1)[::-1]))
        cell = np.concatenate([np.pad(p, ((0, 0), (0, 2), (0, 0)), constant_values=255) for p in panels], 1)
        cells.append(cell.repeat(zoom, 0).repeat(zoom, 1))
    h, w = max(c.shape[0] for c in cells), max(c.shape[1] for c in cells)
    rows = math.ceil(len(cells) / columns)
    grid = np.full((rows * (h + 6), columns * (w + 6), 3), 255, np.uint8)
    for k, cell in enumerate(cells):
        y, x = (k // columns) * (h + 6), (k % columns) * (w + 6)
        grid[y:y + cell.shape[0], x:x + cell.shape[1]] = cell
    Image.fromarray(grid).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmark", action="store_true", help="measure data-pipeline speed")
    parser.add_argument("--root", default=None, help="ADE20K root for --benchmark (default: generated fixtures)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts")
    parser.add_argument("--crop-size", type=int, default=512, help="crop size for --benchmark")
    parser.add_argument("--preview", nargs=2, metavar=("DATASET", "OUT_PNG"),
                        help="save a grid of val items (image | sem_seg | pan_seg), e.g. --preview shapes shapes.png")
    parser.add_argument("--preview-root", default=None, help="dataset root for --preview (not for shapes)")
    parser.add_argument("--zoom", type=int, default=1, help="enlarge --preview images by this factor")
    args = parser.parse_args()
    if args.benchmark:
        benchmark(args.root, tuple(args.workers), crop_size=args.crop_size)
    if args.preview:
        name, out = args.preview
        preview(build_dataset(name, args.preview_root, split="val"), out, zoom=args.zoom)
        print(f"saved {out}")
    if not (args.benchmark or args.preview):
        parser.print_help()


if __name__ == "__main__":
    main()
