"""Prepare the paper's other datasets from the files their publishers ship.

    python -m tooling.prepare coco_stuff_10k  /data/coco_stuff_10k        # or: python -m tooling.prepare NAME ROOT
    python -m tooling.prepare ade20k_full     /data/ADE20K_2021_17_01
    python -m tooling.prepare mapillary       /data/mapillary_vistas
    python -m tooling.prepare ade20k_panoptic /data/ADEChallengeData2016

Paper part: §4, "Datasets". Besides ADE20K-150, Cityscapes and COCO panoptic (read as shipped),
the paper evaluates on COCO-Stuff-10K (171 classes), ADE20K-Full (847 classes), Mapillary Vistas
(65 classes) and ADE20K-Panoptic (100 things + 50 stuff). Their publishers ship formats that a
training loop should not decode on every step (MATLAB files, RGB-packed class ids, two half
annotations), so the official repository converts them once with its `datasets/prepare_*.py`
scripts. This module re-implements those conversions. Every preparer:
  * writes next to the data, in the official scripts' output layout (so a folder prepared by the
    official scripts is also accepted), and never modifies or deletes a file it did not write;
  * writes each output file under a temporary name and renames it when complete, so a file that
    exists is whole: an interrupted run resumes where it stopped, and a finished run is a no-op
    (idempotent);
  * shows a tqdm progress bar, and stops with a one-line error naming the file for a wrong root,
    a missing input or a class id outside the format's range;
  * writes its marker file (`prepared_<name>.json`, or the panoptic JSON) last: the dataset
    classes refuse a folder without it as half-prepared.
Class lists are the official ones, kept as data in `meta/*.json` (each names its source file in
the official repository).

Reading order: `prepare` (dispatch) -> `prepare_coco_stuff_10k`, `prepare_ade20k_full`,
`check_mapillary`, `prepare_ade20k_panoptic` -> the helpers at the bottom (`find_base`, atomic
writes, markers) that the dataset classes also use to check a prepared folder.

Differences from the official scripts, and format details that public documentation does not settle:
  * COCO-Stuff-10K: the official script copies every image into `images_detectron2/`; here the
    images are read where they are (only label PNGs are written). The v1.0 annotation files are
    read with scipy (MATLAB v5/v7 files). The official script opens them with h5py, i.e. as
    MATLAB v7.3 (HDF5) files; for those, h5py is used if installed (it is not a dependency), else a
    one-line error says so. Which of the two containers the download holds could not be checked
    here; the label values are documented by the publisher (1 = unlabeled, 2-81 things, 82-172
    stuff), and v1.1 files, which use other ids, are refused.
  * ADE20K-Full: the official script lists images through `index_ade20k.pkl`; here the same
    `ADE_*.jpg` files (each with its `_seg.png`) are found by walking `images/`, so no pickle from
    the download is ever unpickled. Resizing uses PIL (bilinear with antialiasing, nearest for
    labels) instead of OpenCV; images that need no resize are copied byte for byte instead of
    being re-encoded.
  * ADE20K-Full: the class of a `_seg.png` pixel is R / 10 * 256 + G, as the release's own loader
    and the official script decode it; values outside the official 847 (3,000+ classes exist)
    become ignore, as there. The meaning of R's last digit (dropped by the division) is not
    documented; the tests write values with a non-zero last digit to pin the division down.
  * Mapillary Vistas v1.2 needs no conversion (as in the official repository): `check_mapillary`
    only verifies config.json (its "labels" list, compared by name and order with the official
    66; other fields are not read), the image/label pairs and every label value.
  * ADE20K instance PNGs: R = instance category, G = instance id (the Places Challenge 2017
    instructions); the B channel is not documented there and is not read.
  * ADE20K-Panoptic: segment ids are 1, 2, 3, ... in writing order (stuff by class, then things by
    instance id) instead of panopticapi's random colour-based ids, so no panopticapi is needed;
    segment areas and boxes are measured after things are pasted over stuff (the official script
    measures stuff before), and a stuff segment that things cover entirely is left out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.io
import scipy.ndimage
from PIL import Image
from tqdm import tqdm

from data import DatasetError, read_image, read_label
from machinery import datasets, drawing
from machinery.dataset_files import (
    ADE20K_FULL_IGNORE,
    ADE_FULL_LAYOUT,
    ADE_PAN_LAYOUT,
    ADE_PAN_SPLITS,
    ade_full_base,
    ade_panoptic_base,
    ade_panoptic_paths,
    check_mapillary_config,
    check_size,
    encode_panoptic_png,
    load_meta,
    mapillary_base,
    mapillary_paths,
    marker_path,
    stuff10k_base,
)

STUFF10K_UNLABELED = 1  # label of unlabelled pixels in the COCO-Stuff-10K v1.0 .mat files


# ----------------------------------------------------------------------------------------------
# COCO-Stuff-10K v1.0: annotations/<name>.mat (field S) + imageLists/{train,test}.txt
# ----------------------------------------------------------------------------------------------


def read_stuff10k_mat(path: Path) -> np.ndarray:
    """The label map S (H, W) of a COCO-Stuff-10K v1.0 annotation file, converted to class ids:
    .mat value v (1 = unlabeled, 2..172 = the 171 classes) -> v - 2, unlabeled -> 255."""
    S = _read_mat_field(path, "S").astype(np.int64)
    bad = (S < STUFF10K_UNLABELED) | (S > 172)
    if bad.any():
        raise DatasetError(f"{path}: label value {int(S[bad][0])} is out of range (expected COCO-Stuff-10K v1.0 "
                           "labels: 1 = unlabeled, 2..172 = classes; v1.1 files number classes otherwise)")
    return np.where(S == STUFF10K_UNLABELED, 255, S - 2).astype(np.uint8)


def _read_mat_field(path: Path, field: str) -> np.ndarray:
    """Field `field` of a MATLAB file: v5/v7 with scipy, v7.3 (HDF5) with h5py if installed."""
    try:
        with open(path, "rb") as f:
            header = f.read(128)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    if b"MATLAB 7.3" in header:
        try:
            import h5py
        except ImportError:
            raise DatasetError(f"{path}: a MATLAB v7.3 (HDF5) file; reading it needs h5py (pip install h5py)") from None
        with h5py.File(path, "r") as f:
            if field not in f:
                raise DatasetError(f"{path}: no field {field!r} in this .mat file")
            return np.asarray(f[field]).T  # HDF5 stores MATLAB's column-major arrays transposed
    try:
        content = scipy.io.loadmat(path, variable_names=[field])
    except (ValueError, OSError, TypeError, NotImplementedError) as error:
        raise DatasetError(f"{path}: not a readable .mat file ({type(error).__name__}: {error})") from None
    if field not in content:
        raise DatasetError(f"{path}: no field {field!r} in this .mat file")
    return np.asarray(content[field])


def prepare_coco_stuff_10k(root: Path) -> Path:
    """annotations/<name>.mat -> annotations_detectron2/{train,test}/<name>.png (class ids 0..170, 255 =
    unlabeled), for the names in imageLists/{train,test}.txt. Returns the dataset folder."""
    base = stuff10k_base(root)
    counts = {}
    for split in ("train", "test"):
        names = read_name_list(base / "imageLists" / f"{split}.txt")
        out_dir = base / "annotations_detectron2" / split
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in tqdm(names, desc=f"coco_stuff_10k {split}"):
            out = out_dir / f"{name}.png"
            if out.exists():
                continue
            label = read_stuff10k_mat(base / "annotations" / f"{name}.mat")
            check_size(base / "images" / f"{name}.jpg", label.shape, base / "annotations" / f"{name}.mat")
            save_atomic(out, lambda tmp, label=label: Image.fromarray(label).save(tmp, format="PNG"))
        counts[split] = len(names)
    write_marker(base, "coco_stuff_10k", counts)
    return base


def read_name_list(path: Path) -> list[str]:
    try:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found (expected one image name per line)") from None
    if not names:
        raise DatasetError(f"{path}: no image names (expected one per line)")
    return names


# ----------------------------------------------------------------------------------------------
# ADE20K-Full (ADE20K_2021_17_01): images/ADE/{training,validation}/**/ADE_*.jpg + *_seg.png
# ----------------------------------------------------------------------------------------------

ADE_FULL_SHORT_EDGE = 512  # the official script shrinks images whose short edge is longer than this


def ade_full_lookup() -> np.ndarray:
    """class value of a `_seg.png` (R // 10 * 256 + G) -> class id 0..846, others -> 65535 (ignore)."""
    ade_ids = [c["ade_id"] for c in load_meta("ade20k_full_847.json")["classes"]]
    lookup = np.full(26 * 256, ADE20K_FULL_IGNORE, np.uint16)  # R // 10 <= 25
    lookup[ade_ids] = np.arange(len(ade_ids))
    return lookup


def decode_ade_seg(rgb: np.ndarray) -> np.ndarray:
    """The ADE20K object class map of a `_seg.png`: R / 10 * 256 + G (integer division), int32 (H, W)."""
    r, g = rgb[..., 0].astype(np.int32), rgb[..., 1].astype(np.int32)
    return r // 10 * 256 + g


def shrunk_size(h: int, w: int, short_edge: int = ADE_FULL_SHORT_EDGE) -> tuple[int, int] | None:
    """(h, w) with the short edge at `short_edge` when it is longer (official rounding), else None."""
    if min(h, w) <= short_edge:
        return None
    if w >= h:
        return short_edge, round(w / h * short_edge)
    return round(h / w * short_edge), short_edge


def list_ade_full_images(base: Path) -> list[Path]:
    images = []
    for folder, _, files in os.walk(base / "images" / "ADE"):
        images += [Path(folder) / f for f in files if f.startswith("ADE_") and f.endswith(".jpg")]
    if not images:
        raise DatasetError(f"{base / 'images' / 'ADE'}: no ADE_*.jpg images found (expected {ADE_FULL_LAYOUT})")
    return sorted(images, key=lambda p: p.name)


def ade_full_split(image: Path) -> str:
    """The official rule: names ADE_val_* are validation, every other image is training."""
    return "validation" if image.name.split("_")[1] == "val" else "training"


def prepare_ade20k_full(root: Path) -> Path:
    """Each ADE_*.jpg and its _seg.png -> images_detectron2/<split>/<name>.jpg (short edge <= 512) and
    annotations_detectron2/<split>/<name>.tif (uint16 class ids 0..846, 65535 = ignore)."""
    base = ade_full_base(root)
    lookup = ade_full_lookup()
    images = list_ade_full_images(base)
    for split in ("training", "validation"):
        (base / "images_detectron2" / split).mkdir(parents=True, exist_ok=True)
        (base / "annotations_detectron2" / split).mkdir(parents=True, exist_ok=True)
    counts = {"training": 0, "validation": 0}
    for image_path in tqdm(images, desc="ade20k_full"):
        split = ade_full_split(image_path)
        counts[split] += 1
        out_image = base / "images_detectron2" / split / image_path.name
        out_label = base / "annotations_detectron2" / split / (image_path.stem + ".tif")
        if out_image.exists() and out_label.exists():
            continue
        seg_path = image_path.with_name(image_path.stem + "_seg.png")
        seg = read_image(seg_path)  # (H, W, 3) RGB
        classes = decode_ade_seg(seg)  # (H, W) ADE object class values
        check_size(image_path, classes.shape, seg_path)
        size = shrunk_size(*classes.shape)
        if size is None:
            save_atomic(out_image, lambda tmp, source=image_path: shutil.copyfile(source, tmp))
        else:
            resized = Image.fromarray(read_image(image_path)).resize(size[::-1], Image.BILINEAR)
            save_atomic(out_image, lambda tmp, resized=resized: resized.save(tmp, format="JPEG"))
            classes = np.asarray(Image.fromarray(classes).resize(size[::-1], Image.NEAREST))
        label = lookup[classes]  # (H', W') uint16
        save_atomic(out_label, lambda tmp, label=label: Image.fromarray(label).save(tmp, format="TIFF"))
    write_marker(base, "ade20k_full", counts)
    return base


# ----------------------------------------------------------------------------------------------
# Mapillary Vistas v1.2: {training,validation}/images/*.jpg + labels/*.png, config.json
# ----------------------------------------------------------------------------------------------


def check_mapillary(root: Path) -> Path:
    """Mapillary Vistas needs no conversion: verify config.json, that every image has a label PNG
    and that every label value is 0..65 (65 = unlabeled)."""
    base = mapillary_base(root)
    num_labels = len(check_mapillary_config(base))
    for split in ("training", "validation"):
        image_dir, label_dir = mapillary_paths(base, split)
        for image in tqdm(sorted(image_dir.glob("*.jpg")), desc=f"mapillary {split}"):
            label = read_label(label_dir / (image.stem + ".png"))
            if label.max(initial=0) >= num_labels:
                raise DatasetError(f"{label_dir / (image.stem + '.png')}: label value {int(label.max())} is out of "
                                   f"range (expected 0..{num_labels - 1}, {num_labels - 1} = unlabeled)")
    print(f"mapillary: {base} is usable as shipped (no files written)")
    return base


# ----------------------------------------------------------------------------------------------
# ADE20K-Panoptic: ADEChallengeData2016 + annotations_instance -> COCO panoptic PNGs and JSON
# ----------------------------------------------------------------------------------------------


def ade_panoptic_categories() -> list[dict]:
    """COCO-style categories: id 0..149 = semantic PNG value - 1, name, isthing, color."""
    return [{"id": k, "name": c["name"], "isthing": int(c["isthing"]), "color": c["color"]}
            for k, c in enumerate(load_meta("ade20k_panoptic_150.json")["categories"])]


def ade_panoptic_segments(semantic: np.ndarray, instance: np.ndarray, is_thing: list[bool],
                          instance_to_semantic: list[int], where: Path) -> tuple[np.ndarray, list[dict]]:
    """Combine one image's two ADE20K annotations into a panoptic segment-id map and segments_info.

    semantic: (H, W) 0 = other, 1..150 = class + 1. instance: (H, W, 3) R = instance category 1..100
    (0 = none), G = instance id (0 = none). Stuff segments come from the semantic map (one per
    stuff class present), thing segments from the instance map (one per instance id, its class
    from R through `instance_to_semantic`), pasted over the stuff. Pixels of thing classes in the
    semantic map that no instance covers stay void (0). Returns pan_seg int32 (H, W) and
    segments_info with ids 1, 2, ..., contiguous category_id, area, bbox [x, y, w, h], iscrowd 0.
    """
    # stuff: one segment per stuff class present in the semantic map (ids 1, 2, ... in class order)
    values = np.unique(semantic)
    if values.max() > len(is_thing):
        raise DatasetError(f"{where}: semantic label {int(values.max())} is out of range (expected 0..{len(is_thing)})")
    stuff = [int(v) for v in values if v != 0 and not is_thing[v - 1]]
    segment_of_value = np.zeros(len(is_thing) + 1, np.int32)  # semantic value -> segment id, 0 = void
    segment_of_value[stuff] = np.arange(1, len(stuff) + 1)
    pan_seg = segment_of_value[semantic]  # (H, W)
    categories = [v - 1 for v in stuff]
    # things: one segment per instance id, pasted over the stuff; its category must be unique
    category_ids, instance_ids = instance[..., 0].astype(np.int64), instance[..., 1].astype(np.int64)
    labelled = instance_ids > 0
    pairs = np.unique(instance_ids[labelled] * 256 + category_ids[labelled])  # sorted by instance id
    ids, found = pairs // 256, pairs % 256
    for instance_id in np.unique(ids):
        cats = found[ids == instance_id]
        if len(cats) != 1 or not 1 <= cats[0] <= len(instance_to_semantic):
            raise DatasetError(f"{where}: instance {int(instance_id)} has category {cats.tolist()} (expected one "
                               f"category 1..{len(instance_to_semantic)} in the R channel)")
    segment_of_instance = np.zeros(256, np.int32)
    segment_of_instance[ids] = np.arange(len(categories) + 1, len(categories) + len(ids) + 1)
    categories += [instance_to_semantic[c - 1] - 1 for c in found]
    pan_seg = np.where(labelled, segment_of_instance[instance_ids], pan_seg).astype(np.int32)
    # areas and boxes [x, y, w, h] in one pass each
    areas = np.bincount(pan_seg.ravel(), minlength=len(categories) + 1)
    boxes = scipy.ndimage.find_objects(pan_seg, max_label=len(categories))
    segments_info = []
    for segment_id, (category, box) in enumerate(zip(categories, boxes), start=1):
        if box is None:
            continue  # a stuff region that things cover entirely
        rows, cols = box
        bbox = [cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start]
        segments_info.append({"id": segment_id, "category_id": int(category), "area": int(areas[segment_id]),
                              "bbox": bbox, "iscrowd": 0})
    return pan_seg, segments_info


def prepare_ade20k_panoptic(root: Path) -> Path:
    """For each split: ade20k_panoptic_<split>/<name>.png (COCO panoptic PNG) and
    ade20k_panoptic_<split>.json (images, annotations with segments_info, the 150 categories).

    Resumable: each image's annotation is appended to a hidden .partial.jsonl file once its PNG
    is written; the JSON is written last, from those lines, and the .partial.jsonl is removed."""
    base = ade_panoptic_base(root)
    meta = load_meta("ade20k_panoptic_150.json")
    is_thing = [c["isthing"] for c in meta["categories"]]
    for split, folder in ADE_PAN_SPLITS.items():
        png_dir, json_path = ade_panoptic_paths(base, split)
        if json_path.exists():
            continue
        png_dir.mkdir(exist_ok=True)
        partial = base / f".ade20k_panoptic_{split}.partial.jsonl"
        done = {}
        if partial.exists():
            for line in partial.read_text().splitlines():
                if line.strip():
                    record = json.loads(line)
                    done[record["image"]["id"]] = record
        images = sorted((base / "images" / folder).glob("*.jpg"))
        if not images:
            raise DatasetError(f"{base / 'images' / folder}: no images found (expected {ADE_PAN_LAYOUT})")
        records = []
        with open(partial, "a") as log:
            for image_path in tqdm(images, desc=f"ade20k_panoptic {split}"):
                stem = image_path.stem
                if stem in done and (png_dir / f"{stem}.png").exists():
                    records.append(done[stem])
                    continue
                semantic_path = base / "annotations" / folder / f"{stem}.png"
                instance_path = base / "annotations_instance" / folder / f"{stem}.png"
                semantic = read_label(semantic_path)
                instance = read_image(instance_path)
                check_size(image_path, semantic.shape, semantic_path)
                check_size(image_path, instance.shape[:2], instance_path)
                h, w = semantic.shape
                pan_seg, segments_info = ade_panoptic_segments(semantic, instance, is_thing,
                                                               meta["instance_to_semantic"], instance_path)
                rgb = encode_panoptic_png(pan_seg)
                save_atomic(png_dir / f"{stem}.png", lambda tmp, rgb=rgb: Image.fromarray(rgb).save(tmp, format="PNG"))
                record = {"image": {"id": stem, "file_name": image_path.name, "width": w, "height": h},
                          "annotation": {"image_id": stem, "file_name": f"{stem}.png", "segments_info": segments_info}}
                log.write(json.dumps(record) + "\n")
                log.flush()
                records.append(record)
        content = {"images": [r["image"] for r in records], "annotations": [r["annotation"] for r in records],
                   "categories": ade_panoptic_categories()}
        save_atomic(json_path, lambda tmp, content=content: Path(tmp).write_text(json.dumps(content)))
        partial.unlink()
    return base


# ----------------------------------------------------------------------------------------------
# Helpers shared with the dataset classes
# ----------------------------------------------------------------------------------------------


def save_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """write(tmp) to a temporary file next to `path`, then rename it to `path` (all or nothing)."""
    tmp = path.with_name(f".{path.name}.partial")
    write(tmp)
    os.replace(tmp, path)


def write_marker(base: Path, name: str, counts: dict[str, int]) -> None:
    """Written last by a preparer: the number of prepared items per split."""
    text = json.dumps({"dataset": name, "items": counts}, indent=1)
    path = marker_path(base, name)
    if not (path.is_file() and path.read_text() == text):  # a finished folder is left untouched
        save_atomic(path, lambda tmp: Path(tmp).write_text(text))


PREPARERS: dict[str, Callable[[Path], Path]] = {
    "coco_stuff_10k": prepare_coco_stuff_10k,
    "ade20k_full": prepare_ade20k_full,
    "mapillary": check_mapillary,
    "ade20k_panoptic": prepare_ade20k_panoptic,
}


def prepare(name: str, root: str | Path) -> Path:
    """Prepare dataset `name` under `root` (see the module docstring); returns the dataset folder."""
    if name not in PREPARERS:
        raise DatasetError(f"dataset {name!r}: nothing to prepare; expected one of {', '.join(PREPARERS)} "
                           "(ade20k, cityscapes and coco_panoptic are read as shipped)")
    return PREPARERS[name](Path(root))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Prepare a dataset from the files its publishers ship "
                                     "(idempotent and resumable; writes next to the data), or draw a few of "
                                     "a dataset's validation items (image | sem_seg | pan_seg) with --preview.")
    parser.add_argument("name", nargs="?", choices=sorted(PREPARERS), help="dataset to prepare")
    parser.add_argument("root", nargs="?", help="the dataset's folder as downloaded (or its parent)")
    parser.add_argument("--preview", nargs=2, metavar=("DATASET", "OUT_PNG"),
                        help="save a grid of validation items instead, e.g. --preview shapes shapes.png")
    parser.add_argument("--preview-root", default=None, help="dataset root for --preview (not for shapes)")
    parser.add_argument("--zoom", type=int, default=1, help="enlarge --preview images by this factor")
    args = parser.parse_args(argv)
    if (args.preview is None) == (args.name is None) or (args.name is None) != (args.root is None):
        parser.error("give NAME ROOT to prepare a dataset, or --preview DATASET OUT_PNG (not both)")
    try:
        if args.preview:
            dataset, out = args.preview
            drawing.preview(datasets.build_dataset(dataset, args.preview_root, split="val"), out, zoom=args.zoom)
            print(f"saved {out}")
            return
        base = prepare(args.name, args.root)
    except DatasetError as error:
        sys.exit(f"error: {error}")
    print(f"{args.name}: prepared {base}")


if __name__ == "__main__":
    main()
