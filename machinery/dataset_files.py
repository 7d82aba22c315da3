"""Where each dataset's files live, the official class lists in meta/, and the checks of a prepared folder.

Not a part of the paper's method: the read side of the datasets of §4 ("Datasets"). The dataset
classes (machinery/datasets.py) find their folders and class lists here; the one-time conversions
that write the prepared folders are `python -m tooling.prepare NAME ROOT` (tooling/prepare.py),
which uses the same layout, markers and checks.

Reading order: `load_meta` / `official_classes` (class lists kept as data in meta/*.json, each
naming its source file in the official repository) -> each dataset's folder (`*_base`,
`*_paths`) -> `find_base`, `check_prepared`, `check_size` (the one-line errors of a wrong root, a
half-prepared folder, or an image and label of different sizes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from data import DatasetError

PREPARE_COMMAND = "python -m tooling.prepare"  # the command that writes a prepared folder


META_DIR = Path(__file__).resolve().parents[1] / "meta"


ADE20K_FULL_IGNORE = 65535  # ignore value of the prepared ADE20K-Full label files (16-bit TIFF)


def load_meta(file_name: str) -> dict:
    """One of the official class lists in meta/ (see each file's "source")."""
    return json.loads((META_DIR / file_name).read_text())


CLASS_LISTS = {"ade20k": "ade20k_150.json", "cityscapes": "cityscapes_19.json",
               "coco_stuff_10k": "coco_stuff_10k_171.json",
               "ade20k_full": "ade20k_full_847.json", "mapillary": "mapillary_vistas_v1.2.json",
               "ade20k_panoptic": "ade20k_panoptic_150.json"}  # dataset -> its official class list in meta/


def official_classes(name: str) -> tuple[list[str], list[bool], np.ndarray | None]:
    """(class names, is_thing, colours (K, 3) uint8 or None) of a dataset's official list in meta/:
    one of CLASS_LISTS (Mapillary: the 65 evaluated labels). COCO panoptic's list comes with its JSON."""
    if name not in CLASS_LISTS:
        raise DatasetError(f"dataset {name!r}: no official class list in meta/ "
                           f"(expected one of {', '.join(CLASS_LISTS)})")
    meta = load_meta(CLASS_LISTS[name])
    if name == "mapillary":
        classes = [{"name": label["readable"], "isthing": label["instances"], "color": label["color"]}
                   for label in meta["labels"] if label["evaluate"]]
    else:
        classes = meta["classes"] if "classes" in meta else meta["categories"]
    colours = np.array([c["color"] for c in classes], np.uint8) if "color" in classes[0] else None
    return [c["name"] for c in classes], [bool(c.get("isthing", False)) for c in classes], colours


STUFF10K_URL = "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/cocostuff-10k-v1.0.zip"


STUFF10K_LAYOUT = "imageLists/{train,test}.txt, images/<name>.jpg and annotations/<name>.mat"


def stuff10k_base(root: Path) -> Path:
    return find_base("coco_stuff_10k", root, ("", "coco_stuff_10k", "coco/coco_stuff_10k"),
                     "imageLists/train.txt", STUFF10K_LAYOUT, STUFF10K_URL)


ADE_FULL_URL = "https://ade20k.csail.mit.edu/ (ADE20K_2021_17_01.zip, registration required)"


ADE_FULL_LAYOUT = "images/ADE/{training,validation}/<scene>/.../ADE_*.jpg, each with its ADE_*_seg.png"


def ade_full_base(root: Path) -> Path:
    return find_base("ade20k_full", root, ("", "ADE20K_2021_17_01"), "images/ADE", ADE_FULL_LAYOUT, ADE_FULL_URL)


MAPILLARY_URL = "https://www.mapillary.com/dataset/vistas (research edition; v1.2 labels)"


MAPILLARY_LAYOUT = ("config.json (v1.2), {training,validation}/images/<name>.jpg and "
                    "{training,validation}/labels/<name>.png (v1.2 labels; or v1.2/labels/ of the v2.0 download)")


def mapillary_base(root: Path) -> Path:
    return find_base("mapillary", root, ("", "mapillary_vistas"), "training/images", MAPILLARY_LAYOUT, MAPILLARY_URL)


def mapillary_paths(base: Path, split: str) -> tuple[Path, Path]:
    """(images folder, v1.2 labels folder) of a split ("training" or "validation")."""
    labels = next((d for d in (base / split / "labels", base / split / "v1.2" / "labels") if d.is_dir()), None)
    if labels is None or not (base / split / "images").is_dir():
        raise DatasetError(f"mapillary: {base / split}: expected images/ and labels/ (or v1.2/labels/) "
                           f"folders ({MAPILLARY_LAYOUT}; download: {MAPILLARY_URL})")
    return base / split / "images", labels


def check_mapillary_config(base: Path) -> list[dict]:
    """The 66 labels of config.json (or config_v1.2.json), checked against the official v1.2 list."""
    official = load_meta("mapillary_vistas_v1.2.json")["labels"]
    path = next((p for p in (base / "config.json", base / "config_v1.2.json") if p.is_file()), None)
    if path is None:
        raise DatasetError(f"mapillary: no config.json under {base} (expected the v1.2 config.json of the download)")
    try:
        names = [label["name"] for label in json.loads(path.read_text())["labels"]]
    except (ValueError, KeyError, TypeError) as error:
        raise DatasetError(f"{path}: not a Mapillary Vistas config ({type(error).__name__}: {error})") from None
    if names != [label["name"] for label in official]:
        raise DatasetError(f"{path}: {len(names)} labels that are not the 66 of Mapillary Vistas v1.2 "
                           f"(v2.0 has 124; the paper uses v1.2)")
    return official


ADE_PAN_URL = ("http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip and "
               "http://sceneparsing.csail.mit.edu/data/ChallengeData2017/annotations_instance.tar")


ADE_PAN_LAYOUT = ("images/{training,validation}/*.jpg, annotations/{training,validation}/*.png and "
                  "annotations_instance/{training,validation}/*.png")


ADE_PAN_SPLITS = {"train": "training", "val": "validation"}


def ade_panoptic_base(root: Path) -> Path:
    base = find_base("ade20k_panoptic", root, ("", "ADEChallengeData2016"), "images/training", ADE_PAN_LAYOUT,
                     ADE_PAN_URL)
    if not (base / "annotations_instance").is_dir():
        raise DatasetError(f"ade20k_panoptic: {base / 'annotations_instance'} not found (download "
                           "annotations_instance.tar from http://sceneparsing.csail.mit.edu/ and unpack it there)")
    return base


def ade_panoptic_paths(base: Path, split: str) -> tuple[Path, Path]:
    """(PNG folder, JSON file) of the prepared panoptic annotations of split "train" or "val"."""
    return base / f"ade20k_panoptic_{split}", base / f"ade20k_panoptic_{split}.json"


def encode_panoptic_png(pan_seg: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG colours of a segment-id map: id = R + 256 G + 256² B -> uint8 (H, W, 3)."""
    return np.stack([pan_seg % 256, pan_seg // 256 % 256, pan_seg // 65536 % 256], axis=-1).astype(np.uint8)


def find_base(name: str, root: Path | str, candidates: tuple[str, ...], landmark: str, layout: str,
              url: str) -> Path:
    """The dataset folder: the first root/candidate holding `landmark`; else a one-line error."""
    root = Path(root)
    for candidate in candidates:
        if (root / candidate / landmark).exists():
            return root / candidate
    raise DatasetError(f"{name}: dataset not found under root={str(root)!r}; expected the layout {layout} "
                       f"(download: {url})")


def marker_path(base: Path, name: str) -> Path:
    return base / f"prepared_{name}.json"


def check_prepared(base: Path, name: str, split: str, label_dir: Path, pattern: str) -> list[Path]:
    """The sorted label files of a prepared split; a one-line error if the folder is not (fully) prepared."""
    command = f"{PREPARE_COMMAND} {name} {base}"
    marker = marker_path(base, name)
    if not marker.is_file():
        state = "half-prepared (preparation did not finish)" if label_dir.is_dir() else "not prepared"
        raise DatasetError(f"{name}: {base} is {state}: no {marker.name}; run `{command}`")
    expected = json.loads(marker.read_text())["items"][split]
    labels = sorted(label_dir.glob(pattern)) if label_dir.is_dir() else []
    if len(labels) != expected:
        raise DatasetError(f"{name}: {label_dir} holds {len(labels)} label files, {marker.name} says {expected}; "
                           f"run `{command}` again")
    return labels


def check_size(image_path: Path, shape: tuple[int, int], label_path: Path) -> None:
    """The image (header only) must have the label's (H, W)."""
    try:
        with Image.open(image_path) as img:
            w, h = img.size
    except FileNotFoundError:
        raise DatasetError(f"{image_path}: file not found (the image of {label_path})") from None
    if (h, w) != tuple(shape):
        raise DatasetError(f"{label_path}: label size {shape[1]}x{shape[0]} (WxH) differs from its image "
                           f"{image_path} ({w}x{h})")
