"""Data: the ground truth of Eq. (3.2b), the dataset base class, the shapes set, and batches for MaskFormer.

Paper: the ground truth z_gt of §3.2, Eq. (3.2b): a set of N_gt (class, binary mask) pairs.
Every dataset yields an image together with that set ("labels", "masks"), built per class for
semantic data (one mask per class present, as the official semantic mapper does) and per segment
for panoptic data (one mask per "thing" instance or "stuff" region). §4 names the datasets.

Reading order:
  1. `semantic_to_targets` / `panoptic_to_targets`: the set z_gt of Eq. (3.2b).
  2. Reading files (`read_image`, `read_label`, `read_panoptic_png`) and `normalize`.
  3. `SegmentationDataset.__getitem__`: load -> augment (machinery/augment.py) -> tensors -> targets.
  4. `ShapesDataset`: the built-in synthetic set (generator in machinery/shapes.py; train.py's default).
  5. `collate`: pads a list of items into a batch whose size is divisible by 32.
  6. `TrainBatchSampler` and `SeededItems`: train.py's resumable, sharded data order.
Related files: machinery/augment.py (augmentation and recipes), machinery/datasets.py (`build_dataset`:
name -> dataset with its recipe; the on-disk sets ADE20K, Cityscapes, COCO panoptic, COCO-Stuff-10K,
ADE20K-Full, Mapillary Vistas, ADE20K-Panoptic, folder), tooling/prepare.py (the one-time conversion
of four of them, `python -m tooling.prepare NAME ROOT`; `--preview DATASET OUT.png` draws items),
machinery/shapes.py (the synthetic generator).

Differences from the official code (facebookresearch/MaskFormer + detectron2), each also noted
where it happens:
  * Written with PIL/numpy/torch only (no detectron2, no OpenCV); see machinery/augment.py for the
    augmentation's differences.
  * COCO panoptic batches are padded to a multiple of 32 like every other set (`collate`); the
    official COCO config pads them only to the largest image of the batch (SIZE_DIVISIBILITY 0).
  * EXIF orientation is not applied: label files are aligned with the stored pixels.
  * Segments that a transform removes entirely get no (empty) target mask.
  * Randomness comes from an explicit numpy Generator per item, seeded from torch's global RNG
    (so DataLoader workers differ and `torch.manual_seed` makes runs repeatable), not from the
    global `random` module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from machinery.augment import AugmentationRecipe, apply_augmentations, build_augmentations
from machinery.shapes import ShapesScene, check_options, generate_shapes, shapes_class_names, shapes_palette

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


def check_same_size(image: np.ndarray, label: np.ndarray, image_path: Path, label_path: Path) -> None:
    if image.shape[:2] != label.shape[:2]:
        raise DatasetError(
            f"{label_path}: label size {label.shape[1]}x{label.shape[0]} (WxH) differs from its image "
            f"{image_path} ({image.shape[1]}x{image.shape[0]})"
        )


def check_values(label: np.ndarray, allowed: np.ndarray, path: Path, expected: str) -> None:
    """Raise if `label` holds a value outside the set `allowed` (bool lookup table)."""
    values = np.unique(label)
    bad = values[(values < 0) | (values >= len(allowed))]
    if len(bad) == 0:
        bad = values[~allowed[values]]
    if len(bad):
        raise DatasetError(f"{path}: label value {int(bad[0])} is out of range (expected {expected})")


PAD_VALUE = 128  # raw 0-255 value of the pixels that pad a training crop (official semantic mapper)


def normalize(image: np.ndarray, pad_to: tuple[int, int] | None = None) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float (3, H', W'): padded at the bottom/right up to `pad_to` with the raw
    value PAD_VALUE = 128, then (x - MEAN) / STD, as the official mapper pads a training crop before the
    model normalises it (a padded pixel becomes (128 - MEAN) / STD). numpy: faster than torch here."""
    if pad_to is not None:
        image = pad_map(image, pad_to, PAD_VALUE)
    x = (image - np.array(MEAN, np.float32)) / np.array(STD, np.float32)  # (H', W', 3) float32
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
    ignore_index (255; 65535 for ADE20K-Full, whose 847 classes include 255), task ("semantic": one
    target mask per class; "panoptic": one per segment).
    """

    panoptic = False  # whether samples carry pan_seg / segments_info

    def __init__(self, class_names: list[str], is_thing: list[bool], palette: np.ndarray, train: bool,
                 recipe: AugmentationRecipe | None, task: str = "semantic", ignore_index: int = IGNORE_INDEX):
        if task not in ("semantic", "panoptic") or (task == "panoptic" and not self.panoptic):
            allowed = "'semantic' or 'panoptic'" if self.panoptic else "'semantic' (no panoptic labels)"
            raise DatasetError(f"task={task!r}: this dataset supports {allowed}")
        self.class_names, self.is_thing, self.palette = list(class_names), list(is_thing), palette
        self.num_classes, self.ignore_index = len(class_names), ignore_index
        self.train, self.recipe, self.task = train, recipe, task
        self.augmentations = build_augmentations(recipe, train, ignore_index)

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

        # training crops smaller than crop_size are padded as the official semantic mapper pads them
        # (to its SIZE_DIVISIBILITY = the crop): the raw image with 128 (before normalisation), labels
        # with ignore, pan_seg with void. `collate` pads further with 0 after normalisation (the
        # model-side padding of the official code).
        pad_to = self.recipe.crop_size if self.train and self.recipe and self.recipe.crop_size else None
        if pad_to is not None:
            maps = {k: pad_map(m, pad_to, self.ignore_index if k == "sem_seg" else 0) for k, m in maps.items()}
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
        item["ignore_index"] = self.ignore_index  # 255, or 65535 where 255 is a class (ADE20K-Full)
        if not self.train:  # evaluation compares at the original resolution
            item["orig_size"] = tuple(sample.sem_seg.shape)
            item["orig_image"] = torch.from_numpy(np.array(sample.image))  # (H0, W0, 3) uint8, for TTA (a copy:
            # PIL's arrays are read-only)
            item["orig_sem_seg"] = _long_tensor(sample.sem_seg)
            if sample.pan_seg is not None:
                item["orig_pan_seg"] = _long_tensor(sample.pan_seg)
        return item


def _long_tensor(label_map: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(label_map, dtype=np.int64))  # a copy: PIL's arrays are read-only


def split_folder(split: str) -> str:
    if split not in ("train", "val"):
        raise DatasetError(f"split={split!r}: expected 'train' or 'val'")
    return split


class ShapesDataset(SegmentationDataset):
    """Synthetic shapes, generated on the fly; item i of a split is the same for a given seed.

    Classes: background (stuff, class 0) and six shapes (things): circle, square, triangle,
    ring, cross, star, told apart by outline only. Both semantic (sem_seg) and panoptic
    (pan_seg: 1 = background, 2.. = shapes; segments_info) ground truth; `task` picks which
    targets `labels`/`masks` hold. No augmentation: every index is already a fresh scene.
    Options (machinery/shapes.py): colours = c > 0 gives 6 x c thing classes (outline x colour, up to 96);
    stuff = s > 0 replaces the background by s textured stuff classes (classes 0..s-1, one panoptic
    segment per class present) before the things (`shapes.shapes_class_names`).
    """

    panoptic = True

    def __init__(self, split: str = "train", image_size: int = 128, num_images: int | None = None,
                 seed: int = 0, task: str = "semantic", train: bool = False, colours: int = 0, stuff: int = 0):
        split = split_folder(split)
        if image_size < 32:
            raise DatasetError(f"image_size={image_size}: expected >= 32 pixels")
        try:
            check_options(colours, stuff)
        except ValueError as e:
            raise DatasetError(f"shapes: {e}") from None
        self.split, self.image_size, self.seed = split, image_size, seed
        self.colours, self.stuff, self.num_stuff = colours, stuff, max(stuff, 1)
        self.num_images = num_images if num_images is not None else {"train": 10000, "val": 100}[split]
        names = shapes_class_names(colours, stuff)
        super().__init__(class_names=names, is_thing=[i >= self.num_stuff for i in range(len(names))],
                         palette=shapes_palette(colours, stuff), train=train, recipe=None, task=task)

    def __len__(self) -> int:
        return self.num_images

    def scene(self, index: int) -> ShapesScene:
        split_code = {"train": 0, "val": 1}[self.split]
        return generate_shapes(np.random.default_rng([self.seed, split_code, index]), self.image_size,
                               colours=self.colours, stuff=self.stuff)

    def load(self, index: int) -> Sample:
        scene = self.scene(index)
        if self.stuff:
            return self.load_with_stuff(scene, index)
        pan_seg = scene.instances + 1  # segment ids: 1 = background, k + 1 = k-th shape
        areas = np.bincount(pan_seg.ravel(), minlength=len(scene.classes) + 1)
        segments_info = [{"id": k + 1, "category_id": int(c), "isthing": bool(c > 0), "iscrowd": 0,
                          "area": int(areas[k + 1])} for k, c in enumerate(scene.classes) if areas[k + 1] > 0]
        sem_seg = scene.classes[scene.instances].astype(np.int32)
        return Sample(scene.image, sem_seg, f"shapes/{self.split}/{index:06d}", index, pan_seg, segments_info)

    def load_with_stuff(self, scene: ShapesScene, index: int) -> Sample:
        """Segment ids: stuff class s -> s + 1 (all its regions: one segment), k-th shape -> num_stuff + k;
        class ids: stuff 0..num_stuff-1, a shape's scene class v -> num_stuff - 1 + v."""
        is_shape = scene.instances > 0
        pan_seg = np.where(is_shape, self.num_stuff + scene.instances, scene.stuff + 1).astype(np.int32)
        areas = np.bincount(pan_seg.ravel(), minlength=self.num_stuff + len(scene.classes))
        stuff_segments = [{"id": s + 1, "category_id": s, "isthing": False, "iscrowd": 0, "area": int(areas[s + 1])}
                          for s in range(self.num_stuff) if areas[s + 1] > 0]
        thing_segments = [{"id": self.num_stuff + k, "category_id": int(self.num_stuff - 1 + c), "isthing": True,
                           "iscrowd": 0, "area": int(areas[self.num_stuff + k])}
                          for k, c in enumerate(scene.classes) if k > 0 and areas[self.num_stuff + k] > 0]
        sem_seg = np.where(is_shape, self.num_stuff - 1 + scene.classes[scene.instances], scene.stuff).astype(np.int32)
        return Sample(scene.image, sem_seg, f"shapes/{self.split}/{index:06d}", index, pan_seg,
                      stuff_segments + thing_segments)


# ----------------------------------------------------------------------------------------------
# Building datasets and batches
# ----------------------------------------------------------------------------------------------


def collate(items: list[dict]) -> dict:
    """Batch items: images zero-padded (after normalisation) to a common size divisible by 32,
    sem_seg padded with the items' ignore_index (255; ADE20K-Full 65535),
    target masks padded with False, pan_seg with 0 (void).

    Returns {"images": (B, 3, Hp, Wp), "sem_seg": (B, Hp, Wp), "targets": list of per-image dicts
    ("labels", "masks" (n, Hp, Wp) and the item's other keys), "image_sizes": [(h, w), ...]}.
    """
    image_sizes = [tuple(item["image"].shape[-2:]) for item in items]
    Hp = math.ceil(max(h for h, _ in image_sizes) / SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY
    Wp = math.ceil(max(w for _, w in image_sizes) / SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY
    images = torch.stack([pad_tensor(item["image"], (Hp, Wp), 0.0) for item in items])  # (B, 3, Hp, Wp)
    sem_seg = torch.stack([pad_tensor(item["sem_seg"], (Hp, Wp), item.get("ignore_index", IGNORE_INDEX))
                           for item in items])  # (B, Hp, Wp)
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
# Training order: a resumable, sharded, infinite batch sampler and the dataset wrapper it needs
# ----------------------------------------------------------------------------------------------
class TrainBatchSampler:
    """Yields per-process batches of `(index, augmentation_seed)` pairs, forever.

    The global order is a fresh permutation every epoch, seeded by (seed, epoch); a global batch
    of `global_batch` items is cut into `world_size` contiguous chunks, one per process. Each
    item also carries its own augmentation seed, so an image's crop/flip/jitter depends only on
    its place in the global order: one process and two processes see exactly the same samples,
    and `--resume` (which restarts the sampler at `start_step`) continues exactly.
    """

    def __init__(self, dataset_size: int, global_batch: int, rank: int, world_size: int,
                 seed: int, start_step: int = 0):
        if global_batch % world_size:
            raise ValueError(f"batch size {global_batch} is not divisible by {world_size} processes")
        self.size, self.global_batch = dataset_size, global_batch
        self.rank, self.world_size, self.seed, self.start_step = rank, world_size, seed, start_step

    def __iter__(self):
        per_rank = self.global_batch // self.world_size
        position = self.start_step * self.global_batch  # items consumed before this step
        while True:
            epoch, offset = divmod(position, self.size)
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
            if offset + self.global_batch > self.size:  # a batch straddles two epochs
                nxt = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch + 1))
                order = torch.cat([order, nxt])
            batch = order[offset: offset + self.global_batch].tolist()
            mine = range(self.rank * per_rank, (self.rank + 1) * per_rank)
            yield [(batch[i], self.seed * 1_000_003 + position + i) for i in mine]
            position += self.global_batch


class SeededItems(torch.utils.data.Dataset):
    """Adapts a dataset to the `(index, seed)` pairs of `TrainBatchSampler`: the item's
    augmentation draws from `np.random.default_rng(seed)`, independent of worker and process."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index_and_seed: tuple[int, int]) -> dict:
        index, seed = index_and_seed
        return self.dataset.get(index, rng=np.random.default_rng(seed))

