"""`python train.py --data NAME` is the paper's run: the official recipe's details, each against the
value or behaviour of the official code (facebookresearch/MaskFormer configs and mappers)."""

from __future__ import annotations

import numpy as np

import augment


def official_resize(h: int, w: int, short: int, long: int) -> tuple[int, int]:
    """detectron2 ResizeShortestEdge.get_output_shape, written out by hand."""
    scale = short / min(h, w)
    new_h, new_w = h * scale, w * scale
    if max(new_h, new_w) > long:
        new_h, new_w = new_h * long / max(new_h, new_w), new_w * long / max(new_h, new_w)
    return int(new_h + 0.5), int(new_w + 0.5)


def test_coco_panoptic_crop_branch_sizes_by_hand():
    """Official DETRPanopticDatasetMapper: flip; with probability 1/2 resize the short edge to
    {400, 500, 600} and crop 384-600 per side ("absolute_range"); then short edge 480..800 (<= 1333)."""
    augs = augment.build_augmentations(augment.recipe_for("coco_panoptic"), train=True)
    H, W = 427, 640  # a typical COCO photo
    image = np.zeros((H, W, 3), np.uint8)
    maps = {"sem_seg": np.zeros((H, W), np.int32), "pan_seg": np.zeros((H, W), np.int32)}
    branches = set()
    for seed in range(30):
        out, out_maps = augment.apply_augmentations(augs, image, maps, np.random.default_rng(seed))
        # the same draws, replayed by hand
        rng = np.random.default_rng(seed)
        rng.random()  # flip
        h, w = H, W
        cropped = rng.random() <= 0.5
        if cropped:
            short = (400, 500, 600)[rng.integers(3)]
            h, w = official_resize(h, w, short, 10**9)  # no long-edge cap in the branch
            crop_h = int(rng.integers(min(h, 384), min(h, 600) + 1))
            crop_w = int(rng.integers(min(w, 384), min(w, 600) + 1))
            assert 384 <= crop_h <= 600 and 384 <= crop_w <= 600
            rng.integers(h - crop_h + 1), rng.integers(w - crop_w + 1)  # the crop's corner
            h, w = crop_h, crop_w
        short = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)[rng.integers(11)]
        expected = official_resize(h, w, short, 1333)
        assert out.shape[:2] == expected and out_maps["pan_seg"].shape == expected, seed
        branches.add(cropped)
    assert branches == {True, False}


def test_coco_panoptic_crop_branch_one_case_worked_out():
    """A 400 x 1000 image, branch taken, short edge 500 -> 500 x 1250, crop (450, 600) at (10, 20),
    then short edge 480 -> 480 x 640: the pixels come from rows 10..459, columns 20..619 of the resize."""
    branch = augment.DetrCropBranch()

    class Draws:  # stands in for the generator: the values the branch asks for, in order
        def __init__(self):
            self.values = iter([0.3, 1, 450, 600, 10, 20])

        def random(self):
            return next(self.values)

        def integers(self, *bounds):
            value = next(self.values)
            assert value < bounds[-1] and (len(bounds) == 1 or value >= bounds[0])
            return value

    columns = np.tile(np.arange(1000, dtype=np.int32), (400, 1))
    image = np.zeros((400, 1000, 3), np.uint8)
    out, maps = branch(image, {"sem_seg": columns}, Draws())
    assert out.shape[:2] == (450, 600)
    resized = augment.resize(image, {"sem_seg": columns}, (500, 1250))[1]["sem_seg"]  # short edge 500
    assert np.array_equal(maps["sem_seg"], resized[10:460, 20:620])
    assert abs(int(maps["sem_seg"][0, 0]) - 20 / 1.25) <= 1 and abs(int(maps["sem_seg"][0, -1]) - 619 / 1.25) <= 1
