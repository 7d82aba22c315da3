"""The on-disk datasets of §4: ADE20K-150, Cityscapes, COCO panoptic, COCO-Stuff-10K, ADE20K-Full,
Mapillary Vistas, ADE20K-Panoptic, and a user's own folder.

Paper: §4 "Datasets". Each class here reads one dataset's files into a `data.Sample` (image, label
map, and for panoptic data the segment map and its segments); `data.SegmentationDataset` does the
rest (augmentation, tensors, the ground-truth set z_gt of Eq. (3.2b)). `build_dataset` picks
the class by name; a new dataset is one more class here and one more name there.

Reading order: `SemanticFolderDataset` (image/label folders) -> `ADE20KDataset` ->
`CityscapesDataset` -> `FolderDataset` -> `CocoPanopticDataset` (panoptic PNGs + JSON) -> the
four sets that tooling/prepare.py converts first: `CocoStuff10KDataset`, `ADE20KFullDataset` (847
classes, so its ignore value is 65535), `MapillaryVistasDataset`, `ADE20KPanopticDataset` ->
`build_dataset` (name -> dataset with its recipe) -> `class_metadata` (names and colours without the
files) -> `test_resize` (the one place that says at which size a model is evaluated).
Differences from the official dataset mappers are listed in data.py's docstring.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from data import (
    IGNORE_INDEX,
    IMAGE_EXTENSIONS,
    DatasetError,
    Sample,
    SegmentationDataset,
    ShapesDataset,
    check_same_size,
    check_values,
    make_palette,
    read_image,
    read_label,
    read_panoptic_png,
    split_folder,
)
from machinery import dataset_files
from machinery.augment import recipe_for


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
        check_same_size(image, label, image_path, label_path)
        return Sample(image, self.decode_label(label, label_path), str(image_path), image_path.stem)




class ADE20KDataset(SemanticFolderDataset):
    """ADE20K SceneParsing-150: ADEChallengeData2016/{images,annotations}/{training,validation}/.

    Label PNG value 0 ("other") -> ignore 255; 1..150 -> class 0..149. root may be the folder
    ADEChallengeData2016 itself or its parent.
    """

    URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"

    def __init__(self, root: Path, split: str = "train", **kwargs):
        folder = {"train": "training", "val": "validation"}[split_folder(split)]
        base = next((r for r in (root / "ADEChallengeData2016", root) if (r / "images" / folder).is_dir()), None)
        if base is None:
            raise _missing_root("ade20k", root, f"ADEChallengeData2016/images/{folder}/*.jpg and "
                                f"ADEChallengeData2016/annotations/{folder}/*.png", self.URL)
        images = _list_images(base / "images" / folder)
        pairs = _pair_labels(images, base / "annotations" / folder, lambda p: p.stem + ".png")
        self.lookup = np.full(256, IGNORE_INDEX, np.int32)  # PNG value -> class id
        self.lookup[1:151] = np.arange(150)
        names, is_thing, _ = dataset_files.official_classes("ade20k")
        super().__init__(pairs, str(base / "images" / folder), class_names=names, is_thing=is_thing,
                         palette=make_palette(150), **kwargs)

    def decode_label(self, label: np.ndarray, path: Path) -> np.ndarray:
        check_values(label, np.ones(151, bool), path, "0 = other, 1..150 = classes")
        return self.lookup[label]




class CityscapesDataset(SemanticFolderDataset):
    """Cityscapes fine: leftImg8bit/{split}/{city}/*_leftImg8bit.png with
    gtFine/{split}/{city}/*_gtFine_labelIds.png; label ids 0..33 -> the 19 train ids, others 255
    (255, i.e. the license plate's id -1 stored as uint8, is also ignore)."""

    URL = "https://www.cityscapes-dataset.com/downloads/ (leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip)"

    def __init__(self, root: Path, split: str = "train", **kwargs):
        split = split_folder(split)
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
        label_ids = [c["label_id"] for c in dataset_files.load_meta("cityscapes_19.json")["classes"]]
        self.lookup[label_ids] = np.arange(19)
        self.allowed = np.zeros(256, bool)
        self.allowed[:34] = self.allowed[255] = True
        names, is_thing, colours = dataset_files.official_classes("cityscapes")
        super().__init__(pairs, str(image_dir), class_names=names, is_thing=is_thing, palette=colours, **kwargs)

    def load(self, index: int) -> Sample:
        sample = super().load(index)
        sample.image_id = sample.image_id.replace("_leftImg8bit", "")
        return sample

    def decode_label(self, label: np.ndarray, path: Path) -> np.ndarray:
        check_values(label, self.allowed, path, "Cityscapes label ids 0..33")
        return self.lookup[label]


class FolderDataset(SemanticFolderDataset):
    """Your own data: root/images/{train,val}/<name>.<jpg|png|...>, root/labels/{train,val}/<name>.png
    (single-channel class ids 0..K-1, `ignore_index` for unlabelled pixels) and root/classes.txt
    (one class name per line, line k = class k). The file's ignore value becomes 255 in items."""

    def __init__(self, root: Path, split: str = "train", ignore_index: int = IGNORE_INDEX, **kwargs):
        split = split_folder(split)
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
        split = split_folder(split)
        json_path = root / "annotations" / f"panoptic_{split}2017.json"
        if not json_path.is_file():
            raise _missing_root("coco_panoptic", root, f"annotations/panoptic_{split}2017.json, "
                                f"annotations/panoptic_{split}2017/*.png and {split}2017/*.jpg", self.URL)
        png_dir = root / "annotations" / f"panoptic_{split}2017"
        png_dir = png_dir if png_dir.is_dir() else root / f"panoptic_{split}2017"
        self.read_annotations(json_path, root / f"{split}2017", png_dir, task=task, **kwargs)

    def read_annotations(self, json_path: Path, image_dir: Path, png_dir: Path, **kwargs) -> None:
        """Read a COCO panoptic JSON whose images are in image_dir and PNGs in png_dir; kwargs go to
        SegmentationDataset."""
        try:
            meta = json.loads(json_path.read_text())
            categories = sorted(meta["categories"], key=lambda c: c["id"])
            images = {im["id"]: im["file_name"] for im in meta["images"]}
            annotations = meta["annotations"]
        except (ValueError, KeyError, TypeError) as error:
            raise DatasetError(f"{json_path}: not a COCO panoptic JSON ({type(error).__name__}: {error})") from None
        self.json_path = json_path
        self.contiguous = {c["id"]: k for k, c in enumerate(categories)}
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
                         is_thing=[bool(c["isthing"]) for c in categories], palette=palette, **kwargs)

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> Sample:
        image_path, png_path, image_id, raw_segments = self.records[index]
        image = read_image(image_path)
        pan_seg = read_panoptic_png(png_path)
        check_same_size(image, pan_seg, image_path, png_path)
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
# The paper's other four datasets (§4), read from the folders that tooling/prepare.py writes. Differences
# from the official code: Mapillary's unlabelled id 65 becomes 255 in items (the official config
# sets IGNORE_VALUE 65 instead); ADE20K-Panoptic items derive sem_seg from the panoptic PNG (void
# -> ignore), as for COCO panoptic, instead of reading annotations_detectron2.
# ----------------------------------------------------------------------------------------------


class CocoStuff10KDataset(SemanticFolderDataset):
    """COCO-Stuff-10K v1.0 prepared by `python -m tooling.prepare coco_stuff_10k ROOT`: images/<name>.jpg
    with annotations_detectron2/{train,test}/<name>.png (0..170, 255 = unlabeled). split "val" is
    the 1000-image test list, as in the paper. Classes: 80 things then 91 stuff (COCO-Stuff order)."""

    def __init__(self, root: Path, split: str = "train", **kwargs):
        folder = {"train": "train", "val": "test"}[split_folder(split)]
        base = dataset_files.stuff10k_base(root)
        label_dir = base / "annotations_detectron2" / folder
        labels = dataset_files.check_prepared(base, "coco_stuff_10k", folder, label_dir, "*.png")
        copied = base / "images_detectron2" / folder  # the official script's copies, if present
        image_dir = copied if copied.is_dir() else base / "images"
        names, is_thing, _ = dataset_files.official_classes("coco_stuff_10k")
        self.allowed = np.zeros(256, bool)
        self.allowed[:len(names)] = self.allowed[IGNORE_INDEX] = True
        super().__init__([(image_dir / f"{p.stem}.jpg", p) for p in labels], str(label_dir), class_names=names,
                         is_thing=is_thing, palette=make_palette(len(names)), **kwargs)

    def decode_label(self, label: np.ndarray, path: Path) -> np.ndarray:
        check_values(label, self.allowed, path, "0..170 = classes, 255 = unlabeled")
        return label


class ADE20KFullDataset(SemanticFolderDataset):
    """ADE20K-Full (847 classes) prepared by `python -m tooling.prepare ade20k_full ROOT`:
    images_detectron2/{training,validation}/*.jpg with annotations_detectron2/.../*.tif (uint16
    class ids 0..846, 65535 = unlabelled or a class outside the 847). Class 255 is a real class
    here, so the ignore value of items is 65535 (`ignore_index`)."""

    def __init__(self, root: Path, split: str = "train", **kwargs):
        folder = {"train": "training", "val": "validation"}[split_folder(split)]
        base = dataset_files.ade_full_base(root)
        label_dir = base / "annotations_detectron2" / folder
        labels = dataset_files.check_prepared(base, "ade20k_full", folder, label_dir, "*.tif")
        names, is_thing, _ = dataset_files.official_classes("ade20k_full")
        self.allowed = np.zeros(dataset_files.ADE20K_FULL_IGNORE + 1, bool)
        self.allowed[:len(names)] = self.allowed[dataset_files.ADE20K_FULL_IGNORE] = True
        pairs = [(base / "images_detectron2" / folder / f"{p.stem}.jpg", p) for p in labels]
        super().__init__(pairs, str(label_dir), class_names=names, is_thing=is_thing,
                         palette=make_palette(len(names)), ignore_index=dataset_files.ADE20K_FULL_IGNORE, **kwargs)

    def decode_label(self, label: np.ndarray, path: Path) -> np.ndarray:
        check_values(label, self.allowed, path, f"0..{self.num_classes - 1} = classes, 65535 = ignore")
        return label


class MapillaryVistasDataset(SemanticFolderDataset):
    """Mapillary Vistas v1.2 as shipped (no conversion; `python -m tooling.prepare mapillary ROOT` only checks
    it): {training,validation}/images/*.jpg with labels/*.png (palette indices 0..65). Label ids
    0..64 are the 65 classes of config.json in order; 65 ("Unlabeled") -> ignore (255). Things:
    the labels with "instances": true."""

    def __init__(self, root: Path, split: str = "train", **kwargs):
        folder = {"train": "training", "val": "validation"}[split_folder(split)]
        base = dataset_files.mapillary_base(root)
        dataset_files.check_mapillary_config(base)
        names, is_thing, colours = dataset_files.official_classes("mapillary")
        image_dir, label_dir = dataset_files.mapillary_paths(base, folder)
        pairs = _pair_labels(_list_images(image_dir), label_dir, lambda p: p.stem + ".png")
        self.lookup = np.full(len(names) + 1, IGNORE_INDEX, np.int32)  # label id -> class id
        self.lookup[:len(names)] = np.arange(len(names))
        super().__init__(pairs, str(image_dir), class_names=names, is_thing=is_thing, palette=colours, **kwargs)

    def decode_label(self, label: np.ndarray, path: Path) -> np.ndarray:
        check_values(label, np.ones(len(self.lookup), bool), path,
                      f"0..{len(self.lookup) - 1}, {len(self.lookup) - 1} = unlabeled")
        return self.lookup[label]


class ADE20KPanopticDataset(CocoPanopticDataset):
    """ADE20K-Panoptic prepared by `python -m tooling.prepare ade20k_panoptic ROOT`: images/{training,validation}/
    with the COCO-format ade20k_panoptic_{train,val}.json and ade20k_panoptic_{train,val}/*.png.
    150 categories (100 things), category id = ADE20K-150 class id.

    sem_seg comes from the ADE20K semantic labels, annotations/{training,validation}/<image>.png
    (0 = other -> ignore, 1..150 -> class 0..149), as the official ADE20K-Panoptic registration's
    sem_seg_file_name: the mIoU the official run reports beside PQ (`scores_miou`) is against them, not
    against the panoptic PNG (which leaves void the thing pixels without an instance, e.g. a person
    the instance annotation misses). Without that PNG (a folder holding only the panoptic files),
    sem_seg falls back to the panoptic PNG's categories (CocoPanopticDataset.load)."""

    scores_miou = True  # evaluation.evaluate also scores Eq. (3.4b)'s mIoU on the semantic labels

    def __init__(self, root: Path, split: str = "train", task: str = "panoptic", **kwargs):
        split = split_folder(split)
        base = dataset_files.ade_panoptic_base(root)
        self.semantic_dir = base / "annotations" / dataset_files.ADE_PAN_SPLITS[split]  # the semantic PNGs
        self.lookup = np.full(256, IGNORE_INDEX, np.int32)  # semantic PNG value -> class id, as ADE20KDataset
        self.lookup[1:151] = np.arange(150)
        png_dir, json_path = dataset_files.ade_panoptic_paths(base, split)
        if not json_path.is_file():
            state = "half-prepared (preparation did not finish)" if png_dir.is_dir() else "not prepared"
            raise DatasetError(f"ade20k_panoptic: {base} is {state}: no {json_path.name}; "
                               f"run `python -m tooling.prepare ade20k_panoptic {base}`")
        self.read_annotations(json_path, base / "images" / dataset_files.ADE_PAN_SPLITS[split], png_dir, task=task,
                              **kwargs)

    def load(self, index: int) -> Sample:
        """The panoptic sample with sem_seg (H, W) int32 read from the image's semantic PNG where it exists."""
        sample = super().load(index)
        path = self.semantic_dir / (Path(self.records[index][0]).stem + ".png")
        if not path.is_file():
            return sample
        label = read_label(path)  # (H, W) 0..150
        check_same_size(sample.sem_seg, label, Path(self.records[index][0]), path)
        check_values(label, np.ones(151, bool), path, "0 = other, 1..150 = classes")
        return replace(sample, sem_seg=self.lookup[label])


DATASETS = ("ade20k", "coco_panoptic", "cityscapes", "coco_stuff_10k", "ade20k_full", "mapillary",
            "ade20k_panoptic", "folder", "shapes")


def build_dataset(name: str, root: str | Path | None = None, split: str = "train", train: bool = False,
                  **kwargs) -> SegmentationDataset:
    """Build a dataset by name: one of DATASETS. coco_stuff_10k, ade20k_full and ade20k_panoptic
    read the folders that tooling/prepare.py writes (`python -m tooling.prepare NAME ROOT`).

    train=True applies the training augmentation of the dataset's recipe (`recipe_for`); train=False
    the test resize (and items carry orig_size / orig_sem_seg / orig_pan_seg).
    kwargs: crop_size (int, rescales the recipe, e.g. 640 for Swin-B/L on ADE20K; for shapes: the
    generated image size), single_category_max_area, ignore_index (folder), task
    ("semantic"/"panoptic"; coco_panoptic, shapes), image_size / num_images / seed (shapes),
    test_size / test_max_size (the test resize's short edge / long-edge cap, replacing the recipe's).
    """
    if name not in DATASETS:
        raise DatasetError(f"dataset {name!r} unknown; expected one of {', '.join(DATASETS)}")
    allowed = {"crop_size", "task"} | (
        {"image_size", "num_images", "seed", "colours", "stuff"} if name == "shapes" else
        {"single_category_max_area", "test_size", "test_max_size"} | ({"ignore_index"} if name == "folder" else set()))
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
    try:
        recipe = recipe_for(name, None if crop_size is None else int(crop_size))
    except ValueError as e:
        raise DatasetError(str(e)) from None
    if "single_category_max_area" in kwargs:
        recipe = replace(recipe, single_category_max_area=float(kwargs.pop("single_category_max_area")))
    for key in ("test_size", "test_max_size"):  # an evaluation at another size than the recipe's
        if kwargs.get(key) is not None:
            recipe = replace(recipe, **{key: int(kwargs.pop(key))})
        kwargs.pop(key, None)
    cls = {"ade20k": ADE20KDataset, "coco_panoptic": CocoPanopticDataset, "cityscapes": CityscapesDataset,
           "folder": FolderDataset, "coco_stuff_10k": CocoStuff10KDataset, "ade20k_full": ADE20KFullDataset,
           "mapillary": MapillaryVistasDataset, "ade20k_panoptic": ADE20KPanopticDataset}[name]
    return cls(Path(root), split=split, train=train, recipe=recipe, **kwargs)


# ----------------------------------------------------------------------------------------------
# The test resize: the one place that says at which size a model is evaluated
# ----------------------------------------------------------------------------------------------

# The official test resize (INPUT.MIN_SIZE_TEST, MAX_SIZE_TEST) of each published model's dataset, told
# by its class count: ADE20K-150 (Swin-B/L: 640, the res640 configs), COCO panoptic (detectron2's
# defaults), COCO-Stuff-10K, ADE20K-Full, Cityscapes, Mapillary Vistas.
OFFICIAL_TEST_RESIZE = {150: (512, 2048), 133: (800, 1333), 171: (640, 2560), 847: (512, 2048),
                        19: (1024, 2048), 65: (2048, 2048)}
LARGE_SWINS = ("swin_base", "swin_large")  # trained on ADE20K at crop 640 (the res640 configs)


def test_resize(data_name: str | None = None, crop_size: int | None = None, config: dict | None = None,
                checkpoint: dict | None = None, size: int | None = None,
                max_size: int | None = None) -> tuple[int, int, str]:
    """(short edge, long-edge cap, where they come from) of the test resize: the first found of
    1. the checkpoint's recipe: "test_size" / "test_max_size" (train.py and tooling/convert.py write them);
    2. dataset `data_name`'s recipe at training crop `crop_size` (augment.recipe_for): ADE20K crop 512 ->
       (512, 2048), crop 640 -> (640, 2560), the crop of ADE20K's Swin-B/L models when `config` is one;
       shapes: (crop, 4 x crop), its scenes being generated crop x crop (128 by default);
    3. the official test size of a published model (`config`: its dataset is told by its class count),
       else 512 / 2048.
    `size` / `max_size` (infer.py --size / --max-size) replace either number."""
    recipe = (checkpoint or {}).get("recipe")
    config = config or {}
    if isinstance(recipe, dict) and "test_size" in recipe:
        short, long, source = recipe["test_size"], recipe["test_max_size"], "the checkpoint's recipe"
    elif data_name == "shapes":
        short, long, source = crop_size or 128, 4 * (crop_size or 128), "the shapes recipe"
    elif data_name is not None:
        if crop_size is None and data_name == "ade20k" and config.get("backbone") in LARGE_SWINS:
            crop_size = 640
        recipe = recipe_for(data_name, crop_size)
        short, long, source = recipe.test_size, recipe.test_max_size, f"the {data_name} recipe"
    elif config.get("num_classes") == 150 and config.get("backbone") in LARGE_SWINS:
        short, long, source = 640, 2560, "the model's official test size"
    elif config.get("num_classes") in OFFICIAL_TEST_RESIZE:
        (short, long), source = OFFICIAL_TEST_RESIZE[config["num_classes"]], "the model's official test size"
    else:
        short, long, source = 512, 2048, "the default"
    if size is not None or max_size is not None:
        source = "--size / --max-size"
    return size or short, max_size or long, source


def published_recipe(config: dict) -> dict | None:
    """The "recipe" a converted published model's checkpoint carries: its official test resize
    ({"test_size", "test_max_size"}), None for a class count no published model has."""
    short, long, source = test_resize(config=config)
    return {"test_size": short, "test_max_size": long} if source != "the default" else None


def class_metadata(name: str | None, root: str | None, num_classes: int | None,
                   shapes_options: dict | None = None) -> tuple[list[str], np.ndarray, list[bool]]:
    """(class_names, palette, is_thing) of dataset `name`; generic names and colours without one;
    shapes_options: the shapes dataset's colours / stuff (`shapes_options`)."""
    if name is None:
        K = num_classes if num_classes is not None else 150
        return [f"class {k}" for k in range(K)], make_palette(K), [False] * K
    if root is None and name in dataset_files.CLASS_LISTS:  # official class lists in meta/: no files needed
        names, is_thing, colours = dataset_files.official_classes(name)
        return names, make_palette(len(names)) if colours is None else colours, is_thing
    dataset = build_dataset(name, root, split="val", **(shapes_options or {}))
    return list(dataset.class_names), dataset.palette, list(dataset.is_thing)


def shapes_options(args: argparse.Namespace) -> dict:
    """--shapes-colours / --shapes-stuff as the shapes dataset's arguments (machinery/shapes.py's options)."""
    return {"colours": args.shapes_colours, "stuff": args.shapes_stuff} if args.data == "shapes" else {}
