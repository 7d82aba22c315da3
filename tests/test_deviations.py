"""tooling/deviations.py: each measurement on a hand-built case, then the command on the sample data."""

from __future__ import annotations

import numpy as np
import pytest

from machinery import augment
from tooling import deviations


def test_label_resize_disagreement_by_hand():
    # 6x6 -> 4x4 (scale 1.5). torch nearest takes source index floor(1.5 d) = 0, 1, 3, 4; PIL NEAREST
    # takes the pixel centre floor(1.5 (d + 0.5)) = 0, 2, 3, 5. Output rows/columns 1 and 3 differ.
    label = (10 * np.arange(6)[:, None] + np.arange(6)).astype(np.int32)  # (6, 6)
    label[2] = 255  # source row 2 is ignore: PIL's output row 1, not torch's
    ours = augment.resize(np.zeros((6, 6, 3), np.uint8), {"l": label}, (4, 4))[1]["l"]
    assert ours.tolist() == [[0, 2, 3, 5], [255] * 4, [30, 32, 33, 35], [50, 52, 53, 55]]
    assert deviations.torch_nearest(label, (4, 4)).tolist() == [[0, 1, 3, 4], [10, 11, 13, 14],
                                                                [30, 31, 33, 34], [40, 41, 43, 44]]
    # differ: every pixel in output row 1 or 3 or column 1 or 3: 16 - 4 = 12; ignore on one side: row 1 (4)
    assert deviations.label_resize_disagreement(label, (4, 4)) == (16, 12, 4)


def test_label_resize_effect_sums_over_the_recipe_scales():
    recipe = augment.AugmentationRecipe((4, 4), (4, 6), 100, 4, 100)
    label = (10 * np.arange(6)[:, None] + np.arange(6)).astype(np.int32)
    r = deviations.label_resize_effect([label], recipe)  # 6 -> 4 (12 of 16 differ), 6 -> 6 (none)
    assert r == {"resizes": 2, "differ": 12 / 52, "ignore": 0.0, "between_classes": 1.0}


def test_a_crop_that_removes_exactly_one_segment():
    pan = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [1, 1, 3, 3], [1, 1, 3, 3]], np.int32)  # (4, 4)
    assert deviations.removed_segments(pan, pan[:2], np.array([1, 2, 3])) == 1  # the top half loses 3
    assert deviations.removed_segments(pan, pan[:2], np.array([1, 2, 7])) == 0  # 7 was never there

    def top_half(image, maps, rng):
        return image[:2], {k: m[:2] for k, m in maps.items()}

    image = np.zeros((4, 4, 3), np.uint8)
    assert deviations.removal_by_augmentation(image, pan, np.array([1, 2, 3]), [top_half], 5,
                                              np.random.default_rng(0)) == (5, 3)
    r = deviations.cropped_segments_effect([(image, pan, np.array([1, 2, 3]))], [top_half], 5, seed=0)
    assert r == {"draws": 5, "removed_per_draw": 1.0, "segments_per_image": 3.0, "fraction": 1 / 3}


def test_padding_by_hand():
    assert deviations.padding_fraction(800, 1201) == 800 * 15 / (800 * 1201)
    assert deviations.padding_fraction(64, 96) == 0.0
    # 480 x 640 at COCO's test resize -> 800 x 1067 (640 * 800 / 480 = 1066.7), padded to 800 x 1088
    r = deviations.coco_test_padding([(480, 640)], augment.recipe_for("coco_panoptic"))
    assert r == {"images": 1, "mean": 800 * 21 / (800 * 1067), "max": 800 * 21 / (800 * 1067)}


def test_tta_sizes():
    assert deviations.tta_sizes("mapillary") == ((1024, 1536, 2048, 2560, 3072, 3584), 14336)
    assert deviations.tta_sizes("ade20k_full") == ((256, 384, 512, 640, 768, 896), 3584)
    assert deviations.D2_TTA_MIN_SIZES == (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)


def test_the_command_on_the_sample_data_prints_the_measured_figures(shared_data):
    printed: list[str] = []
    returned = deviations.main(["--data-root", str(shared_data), "--crops", "3", "--seed", "1"], out=printed.append)
    measured = deviations.measure(shared_data, draws=3, seed=1)
    assert returned == measured  # seeded: the same figures twice
    text = "\n".join(printed)
    assert len(printed) == 9
    for key in ("resize_ade20k", "resize_cityscapes"):
        r = measured[key]
        assert 0 < r["differ"] < 0.05
        assert f"{100 * r['differ']:.2f}% of pixels differ" in text
        assert f"{100 * r['ignore']:.2f}% have ignore" in text
    for key in ("cropped_coco", "cropped_ade20k"):
        r = measured[key]
        assert f"{r['removed_per_draw']:.2f} of {r['segments_per_image']:.2f}" in text
        assert f"= {100 * r['fraction']:.2f}%" in text
    r = measured["coco_padding"]
    assert r["images"] == 2 and 0 < r["mean"] <= r["max"] < 0.05
    assert f"adds {100 * r['mean']:.2f}% of the image area on average (max {100 * r['max']:.2f}%)" in text
    assert "long edge <= 14336" in text and "cannot be measured" in text


def test_the_command_refuses_a_missing_folder(tmp_path):
    with pytest.raises(SystemExit):
        deviations.main(["--data-root", str(tmp_path / "absent")])
