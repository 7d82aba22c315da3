"""The measured effect, on the sample data, of the deviations from the official pipeline that this project keeps.

    python -m tooling.deviations [--data-root DIR] [--crops 200] [--seed 0]

DIR defaults to the sample data's folder beside the clone, or $MASKFORMER_SHARED_DATA (as tests/conftest.py).

Not a part of the method: a measurement of where it deliberately differs from the official code
(docs/recipe.md, "Where this project deliberately differs"; issue #29). Each measurement needs no
trained model and prints one line; docs/recipe.md quotes the lines. The sample data (the folder the
project's tests read, see its README.md) holds ADE20K (4 semantic labels), Cityscapes (1) and COCO
panoptic (2); the figures describe those few images, not the full datasets.

- label resize: ours resizes training labels with PIL NEAREST (pixel centres); the official semantic
  mapper reads labels as float64, so detectron2 resizes them with torch's `F.interpolate(mode="nearest")`
  (floor of the output index times the scale). Measured: the pixels whose label differs at every
  training scale of the recipe. (The official panoptic mapper reads the RGB PNG as uint8, so PIL
  NEAREST there too: COCO panoptic has no such deviation.)
- segments cropped out: ours drops from z_gt (Eq. (3.2b)) the segments that the training augmentation
  removes entirely; the official panoptic mappers keep them as empty masks. Measured: over seeded draws of
  the recipe's own augmentation, the segments a draw removes, as a fraction of the image's segments.
  (ADE20K semantic, for comparison: the official semantic mapper also takes the classes after the crop,
  so there both pipelines drop them.)
- COCO test padding: ours pads every test image to a multiple of 32; the official COCO R50 config pads
  nothing. Measured: the padded area at the recipe's test resize, as a fraction of the image area.
- multi-scale test on Mapillary Vistas / ADE20K-Full: the short edges and long-edge caps of ours and of
  detectron2's default TEST.AUG (no data needed).
- ADE20K-Panoptic conversion, SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE: not measurable here (no ADE20K
  instance annotations in the sample data; the switch changes only a trained model's predictions).

Reading order: `label_resize_disagreement` -> `label_resize_effect` -> `removed_segments` ->
`removal_by_augmentation` -> `cropped_segments_effect` -> `padding_fraction` -> `coco_test_padding` ->
`tta_sizes` -> `measure` -> `report_lines` -> `main`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data import IGNORE_INDEX, SIZE_DIVISIBILITY
from inference import TTA_SCALES
from machinery import augment
from machinery.datasets import build_dataset

# the sample data, as tests/conftest.py finds it
DEFAULT_DATA_ROOT = Path(os.environ.get("MASKFORMER_SHARED_DATA",
                                        Path(__file__).resolve().parents[2] / "shared" / "data"))
D2_TTA_MIN_SIZES = tuple(range(400, 1201, 100))  # detectron2's default TEST.AUG.MIN_SIZES
D2_TTA_MAX_SIZE = 4000  # detectron2's default TEST.AUG.MAX_SIZE
NOT_MEASURABLE = {
    "ADE20K-Panoptic ground truth": "cannot be measured on the sample data (it has no ADE20K instance "
                                    "annotations to convert)",
    "SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE": "cannot be measured on the sample data (the switch changes only "
                                               "a trained model's predictions)",
}


# ----------------------------------------------------------------------------------------------
# Label resize in training augmentation: PIL NEAREST (ours) vs torch nearest on float (official)
# ----------------------------------------------------------------------------------------------


def torch_nearest(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The official resize of a float label (detectron2's ResizeTransform on a non-uint8 array)."""
    x = torch.from_numpy(label.astype(np.float64))[None, None]  # (1, 1, H, W)
    return F.interpolate(x, size, mode="nearest")[0, 0].numpy().astype(label.dtype)  # (h, w)


def label_resize_disagreement(label: np.ndarray, size: tuple[int, int],
                              ignore_index: int = IGNORE_INDEX) -> tuple[int, int, int]:
    """(pixels, differing pixels, differing pixels where either side is ignore) of `label` (H, W) resized
    to `size` (h, w) by ours (machinery/augment.py's resize) and by the official torch nearest."""
    ours = augment.resize(np.zeros((*label.shape, 3), np.uint8), {"l": label}, size)[1]["l"]  # (h, w)
    official = torch_nearest(label, size)  # (h, w)
    differ = ours != official  # (h, w)
    involves_ignore = differ & ((ours == ignore_index) | (official == ignore_index))  # (h, w)
    return differ.size, int(differ.sum()), int(involves_ignore.sum())


def label_resize_effect(labels: list[np.ndarray], recipe: augment.AugmentationRecipe,
                        ignore_index: int = IGNORE_INDEX) -> dict[str, float]:
    """Over every label (H, W) x every training short edge of `recipe` (its long-edge cap applied):
    fraction of pixels that differ, and of those the fraction with ignore on either side."""
    pixels = differ = ignore = 0
    for label in labels:
        for short in recipe.train_sizes:
            size = augment.shortest_edge_size(*label.shape, short, recipe.train_max_size)
            p, d, i = label_resize_disagreement(label, size, ignore_index)
            pixels, differ, ignore = pixels + p, differ + d, ignore + i
    return {"resizes": len(labels) * len(recipe.train_sizes), "differ": differ / pixels,
            "ignore": ignore / max(differ, 1), "between_classes": (differ - ignore) / max(differ, 1)}


# ----------------------------------------------------------------------------------------------
# Segments that the training augmentation removes entirely (ours: dropped; official panoptic: empty masks)
# ----------------------------------------------------------------------------------------------


def removed_segments(before: np.ndarray, after: np.ndarray, ids: np.ndarray) -> int:
    """How many of `ids` occur in `before` (H, W) but nowhere in `after` (h, w)."""
    present_before = np.isin(ids, before)  # (n,)
    present_after = np.isin(ids, after)  # (n,)
    return int((present_before & ~present_after).sum())


def removal_by_augmentation(image: np.ndarray, label: np.ndarray, ids: np.ndarray, augs: list, draws: int,
                            rng: np.random.Generator) -> tuple[int, int]:
    """(segments removed summed over `draws` draws of `augs`, segments of the image) for one image
    (H, W, 3) and its label map (H, W): a segment-id map with `ids` its targets (panoptic) or a class
    map with `ids` its classes (semantic)."""
    total = int(np.isin(ids, label).sum())
    removed = 0
    for _ in range(draws):
        _, maps = augment.apply_augmentations(augs, image, {"sem_seg": label}, rng)
        removed += removed_segments(label, maps["sem_seg"], ids)
    return removed, total


def cropped_segments_effect(items: list[tuple[np.ndarray, np.ndarray, np.ndarray]], augs: list, draws: int,
                            seed: int) -> dict[str, float]:
    """Over `draws` draws per (image, label, ids) item, one numpy Generator seeded `seed`: mean segments
    removed per draw, mean segments per image, and removed / all segments."""
    rng = np.random.default_rng(seed)
    removed = segments = 0
    for image, label, ids in items:
        r, s = removal_by_augmentation(image, label, ids, augs, draws, rng)
        removed, segments = removed + r, segments + s * draws
    return {"draws": draws * len(items), "removed_per_draw": removed / (draws * len(items)),
            "segments_per_image": segments / (draws * len(items)), "fraction": removed / max(segments, 1)}


# ----------------------------------------------------------------------------------------------
# COCO test padding (ours: to a multiple of 32; the official COCO R50 config: none)
# ----------------------------------------------------------------------------------------------


def padding_fraction(h: int, w: int, multiple: int = SIZE_DIVISIBILITY) -> float:
    """Pixels that padding (h, w) up to multiples of `multiple` adds, as a fraction of h * w."""
    hp, wp = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    return (hp * wp - h * w) / (h * w)


def coco_test_padding(sizes: list[tuple[int, int]], recipe: augment.AugmentationRecipe) -> dict[str, float]:
    """Mean and max padding fraction of original image sizes (H0, W0) after the recipe's test resize."""
    fractions = [padding_fraction(*augment.shortest_edge_size(h, w, recipe.test_size, recipe.test_max_size))
                 for h, w in sizes]
    return {"images": len(sizes), "mean": float(np.mean(fractions)), "max": float(np.max(fractions))}


# ----------------------------------------------------------------------------------------------
# Multi-scale test sizes on Mapillary Vistas and ADE20K-Full (no data needed)
# ----------------------------------------------------------------------------------------------


def tta_sizes(name: str) -> tuple[tuple[int, ...], int]:
    """(short edges, long-edge cap) of our multi-scale test on dataset `name` (inference.tta_resize's rule)."""
    recipe = augment.recipe_for(name)
    return tuple(int(s * recipe.test_size) for s in TTA_SCALES), recipe.tta_max_scale * recipe.test_size


# ----------------------------------------------------------------------------------------------
# Every measurement on the sample data, and its lines
# ----------------------------------------------------------------------------------------------


def _samples(name: str, root: Path, splits: tuple[str, ...], **kwargs) -> list:
    return [ds.load(i) for split in splits for ds in [build_dataset(name, root, split=split, **kwargs)]
            for i in range(len(ds))]


def measure(data_root: Path, draws: int = 200, seed: int = 0) -> dict[str, dict]:
    """Every measurement on the sample data at `data_root` (the folder of ADEChallengeData2016/,
    cityscapes/, coco_panoptic/)."""
    ade = _samples("ade20k", data_root, ("train", "val"))
    city = _samples("cityscapes", data_root / "cityscapes", ("val",))
    coco = _samples("coco_panoptic", data_root / "coco_panoptic", ("val",))
    ade_recipe, city_recipe = augment.recipe_for("ade20k"), augment.recipe_for("cityscapes")
    coco_recipe = augment.recipe_for("coco_panoptic")

    def semantic_ids(label: np.ndarray) -> np.ndarray:
        ids = np.unique(label)
        return ids[ids != IGNORE_INDEX]

    coco_items = [(s.image, s.pan_seg, np.array([g["id"] for g in s.segments_info if not g["iscrowd"]]))
                  for s in coco]
    ade_items = [(s.image, s.sem_seg, semantic_ids(s.sem_seg)) for s in ade]
    return {
        "resize_ade20k": label_resize_effect([s.sem_seg for s in ade], ade_recipe),
        "resize_cityscapes": label_resize_effect([s.sem_seg for s in city], city_recipe),
        "cropped_coco": cropped_segments_effect(coco_items, augment.build_augmentations(coco_recipe, True), draws,
                                                seed),
        "cropped_ade20k": cropped_segments_effect(ade_items, augment.build_augmentations(ade_recipe, True), draws,
                                                  seed),
        "coco_padding": coco_test_padding([s.sem_seg.shape for s in coco], coco_recipe),
    }


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def report_lines(results: dict[str, dict], draws: int, seed: int) -> list[str]:
    """One line per deviation: the measured ones from `results` (see `measure`), then the table of
    multi-scale sizes, then the ones the sample data cannot measure."""
    lines = []
    for key, name, n in (("resize_ade20k", "ADE20K", "512"), ("resize_cityscapes", "Cityscapes", "1024")):
        r = results[key]
        lines.append(f"label resize in training augmentation, {name} ({r['resizes']} resizes: each label at short "
                     f"edge 0.5-2.0 x {n}): {_pct(r['differ'])} of pixels differ between PIL NEAREST (ours) and "
                     f"torch nearest (official); of those {_pct(r['ignore'])} have ignore on one side, "
                     f"{_pct(r['between_classes'])} are between two classes")
    for key, name, what in (("cropped_coco", "COCO panoptic", "segments"), ("cropped_ade20k", "ADE20K", "classes")):
        r = results[key]
        note = ("official panoptic mapper keeps them as empty masks" if key == "cropped_coco" else
                "the official semantic mapper drops them too: no deviation")
        lines.append(f"segments cropped out of a training image, {name} ({r['draws']} draws of the training "
                     f"augmentation, seed {seed}): {r['removed_per_draw']:.2f} of {r['segments_per_image']:.2f} "
                     f"{what} removed per draw = {_pct(r['fraction'])} ({note})")
    r = results["coco_padding"]
    lines.append(f"COCO test padding ({r['images']} images at the test resize 800 / 1333): padding to "
                 f"{SIZE_DIVISIBILITY} adds {_pct(r['mean'])} of the image area on average (max {_pct(r['max'])}), "
                 "zeros the official R50 model never sees")
    d2 = f"detectron2 default short edges {'/'.join(map(str, D2_TTA_MIN_SIZES))}, long edge <= {D2_TTA_MAX_SIZE}"
    for name, label in (("mapillary", "Mapillary Vistas"), ("ade20k_full", "ADE20K-Full")):
        shorts, cap = tta_sizes(name)
        lines.append(f"multi-scale test on {label}: ours short edges {'/'.join(map(str, shorts))}, long edge <= "
                     f"{cap}; {d2}")
    lines += [f"{name}: {text}" for name, text in NOT_MEASURABLE.items()]
    return lines


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> dict[str, dict]:
    parser = argparse.ArgumentParser(prog="python -m tooling.deviations", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT,
                        help="the sample data: ADEChallengeData2016/, cityscapes/, coco_panoptic/ "
                             "(default: %(default)s)")
    parser.add_argument("--crops", type=int, default=200, help="draws of the training augmentation per image")
    parser.add_argument("--seed", type=int, default=0, help="seed of the augmentation's numpy Generator")
    args = parser.parse_args(argv)
    if not args.data_root.is_dir():
        parser.error(f"--data-root {args.data_root}: no such folder (the project's sample data; see tests/conftest.py)")
    results = measure(args.data_root, args.crops, args.seed)
    for line in report_lines(results, args.crops, args.seed):
        out(line)
    return results


if __name__ == "__main__":
    main()
