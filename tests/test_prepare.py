"""Tests of tooling/prepare.py and the datasets it prepares: COCO-Stuff-10K, ADE20K-Full, Mapillary Vistas
v1.2 and ADE20K-Panoptic.

We have no real files of these four datasets, so each test writes tiny files in the formats the
publishers document (sources in each builder's docstring), runs `prepare` twice (the second run
must change nothing), loads the result through `build_dataset` and compares pixels and segments
with expectations worked out by hand from the fixture. Expected class ids come from the official
class lists as literals (e.g. "wall" is ADE20K-Full class 0 with `_seg.png` value 2978), never
from tooling/prepare.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

import inference
from data import DatasetError
from machinery import dataset_files, datasets
from tooling import prepare

REPO = Path(__file__).resolve().parents[1]
META = dataset_files.META_DIR


def save(array: np.ndarray, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def photo(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time (to check nothing changed)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def prepare_twice(name: str, root: Path) -> Path:
    """Run prepare, then again: the second run must rewrite nothing (idempotent)."""
    base = prepare.prepare(name, root)
    before = snapshot(root)
    time.sleep(0.01)
    assert prepare.prepare(name, root) == base
    assert snapshot(root) == before
    return base


# ----------------------------------------------------------------------------------------------
# COCO-Stuff-10K v1.0
# ----------------------------------------------------------------------------------------------


def write_stuff10k(root: Path, labels: dict[str, np.ndarray], test: tuple[str, ...]) -> Path:
    """The cocostuff-10k-v1.0 layout (nightrome/cocostuff10k README): imageLists/{all,train,test}.txt,
    images/<name>.jpg, annotations/<name>.mat holding S (labels from 1: 1 = 'unlabeled', 2-81
    things, 82-172 stuff), names (172), captions, regionMapStuff, regionLabelsStuff. Written as a
    MATLAB v5 file (scipy)."""
    base = root / "coco_stuff_10k"
    names_172 = np.array(["unlabeled"] + [c["name"] for c in json.loads((META / "coco_stuff_10k_171.json")
                                                                         .read_text())["classes"]], dtype=object)
    (base / "imageLists").mkdir(parents=True)
    train = [n for n in labels if n not in test]
    for split, names in (("all", list(labels)), ("train", train), ("test", list(test))):
        (base / "imageLists" / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    for k, (name, S) in enumerate(labels.items()):
        save(photo(*S.shape, seed=k), base / "images" / f"{name}.jpg", quality=95)
        (base / "annotations").mkdir(exist_ok=True)
        scipy.io.savemat(base / "annotations" / f"{name}.mat", {
            "S": S.astype(np.uint16), "names": names_172, "captions": np.array(["a caption"], dtype=object),
            "regionMapStuff": np.ones(S.shape, np.uint16), "regionLabelsStuff": np.array([[S.max()]], np.uint16)})
    return root


STUFF_A = np.array([[1, 2, 2, 173 - 1],
                    [82, 82, 81, 1],
                    [2, 2, 2, 2]])  # 1 unlabeled, 2 person, 81 toothbrush, 82 banner, 172 = last stuff (wood)
STUFF_B = np.array([[3, 3, 100], [3, 100, 100]])


def test_coco_stuff_10k_prepare_and_load(tmp_path):

    root = write_stuff10k(tmp_path, {"COCO_train2014_000000000077": STUFF_A, "COCO_train2014_000000000078": STUFF_B},
                          test=("COCO_train2014_000000000078",))
    base = prepare_twice("coco_stuff_10k", root)
    assert base == root / "coco_stuff_10k"
    png = np.array(Image.open(base / "annotations_detectron2" / "train" / "COCO_train2014_000000000077.png"))
    # hand-worked: v1.0 value v -> class v - 2 (person 0, toothbrush 79, banner 80, wood 170), 1 -> 255
    assert png.tolist() == [[255, 0, 0, 170], [80, 80, 79, 255], [0, 0, 0, 0]]
    train = datasets.build_dataset("coco_stuff_10k", root, split="train")
    val = datasets.build_dataset("coco_stuff_10k", root, split="val")
    assert (len(train), len(val), train.num_classes) == (1, 1, 171)
    assert (train.class_names[0], train.class_names[79], train.class_names[80], train.class_names[170]) == (
        "person", "toothbrush", "banner", "wood")
    assert train.is_thing[79] and not train.is_thing[80]
    item = val[0]
    assert item["orig_sem_seg"].tolist() == [[1, 1, 98], [1, 98, 98]]
    assert item["labels"].tolist() == [1, 98]


def test_coco_stuff_10k_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"coco_stuff_10k: dataset not found under root=.*imageLists"):
        prepare.prepare("coco_stuff_10k", tmp_path)
    root = write_stuff10k(tmp_path / "bad", {"x": np.array([[0, 2], [2, 2]])}, test=())
    with pytest.raises(DatasetError, match=r"x\.mat: label value 0 is out of range .*v1\.0"):
        prepare.prepare("coco_stuff_10k", root)
    root = write_stuff10k(tmp_path / "big", {"y": np.array([[173, 2]])}, test=())
    with pytest.raises(DatasetError, match=r"y\.mat: label value 173 is out of range"):
        prepare.prepare("coco_stuff_10k", root)


# ----------------------------------------------------------------------------------------------
# ADE20K-Full (ADE20K_2021_17_01)
# ----------------------------------------------------------------------------------------------


def ade_seg_png(classes: np.ndarray, instances: np.ndarray | None = None, r_offset: int = 0) -> np.ndarray:
    """The RGB `_seg.png` encoding of the ADE20K 2021 release (its utils_ade20k.loadAde20K decodes the
    class as R / 10 * 256 + G and instances from B): R = class // 256 * 10 (+ an offset < 10, which
    the decoder's integer division drops), G = class % 256, B = instance mask."""
    r = classes // 256 * 10 + r_offset
    b = np.zeros_like(classes) if instances is None else instances
    return np.stack([r, classes % 256, b], axis=-1).astype(np.uint8)


def write_ade_full(root: Path, images: dict[str, np.ndarray]) -> Path:
    """ADE20K_2021_17_01/images/ADE/{training,validation}/<scene category>/<scene>/ADE_*.jpg + _seg.png,
    plus the index and objects files the release ships (not read by tooling/prepare.py)."""
    base = root / "ADE20K_2021_17_01"
    for k, (name, classes) in enumerate(images.items()):
        split = "validation" if name.startswith("ADE_val") else "training"
        folder = base / "images" / "ADE" / split / "urban" / f"street_{k}"
        save(photo(*classes.shape, seed=k), folder / f"{name}.jpg", quality=95)
        save(ade_seg_png(classes, r_offset=k % 10), folder / f"{name}_seg.png")
    (base / "objects.txt").write_text("not read\n")
    (base / "index_ade20k.pkl").write_bytes(b"not unpickled")
    return root


WALL, BUILDING, AD = 2978, 312, 6  # _seg.png class values of ADE20K-Full classes 0, 1 and 263 (official list)
UNLISTED = 5  # a class value that is not one of the 847


def test_ade20k_full_prepare_and_load(tmp_path):

    small = np.array([[WALL, WALL, AD], [BUILDING, UNLISTED, AD]])
    big = np.full((520, 600), WALL)  # short edge 520 > 512: shrunk to 512 x round(600 / 520 * 512) = 591
    big[:, 300:] = BUILDING
    root = write_ade_full(tmp_path, {"ADE_train_00000001": small, "ADE_frame_00000002": big,
                                     "ADE_val_00000001": small.T.copy()})
    base = prepare_twice("ade20k_full", root)
    tif = base / "annotations_detectron2" / "training" / "ADE_train_00000001.tif"
    with Image.open(tif) as img:
        assert img.mode == "I;16"
        assert np.array(img).tolist() == [[0, 0, 263], [1, 65535, 263]]
    with Image.open(base / "images_detectron2" / "training" / "ADE_frame_00000002.jpg") as img:
        assert img.size == (591, 512)  # frames are training images (official rule: not "ADE_val_")
    big_label = np.array(Image.open(base / "annotations_detectron2" / "training" / "ADE_frame_00000002.tif"))
    assert big_label.shape == (512, 591)
    assert (big_label[:, :290] == 0).all() and (big_label[:, 300:] == 1).all()
    assert (base / "images_detectron2" / "training" / "ADE_train_00000001.jpg").read_bytes() == (
        next((base / "images" / "ADE").rglob("ADE_train_00000001.jpg")).read_bytes())  # not resized: copied

    train = datasets.build_dataset("ade20k_full", root, split="train")
    val = datasets.build_dataset("ade20k_full", root, split="val")
    assert (len(train), len(val), train.num_classes) == (2, 1, 847)
    assert (train.class_names[0], train.class_names[263]) == ("wall", "ad, advertisement, advertizement, "
                                                              "advertising, advertizing, advert")
    item = val[0]
    ignore = val.ignore_index
    assert ignore not in range(847)  # class ids go up to 846, so ignore cannot be 255
    assert item["orig_sem_seg"].tolist() == [[0, 1], [0, ignore], [263, 263]]
    assert item["labels"].tolist() == [0, 1, 263]


def test_ade20k_full_errors(tmp_path):

    with pytest.raises(DatasetError, match=r"ade20k_full: dataset not found .*ADE_\*\.jpg"):
        prepare.prepare("ade20k_full", tmp_path)
    root = write_ade_full(tmp_path / "a", {"ADE_train_00000001": np.array([[WALL]]),
                                           "ADE_val_00000001": np.array([[WALL]])})
    with pytest.raises(DatasetError,
                       match=r"is not prepared: no prepared_ade20k_full\.json; run `python -m tooling.prepare"):
        datasets.build_dataset("ade20k_full", root)
    base = prepare.prepare("ade20k_full", root)
    (base / "prepared_ade20k_full.json").unlink()  # as if interrupted before the end
    with pytest.raises(DatasetError, match=r"is half-prepared"):
        datasets.build_dataset("ade20k_full", root)
    prepare.prepare("ade20k_full", root)
    tif = base / "annotations_detectron2" / "training" / "ADE_train_00000001.tif"
    Image.fromarray(np.array([[900]], np.uint16)).save(tif)
    with pytest.raises(DatasetError, match=r"ADE_train_00000001\.tif: label value 900 is out of range"):
        datasets.build_dataset("ade20k_full", root)[0]


def test_interrupted_prepare_resumes(tmp_path, monkeypatch):
    """A crash half-way leaves only whole files; the next run finishes the rest."""
    images = {f"ADE_train_{i:08d}": np.array([[WALL, AD]]) for i in range(1, 5)}
    root = write_ade_full(tmp_path, {**images, "ADE_val_00000001": np.array([[AD]])})
    real_save, calls = prepare.save_atomic, []

    def crash_on_fifth(path, write):
        calls.append(path)
        if len(calls) == 5:
            write(path.with_name(f".{path.name}.partial"))  # the temporary file is written, never renamed
            raise KeyboardInterrupt
        real_save(path, write)

    monkeypatch.setattr(prepare, "save_atomic", crash_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare("ade20k_full", root)
    monkeypatch.setattr(prepare, "save_atomic", real_save)
    base = root / "ADE20K_2021_17_01"
    assert not (base / "prepared_ade20k_full.json").exists()
    written = snapshot(base / "annotations_detectron2")
    prepare.prepare("ade20k_full", root)
    after = snapshot(base / "annotations_detectron2")
    assert all(after[name] == stamp for name, stamp in written.items() if not name.endswith(".partial"))
    assert len([n for n in after if n.endswith(".tif")]) == 5


# ----------------------------------------------------------------------------------------------
# Mapillary Vistas v1.2
# ----------------------------------------------------------------------------------------------


def write_mapillary(root: Path, labels: dict[str, np.ndarray], config_labels: list[dict] | None = None) -> Path:
    """mapillary_vistas/config.json ({"labels": [66 x {name, readable, color, instances, evaluate}]})
    and {training,validation}/images/<key>.jpg + labels/<key>.png: 8-bit palette PNGs whose
    index is the label id (the colours of config.json as palette), as the v1.2 release ships them."""
    base = root / "mapillary_vistas"
    official = json.loads((META / "mapillary_vistas_v1.2.json").read_text())["labels"]
    config_labels = official if config_labels is None else config_labels
    base.mkdir(parents=True)
    (base / "config.json").write_text(json.dumps({"labels": config_labels, "version": "1.2"}))
    palette = [v for label in official for v in label["color"]]
    for k, (name, label) in enumerate(labels.items()):
        split = "validation" if name.startswith("val") else "training"
        save(photo(*label.shape, seed=k), base / split / "images" / f"{name}.jpg", quality=95)
        png = Image.fromarray(label.astype(np.uint8), mode="P")
        png.putpalette(palette)
        (base / split / "labels").mkdir(parents=True, exist_ok=True)
        png.save(base / split / "labels" / f"{name}.png")
    return root


def test_mapillary_check_and_load(tmp_path):

    root = write_mapillary(tmp_path, {"train_a": np.array([[0, 1, 65], [64, 19, 19]]),
                                      "val_a": np.array([[65, 2], [3, 0]])})
    before = snapshot(root)
    assert prepare.prepare("mapillary", root) == root / "mapillary_vistas"
    assert snapshot(root) == before  # labels are used as shipped: nothing written
    train = datasets.build_dataset("mapillary", root, split="train")
    val = datasets.build_dataset("mapillary", root, split="val")
    assert (len(train), len(val), train.num_classes) == (1, 1, 65)
    assert (train.class_names[0], train.class_names[19], train.class_names[64]) == ("Bird", "Person", "Ego Vehicle")
    assert train.is_thing[0] and train.is_thing[19] and not train.is_thing[2]  # config "instances"
    # hand-worked: label ids 0..64 are the classes, 65 (Unlabeled) is ignored
    assert val[0]["orig_sem_seg"].tolist() == [[255, 2], [3, 0]]


def test_mapillary_errors(tmp_path):

    with pytest.raises(DatasetError, match=r"mapillary: dataset not found under root=.*config\.json"):
        datasets.build_dataset("mapillary", tmp_path)
    official = json.loads((META / "mapillary_vistas_v1.2.json").read_text())["labels"]
    root = write_mapillary(tmp_path / "v2", {"train_a": np.array([[0]]), "val_a": np.array([[0]])},
                           config_labels=official + official[:58])  # 124 labels, as config_v2.0.json
    with pytest.raises(DatasetError, match=r"config\.json: 124 labels that are not the 66 of Mapillary Vistas v1\.2"):
        prepare.prepare("mapillary", root)
    root = write_mapillary(tmp_path / "bad", {"train_a": np.array([[0, 70]]), "val_a": np.array([[0]])})
    with pytest.raises(DatasetError, match=r"train_a\.png: label value 70 is out of range"):
        prepare.prepare("mapillary", root)
    with pytest.raises(DatasetError, match=r"train_a\.png: label value 70 is out of range"):
        datasets.build_dataset("mapillary", root)[0]


# ----------------------------------------------------------------------------------------------
# ADE20K-Panoptic (ADEChallengeData2016 + annotations_instance)
# ----------------------------------------------------------------------------------------------


def write_ade_panoptic(root: Path, samples: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Path:
    """ADEChallengeData2016/images/<split>/<name>.jpg, annotations/<split>/<name>.png (L: 0 = other,
    1..150) and annotations_instance/<split>/<name>.png (RGB: R = instance category 1..100, G =
    instance id, 0 = none; the Places Challenge 2017 instance-segmentation README)."""
    base = root / "ADEChallengeData2016"
    for k, (name, (semantic, category, instance)) in enumerate(samples.items()):
        split = "validation" if name.startswith("ADE_val") else "training"
        save(photo(*semantic.shape, seed=k), base / "images" / split / f"{name}.jpg", quality=95)
        save(semantic.astype(np.uint8), base / "annotations" / split / f"{name}.png")
        rgb = np.stack([category, instance, np.zeros_like(category)], axis=-1).astype(np.uint8)
        save(rgb, base / "annotations_instance" / split / f"{name}.png")
    return root


# semantic values (class + 1): 1 wall, 3 sky (stuff); 13 person, 21 car (things). Instance
# categories (R) from the official mapping: 9 -> semantic 21 (car), 7 -> semantic 19 (chair).
PAN_SEMANTIC = np.array([[1, 1, 3, 3],
                         [1, 13, 13, 3],
                         [0, 21, 21, 3]])
PAN_CATEGORY = np.array([[0, 0, 0, 0],
                         [0, 0, 0, 9],
                         [0, 9, 9, 0]])
PAN_INSTANCE = np.array([[0, 0, 0, 0],
                         [0, 0, 0, 5],
                         [0, 4, 4, 0]])


def decode_png(path: Path) -> np.ndarray:
    rgb = np.array(Image.open(path)).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def test_ade20k_panoptic_segments_by_hand(tmp_path):
    root = write_ade_panoptic(tmp_path, {"ADE_train_00000001": (PAN_SEMANTIC, PAN_CATEGORY, PAN_INSTANCE),
                                         "ADE_val_00000001": (PAN_SEMANTIC, PAN_CATEGORY, PAN_INSTANCE)})
    base = prepare_twice("ade20k_panoptic", root)
    content = json.loads((base / "ade20k_panoptic_train.json").read_text())
    assert len(content["categories"]) == 150 and sum(c["isthing"] for c in content["categories"]) == 100
    assert content["categories"][12] == {"id": 12, "name": "person", "isthing": 1, "color": [150, 5, 61]}
    assert content["images"] == [{"id": "ADE_train_00000001", "file_name": "ADE_train_00000001.jpg",
                                  "width": 4, "height": 3}]
    (annotation,) = content["annotations"]
    segments = {s["id"]: s for s in annotation["segments_info"]}
    # hand-worked: stuff wall (class 0, 3 px) and sky (class 2, 3 px: (2,3) is covered by instance
    # 5); the person pixels (semantic 13) have no instance -> void; instance 4 (category 9 -> car,
    # class 20) and instance 5 (category 9 -> car) over the sky.
    assert [(s["category_id"], s["area"], s["bbox"]) for s in segments.values()] == [
        (0, 3, [0, 0, 2, 2]), (2, 3, [2, 0, 2, 3]), (20, 2, [1, 2, 2, 1]), (20, 1, [3, 1, 1, 1])]
    pan = decode_png(base / "ade20k_panoptic_train" / "ADE_train_00000001.png")
    wall, sky, car4, car5 = segments
    assert pan.tolist() == [[wall, wall, sky, sky], [wall, 0, 0, car5], [0, car4, car4, sky]]
    assert not list(base.glob(".*partial*"))


def test_ade20k_panoptic_loads_and_errors(tmp_path):

    root = write_ade_panoptic(tmp_path, {"ADE_train_00000001": (PAN_SEMANTIC, PAN_CATEGORY, PAN_INSTANCE),
                                         "ADE_val_00000001": (PAN_SEMANTIC, PAN_CATEGORY, PAN_INSTANCE)})
    with pytest.raises(DatasetError, match=r"ade20k_panoptic: .* is not prepared: no ade20k_panoptic_train\.json"):
        datasets.build_dataset("ade20k_panoptic", root)
    prepare.prepare("ade20k_panoptic", root)
    val = datasets.build_dataset("ade20k_panoptic", root, split="val")
    assert (len(val), val.num_classes, sum(val.is_thing), val.task) == (1, 150, 100, "panoptic")
    item = val[0]
    assert sorted(item["labels"].tolist()) == [0, 2, 20, 20]
    # sem_seg from the semantic PNG (PAN_SEMANTIC - 1, 0 -> 255), as the official registration: the person
    # without an instance is class 12 (void in the panoptic PNG), the pixel under car 5 is sky (2)
    assert item["orig_sem_seg"].tolist() == [[0, 0, 2, 2], [0, 12, 12, 2], [255, 20, 20, 2]]
    # a folder without the semantic PNGs: sem_seg from the panoptic PNG's categories (void -> 255)
    base = root / "ADEChallengeData2016"
    os.remove(base / "annotations" / "validation" / "ADE_val_00000001.png")
    item = datasets.build_dataset("ade20k_panoptic", root, split="val")[0]
    assert item["orig_sem_seg"].tolist() == [[0, 0, 2, 2], [0, 255, 255, 20], [255, 20, 20, 2]]
    save(np.full((3, 4), 151, np.uint8), base / "annotations" / "validation" / "ADE_val_00000001.png")
    with pytest.raises(DatasetError, match=r"ADE_val_00000001\.png: label value 151 is out of range"):
        datasets.build_dataset("ade20k_panoptic", root, split="val")[0]

    bad_root = write_ade_panoptic(tmp_path / "bad", {
        "ADE_train_00000001": (PAN_SEMANTIC, np.where(PAN_CATEGORY == 9, 101, 0), PAN_INSTANCE)})
    with pytest.raises(DatasetError, match=r"ADE_train_00000001\.png: instance 4 has category \[101\]"):
        prepare.prepare("ade20k_panoptic", bad_root)
    base = bad_root / "ADEChallengeData2016"
    with pytest.raises(DatasetError, match=r"is half-prepared"):
        datasets.build_dataset("ade20k_panoptic", bad_root)
    os.remove(base / "annotations_instance" / "training" / "ADE_train_00000001.png")
    with pytest.raises(DatasetError, match=r"ADE_train_00000001\.png: file not found"):
        prepare.prepare("ade20k_panoptic", bad_root)


# ----------------------------------------------------------------------------------------------
# Training and evaluation on the prepared fixtures
# ----------------------------------------------------------------------------------------------

TINY = ["--config", "tiny", "--crop-size", "64", "--batch-size", "2", "--iters", "2", "--eval-period", "2",
        "--checkpoint-period", "2", "--workers", "0", "--log-period", "1", "--no-progress", "--threads", "1"]


def bigger(label: np.ndarray, factor: int = 8) -> np.ndarray:
    return label.repeat(factor, 0).repeat(factor, 1)


def prepared_fixture(name: str, root: Path) -> Path:
    """A small prepared (or, for Mapillary, shipped) folder of dataset `name` with 2 train + 1 val images."""
    if name == "coco_stuff_10k":
        write_stuff10k(root, {"a": bigger(STUFF_A), "b": bigger(STUFF_B), "c": bigger(STUFF_A.T.copy())},
                       test=("c",))
    elif name == "ade20k_full":
        small = np.array([[WALL, WALL, AD], [BUILDING, UNLISTED, AD]])
        write_ade_full(root, {"ADE_train_00000001": bigger(small), "ADE_train_00000002": bigger(small[::-1].copy()),
                              "ADE_val_00000001": bigger(small.T.copy())})
    elif name == "mapillary":
        label = np.array([[0, 1, 65], [64, 19, 19]])
        write_mapillary(root, {"train_a": bigger(label), "train_b": bigger(label[::-1].copy()),
                               "val_a": bigger(label.T.copy())})
    else:
        sample = (bigger(PAN_SEMANTIC), bigger(PAN_CATEGORY), bigger(PAN_INSTANCE))
        write_ade_panoptic(root, {"ADE_train_00000001": sample, "ADE_train_00000002": sample,
                                  "ADE_val_00000001": sample})
    prepare.prepare(name, root)
    return root


@pytest.mark.parametrize("name", ["coco_stuff_10k", "ade20k_full", "mapillary", "ade20k_panoptic"])
def test_train_two_iterations_on_a_prepared_fixture(tmp_path, name):
    import train

    root = prepared_fixture(name, tmp_path / "data")
    args = train.parse_args(TINY + ["--data", name, "--data-root", str(root), "--output", str(tmp_path / "run")])
    recipe = train.resolve_recipe(args)
    metrics = train.train(args)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses)) and all(loss > 0 for loss in losses)
    metric = "PQ" if name == "ade20k_panoptic" else "mIoU"
    assert 0.0 <= metrics[metric] <= 1.0 and metrics["num_images"] == 1
    # validation's headline figures in metrics.jsonl: mIoU and PQ^St; ADE20K-Panoptic PQ and the semantic mIoU
    (validation,) = [r for r in log if any(k.startswith("val_") for k in r)]
    headline = ["PQ", "mIoU"] if name == "ade20k_panoptic" else ["mIoU", "PQ_St"]
    assert validation == {"step": 2, **{f"val_{k}": metrics[k] for k in headline}}
    # the official recipe, apart from the flags given above (docs/recipe.md)
    full = train.resolve_recipe(train.parse_args(["--data", name]))
    assert (full.batch_size, full.max_iter, full.crop_size, full.task) == {
        "coco_stuff_10k": (32, 60_000, 640, "semantic"), "ade20k_full": (16, 200_000, 512, "semantic"),
        "mapillary": (16, 300_000, 1280, "semantic"), "ade20k_panoptic": (16, 720_000, 640, "panoptic")}[name]
    assert recipe.model_overrides.get("enc_layers", 0) == (6 if name == "ade20k_panoptic" else 0)


def test_infer_eval_pq_on_ade20k_panoptic(tmp_path, monkeypatch, capsys):
    """`infer.py --eval` on ADE20K-Panoptic with the dataset's thresholds (0.7 / 0.8): an oracle that
    returns the ground truth scores PQ = 1; one that misses every thing scores PQ_th = 0."""
    import infer

    root = prepared_fixture("ade20k_panoptic", tmp_path / "data")
    truth = datasets.build_dataset("ade20k_panoptic", root, split="val")[0]
    seen = []

    def oracle(model, images, is_thing, image_sizes, orig_sizes, amp_dtype, object_mask_threshold, overlap_threshold):
        seen.append((object_mask_threshold, overlap_threshold))
        return [(truth["orig_pan_seg"], [dict(s) for s in truth["segments_info"]], truth["orig_sem_seg"])]

    # ADE20K-Panoptic scores the semantic map too (one forward pass: predict_panoptic_and_semantic)
    monkeypatch.setattr(inference, "predict_panoptic_and_semantic", oracle)
    argv = ["--eval", "--data", "ade20k_panoptic", "--data-root", str(root), "--task", "panoptic", "--config",
            "tiny", "--random-init", "--workers", "0", "--device", "cpu", "--output", str(tmp_path / "out")]
    results = infer.main(argv)
    assert seen == [(0.7, 0.8)]
    assert (results["PQ"], results["PQ_th"], results["PQ_st"], results["mIoU"]) == (1.0, 1.0, 1.0, 1.0)
    printed = capsys.readouterr().out
    assert "PQ 100.00" in printed and "mIoU 100.00" in printed

    def stuff_only(*args):
        pan = truth["orig_pan_seg"].clone()
        stuff = [dict(s) for s in truth["segments_info"] if not s["isthing"]]
        pan[~np.isin(pan.numpy(), [s["id"] for s in stuff])] = 0
        sem = torch.where(truth["orig_sem_seg"] == 20, 2, truth["orig_sem_seg"])  # the cars called sky
        return [(pan, stuff, sem)]

    monkeypatch.setattr(inference, "predict_panoptic_and_semantic", stuff_only)
    results = infer.main(argv)
    report = json.loads((tmp_path / "out" / "eval_panoptic.json").read_text())
    # hand-worked mIoU (cells of 8 x 8 px): wall 1, person 1, car 0, sky 4 cells of 6 predicted = 2/3;
    # the void cell (2, 0) is not counted: (1 + 1 + 0 + 2/3) / 4 = 2/3
    assert results["mIoU"] == pytest.approx(2 / 3) and report["mIoU"] == results["mIoU"]
    assert [row["IoU"] for row in report["per_class"] if row["IoU"] is not None] == pytest.approx([1, 2 / 3, 1, 0])
    # hand-worked: the 2 stuff segments are matched exactly (PQ_st 1); the car class is missed (PQ_th 0);
    # PQ averages the 3 categories present: (1 + 1 + 0) / 3
    assert (results["PQ_st"], results["PQ_th"]) == (1.0, 0.0)
    assert results["PQ"] == pytest.approx(2 / 3)


def test_ade20k_full_ignore_value_survives_padding_and_the_per_pixel_loss(tmp_path):
    """ADE20K-Full has a class 255, so its ignore value is 65535 everywhere: in collate's padding and in
    the per-pixel cross-entropy of PerPixelBaseline (which refuses label values it does not know)."""
    import data
    import train

    root = prepared_fixture("ade20k_full", tmp_path / "data")
    item = datasets.build_dataset("ade20k_full", root, split="val")[0]
    smaller = {**item, "image": item["image"][:, :-8], "sem_seg": item["sem_seg"][:, :-8],
               "masks": item["masks"][:, :, :-8]}
    batch = data.collate([item, smaller])
    h, w = item["sem_seg"].shape
    assert (batch["sem_seg"][1, :h, w - 8:w] == 65535).all()
    assert (batch["sem_seg"][1, :h, :w - 8] == item["sem_seg"][:, :-8]).all()
    args = train.parse_args(TINY + ["--data", "ade20k_full", "--data-root", str(root), "--head", "per_pixel",
                                    "--output", str(tmp_path / "run")])
    metrics = train.train(args)
    assert 0.0 <= metrics["mIoU"] <= 1.0


def test_command_lines_prepare_and_give_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"^error: mapillary: dataset not found under root=.*\(download: "):
        prepare.main(["mapillary", str(tmp_path)])
    root = write_mapillary(tmp_path, {"train_a": np.array([[0, 1]]), "val_a": np.array([[2, 65]])})
    # the command as the README gives it, run from the repository root
    done = subprocess.run([sys.executable, "-m", "tooling.prepare", "mapillary", str(root)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"mapillary: prepared {root / 'mapillary_vistas'}" in done.stdout
    with pytest.raises(SystemExit):
        prepare.main(["cityscapes", str(root)])
    assert "invalid choice: 'cityscapes'" in capsys.readouterr().err


def test_official_class_lists_need_no_files():
    """`infer.py --input ... --data NAME` without --data-root: names, colours and things from meta/."""

    names, palette, is_thing = datasets.class_metadata("ade20k_full", None, None)
    assert (len(names), palette.shape, any(is_thing)) == (847, (847, 3), False)
    assert (names[0], names[782][:23], names[846]) == ("wall", "central processing unit",
                                                        "adding machine, totalizer, totaliser")
    names, palette, is_thing = datasets.class_metadata("mapillary", None, None)
    assert (len(names), names[0], palette[0].tolist(), is_thing[0], is_thing[2]) == (65, "Bird", [165, 42, 42],
                                                                                     True, False)
    names, palette, is_thing = datasets.class_metadata("ade20k_panoptic", None, None)
    assert (len(names), sum(is_thing), names[12], palette[12].tolist()) == (150, 100, "person", [150, 5, 61])
    names, _, is_thing = datasets.class_metadata("coco_stuff_10k", None, None)
    assert (len(names), sum(is_thing), names[0], names[170]) == (171, 80, "person", "wood")


def test_ade20k_panoptic_segments_equal_a_naive_loop():
    """Random maps: prepare's vectorised combination equals the official algorithm written as plain
    loops (stuff classes first, then each instance pasted over them; areas and boxes counted after)."""
    meta = json.loads((META / "ade20k_panoptic_150.json").read_text())
    is_thing = [c["isthing"] for c in meta["categories"]]
    rng = np.random.default_rng(3)
    semantic = rng.integers(0, 151, (12, 9))
    instance_ids = rng.integers(0, 6, (12, 9)) * (rng.random((12, 9)) < 0.5)
    category_of = {i: int(rng.integers(1, 101)) for i in range(1, 6)}
    categories = np.vectorize(lambda i: category_of.get(i, 0))(instance_ids)
    instance = np.stack([categories, instance_ids, np.zeros_like(categories)], -1).astype(np.uint8)
    pan, segments = prepare.ade_panoptic_segments(semantic, instance, is_thing, meta["instance_to_semantic"], Path("x"))

    expected_pan = np.zeros(semantic.shape, int)
    classes = []
    for value in sorted(set(semantic.ravel().tolist())):
        if value and not is_thing[value - 1]:
            classes.append(value - 1)
            for y, x in zip(*np.nonzero(semantic == value)):
                expected_pan[y, x] = len(classes)
    for i in sorted(set(instance_ids.ravel().tolist()) - {0}):
        classes.append(meta["instance_to_semantic"][category_of[i] - 1] - 1)
        for y, x in zip(*np.nonzero(instance_ids == i)):
            expected_pan[y, x] = len(classes)
    expected = []
    for segment_id, category in enumerate(classes, start=1):
        pixels = [(y, x) for y in range(12) for x in range(9) if expected_pan[y, x] == segment_id]
        if pixels:
            ys, xs = [p[0] for p in pixels], [p[1] for p in pixels]
            expected.append({"id": segment_id, "category_id": category, "area": len(pixels),
                             "bbox": [min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1], "iscrowd": 0})
    assert pan.tolist() == expected_pan.tolist()
    assert segments == expected


def test_mapillary_v2_download_layout_and_a_deleted_prepared_file(tmp_path):
    """The v2.0 download keeps the v1.2 labels in <split>/v1.2/labels/ and config_v1.2.json; a prepared
    folder that lost a file is refused with the count it expected."""

    root = write_mapillary(tmp_path / "m", {"train_a": np.array([[0, 1]]), "val_a": np.array([[2, 65]])})
    base = root / "mapillary_vistas"
    (base / "config.json").rename(base / "config_v1.2.json")
    for split in ("training", "validation"):
        (base / split / "v1.2").mkdir()
        (base / split / "labels").rename(base / split / "v1.2" / "labels")
    assert datasets.build_dataset("mapillary", root, split="val")[0]["orig_sem_seg"].tolist() == [[2, 255]]

    root = write_stuff10k(tmp_path / "s", {"a": STUFF_A, "b": STUFF_B}, test=("b",))
    prepare.prepare("coco_stuff_10k", root)
    (root / "coco_stuff_10k" / "annotations_detectron2" / "test" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"test holds 0 label files, prepared_coco_stuff_10k\.json says 1; run"):
        datasets.build_dataset("coco_stuff_10k", root, split="val")


def test_a_label_of_another_size_than_its_image_is_one_line(tmp_path):
    """ADE20K-Full _seg.png and ADE20K panoptic instance PNG of 3 x 2 beside a 2 x 3 image."""
    root = write_ade_full(tmp_path / "full", {"ADE_train_00000001": np.array([[WALL, WALL, AD]]),
                                              "ADE_val_00000001": np.array([[WALL]])})
    seg = next((root / "ADE20K_2021_17_01").rglob("ADE_train_00000001_seg.png"))
    save(ade_seg_png(np.full((3, 2), WALL)), seg)
    with pytest.raises(DatasetError, match=r"_seg\.png: label size 2x3 \(WxH\) differs from its image .*\(3x1\)"):
        prepare.prepare("ade20k_full", root)
    root = write_ade_panoptic(tmp_path / "pan", {"ADE_train_00000001": (PAN_SEMANTIC, PAN_CATEGORY, PAN_INSTANCE),
                                                 "ADE_val_00000001": (PAN_SEMANTIC, PAN_CATEGORY, PAN_INSTANCE)})
    instance = root / "ADEChallengeData2016" / "annotations_instance" / "training" / "ADE_train_00000001.png"
    save(np.zeros((4, 3, 3), np.uint8), instance)
    with pytest.raises(DatasetError, match=r"annotations_instance.*: label size 3x4 \(WxH\) differs from its image "
                                           r".*\(4x3\)"):
        prepare.prepare("ade20k_panoptic", root)


def test_preview_draws_a_grid_of_items_and_refuses_mixed_arguments(tmp_path, capsys):
    """`python -m tooling.prepare --preview shapes OUT.png`: a PNG of validation items (image | sem_seg
    per row), as wide as two items side by side at least; NAME ROOT together with --preview is refused."""
    out = tmp_path / "shapes.png"
    prepare.main(["--preview", "shapes", str(out)])
    assert capsys.readouterr().out.strip() == f"saved {out}"
    width, height = Image.open(out).size
    assert width >= 2 * 128 and height >= 128  # shapes items are 128 x 128
    for argv in ([], ["--preview", "shapes", str(out), "ade20k_full", str(tmp_path)]):
        with pytest.raises(SystemExit) as error:
            prepare.main(argv)
        assert error.value.code == 2
        assert "give NAME ROOT to prepare a dataset, or --preview DATASET OUT_PNG" in capsys.readouterr().err
