"""Tests of data.py: real samples decoded against the raw files, bad input, augmentation, targets
(Eq. 3.2b), the shapes set, and collate. Expected values come from the raw files (read here with
PIL/json), hand-worked numbers, or brute-force loops, never from data.py itself."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

import data
from data import DatasetError
from machinery import augment, datasets
from tooling import training_speed

# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def raw(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img)


def save(array: np.ndarray, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def make_folder(root: Path, num_classes: int = 3, images: dict | None = None, labels: dict | None = None) -> Path:
    """A `folder`-layout dataset: classes.txt + images/train + labels/train (train split only)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"class{k}\n" for k in range(num_classes)))
    rng = np.random.default_rng(0)
    if images is None:
        images = {"a": rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)}
    if labels is None:
        labels = {name: rng.integers(0, num_classes, im.shape[:2]).astype(np.uint8) for name, im in images.items()}
    for name, image in images.items():
        save(image, root / "images" / "train" / f"{name}.png")
    for name, label in labels.items():
        save(label, root / "labels" / "train" / f"{name}.png")
    return root


class FixedRng:
    """A stand-in generator: random() -> p, uniform() -> u, integers() -> i (hand-worked cases)."""

    def __init__(self, p: float = 0.0, u: float = 0.0, i: int = 0):
        self.p, self.u, self.i = p, u, i

    def random(self):
        return self.p

    def uniform(self, low, high):
        return self.u

    def integers(self, low, high=None):
        return self.i


# ----------------------------------------------------------------------------------------------
# real samples (../shared/data), checked against the raw files
# ----------------------------------------------------------------------------------------------


def test_ade20k_real_val_matches_raw_files(shared_data):
    ds = datasets.build_dataset("ade20k", shared_data, split="val")  # root = the parent of ADEChallengeData2016
    base = shared_data / "ADEChallengeData2016"
    assert len(ds) == 3 and ds.num_classes == 150 and ds.class_names[0] == "wall" and ds.class_names[-1] == "flag"
    assert ds.palette.shape == (150, 3) and len(set(map(tuple, ds.palette))) == 150
    for i in range(len(ds)):
        item = ds[i]
        name = Path(item["file_name"]).stem
        png = raw(base / "annotations" / "validation" / f"{name}.png").astype(np.int64)
        expected = np.where(png == 0, 255, png - 1)  # 0 = other -> ignore; v -> v - 1
        assert item["orig_size"] == png.shape
        assert torch.equal(item["orig_sem_seg"], torch.from_numpy(expected))
        y, x = np.argwhere(png == png.max())[0]  # one pixel of the largest class id
        assert item["orig_sem_seg"][y, x] == png.max() - 1
        # test resize: short edge 512 (long edge <= 2048)
        h, w = item["image"].shape[-2:]
        assert min(h, w) == 512 and abs(h / w - png.shape[0] / png.shape[1]) < 0.01
        # targets: one mask per class present in the resized map, Eq. (3.2b)
        assert set(item["labels"].tolist()) <= set(np.unique(expected).tolist()) - {255}
        for label, mask in zip(item["labels"], item["masks"]):
            assert torch.equal(mask, item["sem_seg"] == label)
    # ADE_val_00000001 is already 512 on its short edge: no resize, the image is the decoded JPEG
    item = ds[0]
    jpg = raw(base / "images" / "validation" / "ADE_val_00000001.jpg")
    assert np.array_equal(data.denormalize(item["image"]), jpg)
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    assert np.allclose(item["image"][:, 5, 7].numpy(), (jpg[5, 7] - mean) / std, atol=1e-5)


def test_ade20k_real_train_augmented(shared_data):
    torch.manual_seed(0)
    ds = datasets.build_dataset("ade20k", shared_data / "ADEChallengeData2016", split="train", train=True)
    png = raw(shared_data / "ADEChallengeData2016/annotations/training/ADE_train_00000001.png").astype(np.int64)
    present = set(np.unique(png).tolist()) - {0}
    for _ in range(3):
        item = ds[0]
        assert item["image"].shape == (3, 512, 512) and item["sem_seg"].shape == (512, 512)
        assert "orig_sem_seg" not in item
        classes = set(item["sem_seg"].unique().tolist()) - {255}
        assert {c + 1 for c in classes} <= present
        assert item["labels"].tolist() == sorted(classes)


def test_coco_panoptic_real_matches_json_and_png(shared_data):
    root = shared_data / "coco_panoptic"
    meta = json.loads((root / "annotations" / "panoptic_val2017.json").read_text())
    ds = datasets.build_dataset("coco_panoptic", root, split="val")
    categories = sorted(c["id"] for c in meta["categories"])
    assert ds.num_classes == 133 == len(categories) and sum(ds.is_thing) == 80
    assert ds.class_names[0] == "person" and ds.class_names[-1] == "rug-merged"
    for i, ann in enumerate(meta["annotations"]):
        item = ds[i]
        assert item["image_id"] == ann["image_id"]
        rgb = raw(root / "annotations" / "panoptic_val2017" / ann["file_name"]).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        assert torch.equal(item["orig_pan_seg"], torch.from_numpy(ids))
        by_id = {s["id"]: s for s in item["segments_info"]}
        for seg in ann["segments_info"]:
            contiguous = categories.index(seg["category_id"])
            assert by_id[seg["id"]]["category_id"] == contiguous
            assert by_id[seg["id"]]["iscrowd"] == seg["iscrowd"]
            pixels = item["orig_pan_seg"] == seg["id"]
            assert pixels.sum().item() == seg["area"]  # the PNG decodes to the JSON's areas
            sem = item["orig_sem_seg"][pixels]
            assert (sem == (255 if seg["iscrowd"] else contiguous)).all()  # crowd -> ignore
        assert (item["orig_sem_seg"][item["orig_pan_seg"] == 0] == 255).all()  # void -> ignore
        # instance-level targets: one per non-crowd segment, none for crowd
        expected = sorted(categories.index(s["category_id"]) for s in ann["segments_info"] if not s["iscrowd"])
        assert sorted(item["labels"].tolist()) == expected
        for label, mask in zip(item["labels"], item["masks"]):
            assert (item["sem_seg"][mask] == label).all()
    person = ds[0]["segments_info"][0]
    assert person["isthing"] and ds.class_names[person["category_id"]] == "person"


def test_coco_panoptic_semantic_task(shared_data):
    ds = datasets.build_dataset("coco_panoptic", shared_data / "coco_panoptic", split="val", task="semantic")
    item = ds[1]
    assert item["labels"].tolist() == sorted(set(item["sem_seg"].unique().tolist()) - {255})


def test_cityscapes_real_matches_train_ids(shared_data):
    root = shared_data / "cityscapes"
    ds = datasets.build_dataset("cityscapes", root, split="val")
    assert len(ds) == 1 and ds.num_classes == 19 and ds.class_names[13] == "car" and ds.is_thing[13]
    item = ds[0]
    stem = "frankfurt_000000_000294"
    train_ids = raw(root / "gtFine/val/frankfurt" / f"{stem}_gtFine_labelTrainIds.png").astype(np.int64)
    assert item["image_id"] == stem
    label_ids = raw(root / "gtFine/val/frankfurt" / f"{stem}_gtFine_labelIds.png").astype(np.int64)
    ours = item["orig_sem_seg"].numpy()
    # the reduced sample's two PNGs were downscaled separately, so ~0.2% of boundary pixels disagree;
    # for every label id, our train id must be the reference file's majority train id
    assert (ours == train_ids).mean() > 0.99
    for label_id in np.unique(label_ids):
        at = label_ids == label_id
        assert np.unique(ours[at]).size == 1
        assert ours[at][0] == np.bincount(train_ids[at]).argmax(), label_id
    assert item["image"].shape[-2:] == (1024, 2048)  # test: short edge 1024, long edge <= 2048
    image = raw(root / "leftImg8bit/val/frankfurt" / f"{stem}_leftImg8bit.png")
    assert np.array_equal(np.asarray(data.read_image(ds.pairs[0][0])), image)


# ----------------------------------------------------------------------------------------------
# bad input: clear errors naming the file and the problem
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, hint", [("ade20k", "ADEChallengeData2016/images/training"),
                                        ("coco_panoptic", "annotations/panoptic_train2017.json"),
                                        ("cityscapes", "leftImg8bit/train"), ("folder", "classes.txt")])
def test_missing_root(tmp_path, name, hint):
    with pytest.raises(DatasetError, match="not found") as info:
        datasets.build_dataset(name, tmp_path / "nowhere")
    assert hint in str(info.value) and "nowhere" in str(info.value) and "download" in str(info.value)


def test_bad_arguments(tmp_path):
    with pytest.raises(DatasetError, match="root: dataset 'ade20k' needs root"):
        datasets.build_dataset("ade20k")
    with pytest.raises(DatasetError, match="root: the shapes dataset"):
        datasets.build_dataset("shapes", tmp_path)
    with pytest.raises(DatasetError, match="dataset 'voc' unknown; expected one of ade20k"):
        datasets.build_dataset("voc", tmp_path)
    with pytest.raises(DatasetError, match="split='test': expected 'train' or 'val'"):
        datasets.build_dataset("shapes", split="test")
    root = make_folder(tmp_path / "d")
    with pytest.raises(DatasetError, match="folder: unknown argument 'colour'; expected some of crop_size, ignore"):
        datasets.build_dataset("folder", root, colour=1)
    with pytest.raises(DatasetError, match="task='panoptic'.*'semantic' \\(no panoptic labels\\)"):
        datasets.build_dataset("folder", root, task="panoptic")
    with pytest.raises(DatasetError, match="shapes: unknown argument 'ignore_index'"):
        datasets.build_dataset("shapes", ignore_index=0)
    with pytest.raises(DatasetError, match="crop_size=64 and image_size=96: give one of them"):
        datasets.build_dataset("shapes", crop_size=64, image_size=96)
    assert datasets.build_dataset("shapes", split="val", crop_size=64)[0]["image"].shape == (3, 64, 64)


def test_missing_label(tmp_path):
    image = np.zeros((8, 8, 3), np.uint8)
    root = make_folder(tmp_path, images={"a": image, "b": image}, labels={"a": np.zeros((8, 8), np.uint8)})
    with pytest.raises(DatasetError, match=r"b\.png: no label file .*labels/train/b\.png"):
        datasets.build_dataset("folder", root)


def test_empty_split(tmp_path):
    root = make_folder(tmp_path, images={}, labels={})
    (root / "images/train").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"images/train: no images found"):
        datasets.build_dataset("folder", root)


def test_size_mismatch(tmp_path):
    image, label = np.zeros((8, 10, 3), np.uint8), np.zeros((8, 9), np.uint8)
    ds = datasets.build_dataset("folder", make_folder(tmp_path, images={"a": image}, labels={"a": label}))
    with pytest.raises(DatasetError, match=r"train/a\.png: label size 9x8 \(WxH\) differs from its image .*10x8"):
        ds[0]


def test_label_out_of_range(tmp_path):
    label = np.zeros((8, 8), np.uint8)
    label[3, 4] = 7
    root = make_folder(tmp_path / "f", images={"a": np.zeros((8, 8, 3), np.uint8)}, labels={"a": label})
    with pytest.raises(DatasetError, match=r"a\.png: label value 7 is out of range \(expected 0\.\.2 .*=255"):
        datasets.build_dataset("folder", root)[0]
    ade = training_speed.write_ade_like_fixture(tmp_path / "ade", num_images=1, size=(8, 8))
    save(np.full((8, 8), 151, np.uint8), ade / "annotations/training/ADE_train_00000000.png")
    with pytest.raises(DatasetError, match=r"ADE_train_00000000\.png: label value 151 is out of range"):
        datasets.build_dataset("ade20k", ade)[0]
    city = tmp_path / "city"
    save(np.zeros((8, 8, 3), np.uint8), city / "leftImg8bit/train/x/x_0_0_leftImg8bit.png")
    save(np.full((8, 8), 40, np.uint8), city / "gtFine/train/x/x_0_0_gtFine_labelIds.png")
    with pytest.raises(DatasetError, match=r"x_0_0_gtFine_labelIds\.png: label value 40 is out of range"):
        datasets.build_dataset("cityscapes", city)[0]


def test_unreadable_and_truncated_files(tmp_path):
    root = make_folder(tmp_path, images={"a": np.zeros((40, 40, 3), np.uint8)})
    jpeg = root / "images/train/a.jpg"
    (root / "images/train/a.png").unlink()
    save(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8), jpeg, quality=95)
    jpeg.write_bytes(jpeg.read_bytes()[:300])  # truncated
    ds = datasets.build_dataset("folder", root)
    with pytest.raises(DatasetError, match=r"a\.jpg: cannot read the file \(OSError: .*[Tt]runcated"):
        ds[0]
    (root / "labels/train/a.png").write_bytes(b"not a png")
    save(np.zeros((40, 40, 3), np.uint8), jpeg)
    with pytest.raises(DatasetError, match=r"labels/train/a\.png: cannot read the file \(UnidentifiedImageError"):
        ds[0]
    save(np.zeros((40, 40, 3), np.uint8), root / "labels/train/a.png")  # an RGB label
    with pytest.raises(DatasetError, match=r"a\.png: a label map must be a single-channel image .*got mode RGB"):
        ds[0]


def test_folder_class_file_errors(tmp_path):
    root = make_folder(tmp_path)
    (root / "classes.txt").write_text("\n\n")
    with pytest.raises(DatasetError, match=r"classes\.txt: no class names \(expected one name per line\)"):
        datasets.build_dataset("folder", root)
    (root / "classes.txt").write_text("".join(f"c{k}\n" for k in range(300)))
    with pytest.raises(DatasetError, match=r"classes\.txt: 300 classes; at most 254"):
        datasets.build_dataset("folder", root)


def test_coco_segment_missing_from_json(tmp_path):
    root = tmp_path / "coco"
    save(np.zeros((6, 6, 3), np.uint8), root / "val2017/1.jpg")
    pan = np.zeros((6, 6, 3), np.uint8)
    pan[:3, :, 0] = 5  # segment id 5
    pan[3:, :, 1] = 1  # segment id 256: not in the JSON
    save(pan, root / "annotations/panoptic_val2017/1.png")
    meta = {"images": [{"id": 1, "file_name": "1.jpg"}],
            "categories": [{"id": 3, "name": "a", "isthing": 1}],
            "annotations": [{"image_id": 1, "file_name": "1.png",
                             "segments_info": [{"id": 5, "category_id": 3, "iscrowd": 0, "area": 18}]}]}
    (root / "annotations/panoptic_val2017.json").write_text(json.dumps(meta))
    ds = datasets.build_dataset("coco_panoptic", root, split="val")
    with pytest.raises(DatasetError, match=r"1\.png: segment id 256 is in the PNG but not in its segments_info"):
        ds[0]
    (root / "annotations/panoptic_val2017.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"panoptic_val2017\.json: not a COCO panoptic JSON"):
        datasets.build_dataset("coco_panoptic", root, split="val")


def test_image_modes_become_rgb(tmp_path):
    rgb = np.array([[[10, 20, 30], [200, 100, 50]]], np.uint8)  # (1, 2, 3)
    gray = np.array([[0, 128]], np.uint8)
    assert np.array_equal(data.read_image(save(gray, tmp_path / "g.png")), np.repeat(gray[..., None], 3, 2))
    rgba = np.concatenate([rgb, np.full((1, 2, 1), 7, np.uint8)], 2)
    assert np.array_equal(data.read_image(save(rgba, tmp_path / "a.png")), rgb)
    palette_img = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette_img.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette_img.save(tmp_path / "p.png")
    assert np.array_equal(data.read_image(tmp_path / "p.png"), rgb)
    deep = np.array([[0, 65535, 257 * 100]], np.uint16)
    out = data.read_image(save(deep, tmp_path / "d.png"))
    assert out.shape == (1, 3, 3) and out[0, :, 0].tolist() == [0, 255, 100]


def test_folder_ignore_index_and_palette_labels(tmp_path):
    label = np.array([[0, 1, 2, 9]], np.uint8)
    palette_label = Image.fromarray(label, "P")
    palette_label.putpalette([v % 256 for v in range(768)])
    root = make_folder(tmp_path, images={"a": np.zeros((1, 4, 3), np.uint8)}, labels={})
    (root / "labels/train").mkdir(parents=True)
    palette_label.save(root / "labels/train/a.png")
    ds = datasets.build_dataset("folder", root, split="train", ignore_index=9)
    assert ds.ignore_index == 255 and ds.class_names == ["class0", "class1", "class2"]
    assert ds[0]["orig_sem_seg"].tolist() == [[0, 1, 2, 255]]


# ----------------------------------------------------------------------------------------------
# augmentation
# ----------------------------------------------------------------------------------------------


def test_shortest_edge_size_hand_worked():
    assert augment.shortest_edge_size(512, 683, 256, 2048) == (256, 342)  # 683 * 0.5 = 341.5 -> 342
    assert augment.shortest_edge_size(683, 512, 1024, 2048) == (1366, 1024)
    assert augment.shortest_edge_size(100, 1000, 512, 2048) == (205, 2048)  # long edge capped: 204.8 -> 205
    assert augment.shortest_edge_size(300, 400, 512, 2048) == (512, 683)  # 682.67 -> 683


def test_recipes_match_reference():
    ade = augment.RECIPES["ade20k"]
    assert ade.crop_size == (512, 512) and ade.train_max_size == 2048
    assert ade.train_sizes == (256, 307, 358, 409, 460, 512, 563, 614, 665, 716, 768, 819, 870, 921, 972, 1024)
    assert (ade.test_size, ade.test_max_size, ade.color_jitter, ade.single_category_max_area) == (512, 2048, True, 1.0)
    swin = augment.recipe_for("ade20k", 640)  # Swin-B/L
    assert swin.train_sizes[0] == 320 and swin.train_sizes[2] == 448 and swin.train_sizes[-1] == 1280
    assert (swin.crop_size, swin.train_max_size, swin.test_size, swin.test_max_size) == ((640, 640), 2560, 640, 2560)
    city = augment.recipe_for("cityscapes", 512)
    assert city == augment.RECIPES["cityscapes"] and city.crop_size == (512, 1024) and city.train_max_size == 4096
    assert city.train_sizes[0] == 512 and city.train_sizes[-1] == 2048
    assert (city.test_size, city.test_max_size) == (1024, 2048)
    coco = augment.RECIPES["coco_panoptic"]
    assert coco.crop_size is None and coco.train_sizes == tuple(range(480, 801, 32)) and not coco.color_jitter
    with pytest.raises(ValueError, match="crop_size=1024: coco_panoptic .* has no crop"):
        augment.recipe_for("coco_panoptic", 1024)


def marker_fixture(tmp_path: Path, size=(120, 180)) -> Path:
    """ADE layout, one image: mid-gray (90) with a 40x48 marker, white on its left half (class 5)
    and black on its right half (class 7), so that a flip is visible."""
    H, W = size
    image = np.full((H, W, 3), 90, np.uint8)
    label = np.ones((H, W), np.uint8)
    image[40:80, 100:124], label[40:80, 100:124] = 255, 6  # ADE value 6 -> class 5
    image[40:80, 124:148], label[40:80, 124:148] = 0, 8  # ADE value 8 -> class 7
    root = tmp_path / "marker"
    save(image, root / "images/training/m.png")
    save(label, root / "annotations/training/m.png")
    return root


def test_marker_stays_aligned_through_resize_crop_flip(tmp_path):
    root = marker_fixture(tmp_path)
    ds = datasets.build_dataset("ade20k", root, split="train", train=True)
    ds.recipe = replace(augment.recipe_for("ade20k", 96), color_jitter=False)  # short edge 48..192 (x0.4..1.6), crop 96
    ds.augmentations = augment.build_augmentations(ds.recipe, train=True)
    checked = flipped = 0
    for seed in range(40):
        torch.manual_seed(seed)
        item = ds[0]
        white_label, black_label = item["sem_seg"] == 5, item["sem_seg"] == 7
        if white_label.sum() < 150 or black_label.sum() < 150:  # marker (partly) cropped away
            continue
        gray = torch.from_numpy(data.denormalize(item["image"]).astype(np.int64).mean(2))
        for in_label, in_image in ((white_label, gray > (90 + 255) / 2), (black_label, gray < 90 / 2)):
            iou = (in_image & in_label).sum() / (in_image | in_label).sum()
            assert iou > 0.75, (seed, iou)  # bilinear blending blurs one pixel at each edge
            ys, xs = torch.nonzero(in_label, as_tuple=True)
            yi, xi = torch.nonzero(in_image, as_tuple=True)
            assert abs(xs.float().mean() - xi.float().mean()) < 1 and abs(ys.float().mean() - yi.float().mean()) < 1
        checked += 1
        white_x, black_x = torch.nonzero(white_label)[:, 1].float(), torch.nonzero(black_label)[:, 1].float()
        flipped += int(black_x.mean() < white_x.mean())
    assert checked >= 10 and 3 <= flipped <= checked - 3  # both flipped and unflipped cases were checked


def test_padding_to_crop_is_ignore(tmp_path):
    root = marker_fixture(tmp_path)
    ds = datasets.build_dataset("ade20k", root, split="train", train=True)
    small = replace(augment.recipe_for("ade20k", 128), train_sizes=(40,))  # resized to 40x60, crop 128: pad
    ds.recipe, ds.augmentations = small, augment.build_augmentations(small, train=True)
    item = ds[0]
    assert item["image"].shape == (3, 128, 128)
    assert (item["sem_seg"][40:] == 255).all() and (item["sem_seg"][:, 60:] == 255).all()
    assert (item["sem_seg"][:40, :60] != 255).all()
    # official semantic mapper: the raw crop is padded with 128, then normalised
    padded = torch.tensor([(128 - 123.675) / 58.395, (128 - 116.28) / 57.12, (128 - 103.53) / 57.375])
    assert torch.allclose(item["image"][:, 40:], padded[:, None, None].expand(3, 88, 128))
    assert torch.allclose(item["image"][:, :, 60:], padded[:, None, None].expand(3, 128, 68))
    assert not item["masks"][:, 40:].any() and not item["masks"][:, :, 60:].any()


def test_augmentation_determinism(tmp_path):
    root = training_speed.write_ade_like_fixture(tmp_path, num_images=1, size=(64, 80))
    ds = datasets.build_dataset("ade20k", root, split="train", train=True, crop_size=48)
    torch.manual_seed(3)
    first = [ds[0] for _ in range(4)]
    torch.manual_seed(3)
    again = [ds[0] for _ in range(4)]
    for a, b in zip(first, again):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["sem_seg"], b["sem_seg"])
    assert not all(torch.equal(first[0]["image"], f["image"]) for f in first[1:])  # draws differ
    # each augmentation is a function of its explicit rng
    image = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    maps = {"sem_seg": np.arange(1200, dtype=np.int32).reshape(30, 40)}
    augs = (augment.ResizeShortestEdge((20, 40), 100), augment.RandomCrop((16, 16)), augment.ColorAugSSD(),
            augment.RandomFlip())
    for aug in augs:
        outs = [aug(image, maps, np.random.default_rng(7)) for _ in range(2)]
        assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1]["sem_seg"], outs[1][1]["sem_seg"])


def test_crop_and_flip_move_labels_with_pixels():
    image = np.arange(30 * 40 * 3, dtype=np.int64).reshape(30, 40, 3).astype(np.uint8)
    ids = np.arange(30 * 40, dtype=np.int32).reshape(30, 40)  # every pixel its own label
    out, maps = augment.RandomCrop((10, 12))(image, {"sem_seg": ids}, np.random.default_rng(0))
    y0, x0 = divmod(int(maps["sem_seg"][0, 0]), 40)
    assert np.array_equal(out, image[y0:y0 + 10, x0:x0 + 12]) and out.shape == (10, 12, 3)
    out, maps = augment.RandomFlip(prob=1.0)(image, {"sem_seg": ids}, np.random.default_rng(0))
    assert maps["sem_seg"][4, 0] == ids[4, 39] and np.array_equal(out[4, 0], image[4, 39])


def test_resize_labels_nearest_image_bilinear():
    image = np.zeros((4, 4, 3), np.uint8)
    image[:, 2:] = 200
    labels = np.zeros((4, 4), np.int32)
    labels[:, 2:] = 7
    out, maps = augment.resize(image, {"sem_seg": labels}, (8, 8))
    assert set(np.unique(maps["sem_seg"]).tolist()) == {0, 7}  # nearest: no new label values
    assert 0 < out[0, 3, 0] < 200 or 0 < out[0, 4, 0] < 200  # bilinear: blended pixels at the edge


def test_category_area_constraint():
    label = np.zeros((40, 200), np.int32)
    label[:, 170:] = 1  # a stripe of class 1 on the right
    image = np.zeros((40, 200, 3), np.uint8)

    def balanced(max_area, seed):
        _, maps = augment.RandomCrop((40, 40), max_area)(image, {"sem_seg": label}, np.random.default_rng(seed))
        counts = np.bincount(maps["sem_seg"].ravel(), minlength=2)
        return counts.max() < 0.95 * counts.sum()

    off = sum(balanced(1.0, s) for s in range(40))
    on = sum(balanced(0.95, s) for s in range(40))
    # a crop is balanced iff it holds >= 3 stripe columns: x0 >= 133, 28 of 161 offsets (p = 0.17);
    # with up to ten tries p = 1 - 0.83^10 = 0.85. Expected: off ~ 7, on ~ 34 of 40
    assert off < 15 and on > 25


def test_color_aug_ssd_hand_worked():
    aug = augment.ColorAugSSD()
    flat = np.full((2, 2, 3), 100, np.uint8)
    assert (aug.brightness(flat, FixedRng(p=0.0, u=10.7)) == 110).all()  # +10.7, truncated to uint8
    assert (aug.brightness(flat, FixedRng(p=0.9, u=10.7)) == 100).all()  # skipped with probability 1/2
    assert (aug.contrast(flat, FixedRng(p=0.0, u=0.5)) == 50).all()
    colour = np.tile(np.array([200, 100, 50], np.uint8), (2, 2, 1))
    gray = aug.saturation(colour, FixedRng(p=0.0, u=0.0))  # saturation x0 -> gray at value = max channel
    assert (gray == 200).all()
    red = np.tile(np.array([255, 0, 0], np.uint8), (2, 2, 1))
    cyan = aug.hue(red, FixedRng(p=0.0, i=90))  # 90 OpenCV units = 180 degrees
    assert (np.abs(cyan.astype(int) - [0, 255, 255]) <= 3).all()
    # whole transform keeps shape/dtype and leaves label maps alone
    maps = {"sem_seg": np.zeros((2, 2), np.int32)}
    out, out_maps = aug(colour, maps, np.random.default_rng(0))
    assert out.shape == colour.shape and out.dtype == np.uint8 and out_maps is maps


# ----------------------------------------------------------------------------------------------
# targets, Eq. (3.2b)
# ----------------------------------------------------------------------------------------------


def test_semantic_to_targets_brute_force():
    sem = torch.from_numpy(np.random.default_rng(0).choice([0, 3, 4, 255], (9, 11)))
    labels, masks = data.semantic_to_targets(sem)
    expected = [c for c in range(255) if (sem == c).any()]
    assert labels.tolist() == expected and masks.dtype == torch.bool and masks.shape == (3, 9, 11)
    for c, m in zip(expected, masks):
        for y in range(9):
            for x in range(11):
                assert bool(m[y, x]) == (int(sem[y, x]) == c)
    labels, masks = data.semantic_to_targets(torch.full((4, 5), 255))
    assert labels.shape == (0,) and masks.shape == (0, 4, 5)


def test_panoptic_to_targets():
    pan = torch.tensor([[1, 1, 2], [3, 3, 0]])
    info = [{"id": 1, "category_id": 4, "iscrowd": 0}, {"id": 2, "category_id": 4, "iscrowd": 1},
            {"id": 3, "category_id": 0, "iscrowd": 0}, {"id": 9, "category_id": 2, "iscrowd": 0}]  # 9: absent
    labels, masks = data.panoptic_to_targets(pan, info)
    assert labels.tolist() == [4, 0]
    assert masks.tolist() == [[[True, True, False], [False, False, False]],
                              [[False, False, False], [True, True, False]]]


# ----------------------------------------------------------------------------------------------
# shapes
# ----------------------------------------------------------------------------------------------


def test_shapes_semantic_and_panoptic_agree():
    ds = datasets.build_dataset("shapes", split="val", task="panoptic")
    assert ds.num_classes == 7 and ds.class_names[0] == "background" and ds.is_thing == [False] + [True] * 6
    seen_classes, repeated = set(), 0
    for i in range(20):
        item = ds[i]
        sem, pan = item["sem_seg"], item["pan_seg"]
        assert item["image"].shape == (3, 128, 128) and (sem != 255).all() and (pan > 0).all()
        category = {s["id"]: s["category_id"] for s in item["segments_info"]}
        for s in item["segments_info"]:
            pixels = pan == s["id"]
            assert pixels.sum().item() == s["area"] > 0
            assert (sem[pixels] == s["category_id"]).all()  # sem_seg = the segment's class
            assert s["isthing"] == (s["category_id"] > 0)
            if s["isthing"]:
                assert s["area"] >= 240  # not tiny: >= 70% of 1.9 r², r >= 15.4 px, stays visible (315)
        assert sorted(category) == sorted(torch.unique(pan).tolist())
        # panoptic targets: one per segment; their per-class union is the semantic target
        assert len(item["labels"]) == len(item["segments_info"])
        sem_labels, sem_masks = data.semantic_to_targets(sem)
        for c, m in zip(sem_labels, sem_masks):
            assert torch.equal(item["masks"][item["labels"] == c].any(0), m)
        things = [s["category_id"] for s in item["segments_info"] if s["isthing"]]
        seen_classes |= set(things)
        repeated += len(things) > len(set(things))
    assert seen_classes == set(range(1, 7)) and repeated >= 3  # several instances of a class


def test_shapes_determinism():
    a = datasets.build_dataset("shapes", split="train")
    b = datasets.build_dataset("shapes", split="train", num_images=50)
    order = [b[i] for i in (7, 3)]
    assert torch.equal(a[3]["image"], order[1]["image"]) and torch.equal(a[7]["sem_seg"], order[0]["sem_seg"])
    val = datasets.build_dataset("shapes", split="val")
    other_seed = datasets.build_dataset("shapes", split="train", seed=1)
    assert not torch.equal(a[3]["image"], val[3]["image"]) and not torch.equal(a[3]["image"], other_seed[3]["image"])
    assert len(a) == 10000 and len(val) == 100 and len(b) == 50
    small = datasets.build_dataset("shapes", split="val", image_size=64)
    assert small[0]["image"].shape == (3, 64, 64)
    with pytest.raises(IndexError):
        val[100]


def test_shapes_class_is_the_outline_not_the_colour():
    # across many instances, the mean colour of a class is near the middle of the RGB cube
    ds = datasets.build_dataset("shapes", split="train")
    colour_sum, count = np.zeros((7, 3)), np.zeros(7)
    for i in range(30):
        scene = ds.scene(i)
        for k, c in enumerate(scene.classes):
            pixels = scene.image[scene.instances == k]
            colour_sum[c] += pixels.mean(0)
            count[c] += 1
    means = colour_sum[1:] / count[1:, None]
    assert (np.abs(means - 127.5) < 45).all()


# ----------------------------------------------------------------------------------------------
# collate and loading
# ----------------------------------------------------------------------------------------------


def test_collate_pads_to_multiple_of_32():
    items = []
    for h, w, n in ((40, 70, 2), (33, 90, 0)):
        sem = torch.randint(0, 3, (h, w))
        items.append({"image": torch.randn(3, h, w), "sem_seg": sem, "labels": torch.arange(n),
                      "masks": torch.ones(n, h, w, dtype=torch.bool), "pan_seg": sem + 1,
                      "segments_info": [], "file_name": f"{h}", "image_id": h})
    batch = data.collate(items)
    assert batch["images"].shape == (2, 3, 64, 96) and batch["sem_seg"].shape == (2, 64, 96)
    assert batch["image_sizes"] == [(40, 70), (33, 90)]
    assert torch.equal(batch["images"][0, :, :40, :70], items[0]["image"])
    assert (batch["images"][0, :, 40:] == 0).all() and (batch["images"][0, :, :, 70:] == 0).all()
    assert torch.equal(batch["sem_seg"][1, :33, :90], items[1]["sem_seg"])
    assert (batch["sem_seg"][1, 33:] == 255).all() and (batch["sem_seg"][0, :, 70:] == 255).all()
    t0, t1 = batch["targets"]
    assert t0["masks"].shape == (2, 64, 96) and t0["masks"][:, :40, :70].all() and t0["masks"].sum() == 2 * 40 * 70
    assert t1["masks"].shape == (0, 64, 96) and t1["labels"].shape == (0,)
    assert t0["pan_seg"].shape == (64, 96) and (t0["pan_seg"][40:] == 0).all()
    assert t0["file_name"] == "40" and t1["image_id"] == 33 and t0["segments_info"] == []


def test_dataloader_two_workers_and_distributed_sampler(tmp_path):
    # two identical images: with two workers, each worker draws its own crops
    root = training_speed.write_ade_like_fixture(tmp_path, num_images=1, size=(64, 80))
    for split in ("training",):
        for kind, ext in (("images", "jpg"), ("annotations", "png")):
            src = root / kind / split / f"ADE_train_00000000.{ext}"
            (root / kind / split / f"ADE_train_00000001.{ext}").write_bytes(src.read_bytes())
    ds = datasets.build_dataset("ade20k", root, split="train", train=True, crop_size=48)
    torch.manual_seed(0)
    loader = DataLoader(ds, batch_size=1, num_workers=2, collate_fn=data.collate)
    batches = list(loader)
    assert len(batches) == 2 and all(b["images"].shape == (1, 3, 64, 64) for b in batches)
    assert not torch.equal(batches[0]["images"], batches[1]["images"])  # workers 0 and 1 differ
    shapes = datasets.build_dataset("shapes", split="val", num_images=6)
    sampler = DistributedSampler(shapes, num_replicas=2, rank=1, shuffle=False)
    loader = DataLoader(shapes, batch_size=2, sampler=sampler, num_workers=2, collate_fn=data.collate)
    ids = [t["image_id"] for batch in loader for t in batch["targets"]]
    assert ids == [1, 3, 5]
    batch = next(iter(loader))
    assert batch["images"].shape == (2, 3, 128, 128) and torch.equal(batch["sem_seg"][0], shapes[1]["sem_seg"])


def test_denormalize_inverts_normalize():
    image = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    x = data.normalize(image)
    assert x.shape == (3, 5, 6) and x.dtype == torch.float32
    assert np.array_equal(data.denormalize(x), image)
    assert math.isclose(float(x[0, 0, 0]), (image[0, 0, 0] - 123.675) / 58.395, rel_tol=1e-5)
    padded = data.normalize(image, pad_to=(7, 6))
    assert padded.shape == (3, 7, 6) and torch.equal(padded[:, :5], x)
    assert math.isclose(float(padded[2, 6, 0]), (128 - 103.53) / 57.375, rel_tol=1e-5)  # raw 128, normalised
