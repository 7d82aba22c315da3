"""One number per checkpoint: `infer.py --eval` reproduces train.py's validation (same function, same
test resize), and takes the test resize from the checkpoint, e.g. 640 for Swin-B/L on ADE20K."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict

import numpy as np
import pytest
import torch

import evaluation
import infer
import inference
import maskformer
import train
from machinery import datasets
from machinery.checkpoint import read_checkpoint, save_checkpoint
from metrics import SemanticMetrics
from tooling import training_speed


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny model trained 3 iterations on an ADE20K-layout folder with a 96 crop (recipe default 512)."""
    tmp = tmp_path_factory.mktemp("eval")
    root = training_speed.write_ade_like_fixture(tmp / "ade", num_images=4, size=(120, 160))
    out = tmp / "run"
    metrics = train.train(train.parse_args([
        "--data", "ade20k", "--data-root", str(root), "--config", "tiny", "--crop-size", "96", "--batch-size", "2",
        "--iters", "3", "--eval-period", "3", "--workers", "0", "--no-progress", "--threads", "1",
        "--output", str(out)]))
    return root, out, metrics


def run_eval(capsys, root, weights, out, *flags) -> tuple[dict, str, dict]:
    results = infer.main(["--eval", "--data", "ade20k", "--data-root", str(root), "--weights", str(weights),
                          "--workers", "0", "--output", str(out), *flags])
    printed = capsys.readouterr().out
    return results, printed, json.loads((out / "eval_semantic.json").read_text())


def test_eval_reproduces_the_validation_the_run_logged(tiny_run, capsys, tmp_path):
    root, run, logged = tiny_run
    checkpoint = read_checkpoint(run / "last.pt")
    assert (checkpoint["recipe"]["test_size"], checkpoint["recipe"]["test_max_size"]) == (96, 384)
    results, printed, report = run_eval(capsys, root, run / "last.pt", tmp_path / "a")
    assert printed.splitlines()[0] == "test resize: short edge 96, long edge <= 384 (from the checkpoint's recipe)"
    assert (report["test_size"], report["test_max_size"], report["tta"]) == (96, 384, False)
    # the very same number as the run's last validation (final_metrics.json, the log line)
    assert results["mIoU"] == logged["mIoU"] == json.loads((run / "final_metrics.json").read_text())["mIoU"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_mIoU"] for r in records if "val_mIoU" in r] == [logged["mIoU"]]
    assert re.search(rf"mIoU {100 * logged['mIoU']:.2f}\b", printed)
    # PQ^St beside mIoU (Tables 1, 2, 4): printed, in the JSON, in final_metrics.json and metrics.jsonl
    assert results["PQ_St"] == logged["PQ_St"] == report["PQ_St"]
    assert json.loads((run / "final_metrics.json").read_text())["PQ_St"] == logged["PQ_St"]
    assert [r["val_PQ_St"] for r in records if "val_PQ_St" in r] == [logged["PQ_St"]]
    assert re.search(rf"PQ_St {100 * logged['PQ_St']:.2f}\b", printed)


def test_size_flag_changes_the_evaluation_and_is_recorded(tiny_run, capsys, tmp_path):
    root, run, logged = tiny_run
    results, printed, report = run_eval(capsys, root, run / "last.pt", tmp_path / "c", "--size", "200")
    assert printed.splitlines()[0] == "test resize: short edge 200, long edge <= 384 (from --size / --max-size)"
    assert (report["test_size"], report["test_max_size"]) == (200, 384)
    # 120 x 160 photos: at 96 the long edge is 128, at 200 it is capped by 384 -> 200 x 267: another input
    assert results["mIoU"] != logged["mIoU"]
    # and directly through the shared functions: the dataset items are at the size asked for
    dataset = evaluation.evaluation_dataset("ade20k", root, "semantic", (200, 384))
    assert tuple(dataset[0]["image"].shape[-2:]) == (200, 267)


def test_resolution_order_by_hand():
    r50, swin_b = maskformer.CONFIGS["r50"], maskformer.CONFIGS["swin_b"]
    coco = maskformer.MaskFormerConfig(**{**asdict(r50), "num_classes": 133})
    def resolve(data_name, config, checkpoint, **sizes):
        return datasets.test_resize(data_name, config=asdict(config), checkpoint=checkpoint, **sizes)

    assert resolve("ade20k", r50, None) == (512, 2048, "the ade20k recipe")
    assert resolve("ade20k", swin_b, None)[:2] == (640, 2560)  # Swin-B/L train and test at 640
    assert resolve("cityscapes", r50, None)[:2] == (1024, 2048)
    assert resolve(None, coco, None)[:2] == (800, 1333)  # a published COCO model, no --data
    assert resolve(None, r50, {"recipe": {"test_size": 300, "test_max_size": 900}}, max_size=700) == \
        (300, 700, "--size / --max-size")
    assert resolve(None, r50, None) == (512, 2048, "the model's official test size")  # ADE20K-150, R50
    seven = maskformer.MaskFormerConfig(**{**asdict(r50), "num_classes": 7})
    assert resolve(None, seven, None) == (512, 2048, "the default")  # no published model has 7 classes
    assert resolve("shapes", r50, None) == (128, 512, "the shapes recipe")
    assert datasets.published_recipe(asdict(coco)) == {"test_size": 800, "test_max_size": 1333}
    assert datasets.published_recipe({**asdict(swin_b), "num_classes": 150}) == \
        {"test_size": 640, "test_max_size": 2560}
    assert datasets.published_recipe({**asdict(r50), "num_classes": 7}) is None


def test_a_swin_b_ade20k_checkpoint_evaluates_at_640_without_flags(tmp_path, capsys):
    """A random Swin-B model saved as tooling/convert.py saves a converted ADE20K model (recipe included)."""
    root = training_speed.write_ade_like_fixture(tmp_path / "ade", num_images=1, size=(40, 40))
    torch.manual_seed(0)
    model = maskformer.build_model("swin_b", num_classes=150)
    config = asdict(model.config)
    save_checkpoint(tmp_path / "swin_b.pt", {"model": model.state_dict(), "config": config,
                                             "recipe": datasets.published_recipe(config)})
    del model
    results, printed, report = run_eval(capsys, root, tmp_path / "swin_b.pt", tmp_path / "out", "--max-batches", "1")
    assert printed.splitlines()[0] == "test resize: short edge 640, long edge <= 2560 (from the checkpoint's recipe)"
    assert (report["test_size"], report["test_max_size"], report["num_images"]) == (640, 2560, 1)


def test_eval_reproduces_a_panoptic_run_pq(shared_data, tmp_path, capsys):
    """A tiny panoptic run on the COCO panoptic samples (its 2 validation images serve as training set
    too): `infer.py --eval --task panoptic` prints the PQ the run logged, at COCO's 800 / 1333. Then,
    with a class head made confident (so that segments are predicted and counted), `--eval` and the
    run's own validation (train.py's builders, evaluation.validate) count the same TP / FP / FN."""
    coco = shared_data / "coco_panoptic"
    if not (coco / "annotations" / "panoptic_val2017.json").is_file():
        pytest.skip(f"the COCO panoptic samples are not in {coco}")
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (root / f"{split}2017").symlink_to(coco / "val2017")
        (root / "annotations" / f"panoptic_{split}2017").symlink_to(coco / "annotations" / "panoptic_val2017")
        (root / "annotations" / f"panoptic_{split}2017.json").symlink_to(coco / "annotations" / "panoptic_val2017.json")
    run = tmp_path / "run"
    argv = ["--data", "coco_panoptic", "--data-root", str(root), "--config", "tiny", "--batch-size", "2",
            "--iters", "2", "--workers", "0", "--no-progress", "--threads", "1", "--output", str(run)]
    logged = train.train(train.parse_args(argv))
    capsys.readouterr()

    def run_eval(weights, out):
        results = infer.main(["--eval", "--data", "coco_panoptic", "--data-root", str(root), "--task", "panoptic",
                              "--weights", str(weights), "--workers", "0", "--output", str(out)])
        return results, capsys.readouterr().out

    results, printed = run_eval(run / "last.pt", tmp_path / "out")
    assert printed.splitlines()[0] == "test resize: short edge 800, long edge <= 1333 (from the checkpoint's recipe)"
    assert results["PQ"] == logged["PQ"] and results["num_images"] == 2
    assert re.search(rf"PQ {100 * logged['PQ']:.2f}\b", printed)

    checkpoint = read_checkpoint(run / "last.pt")
    bias = checkpoint["model"]["class_head.bias"]
    bias[0] += 30.0  # every query: class 0 ("person", a thing) with p ~ 1 > 0.8
    save_checkpoint(tmp_path / "confident.pt", checkpoint)
    results, _ = run_eval(tmp_path / "confident.pt", tmp_path / "out2")
    args = train.parse_args(argv)
    recipe = train.resolve_recipe(args)
    model, _ = train.build_model_and_criterion(args, recipe, 133)
    model.load_state_dict(checkpoint["model"])
    val_set = train.build_datasets(args, recipe)[1]
    expected = evaluation.validate(model, evaluation.build_val_loader(val_set, args), "panoptic",
                                   torch.device("cpu"), None, "coco_panoptic")
    assert sum(c["FP"] + c["TP"] for c in expected["per_class"]) > 0  # segments were predicted
    assert [(c["TP"], c["FP"], c["FN"]) for c in results["per_class"]] == \
        [(c["TP"], c["FP"], c["FN"]) for c in expected["per_class"]]
    assert results["PQ"] == expected["PQ"]


class StrideFourModel(torch.nn.Module):
    """A stand-in for MaskFormer's outputs that follow the image: stride-4 maps from a 1x1 conv of the
    4 x 4-pooled pixels (N mask logits and fixed class logits, or K per-pixel logits)."""

    def __init__(self, head: str, num_queries: int = 6, num_classes: int = 5):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.head = head
        self.maps = torch.nn.Conv2d(3, num_classes if head == "per_pixel" else num_queries, 1)
        with torch.no_grad():
            self.maps.weight.copy_(3 * torch.randn(self.maps.weight.shape, generator=generator))
        self.class_logits = torch.nn.Parameter(3 * torch.randn(num_queries, num_classes + 1, generator=generator))

    def forward(self, images):
        maps = self.maps(torch.nn.functional.avg_pool2d(images, 4))  # (B, C, H/4, W/4)
        if self.head == "per_pixel":
            return {"sem_seg_logits": maps}
        return {"pred_masks": maps, "pred_logits": self.class_logits.expand(len(images), -1, -1)}


@pytest.mark.parametrize("head", ["mask_classification", "per_pixel"])
def test_tta_semantic_map_in_bands_equals_the_whole_argmax(head):
    """The multi-scale map a band of rows at a time (one row, five rows, the whole image at once) against
    inference.tta_class_scores(...).argmax(0), which holds every score at the original size; on an image of
    smooth colour blobs, so that the labels vary over it."""

    model = StrideFourModel(head)
    noise = torch.randn(1, 3, 9, 12, generator=torch.Generator().manual_seed(1))
    smooth = torch.nn.functional.interpolate(noise, size=(70, 93), mode="bicubic", align_corners=False)[0]
    image = (smooth.permute(1, 2, 0) * 60 + 128).clamp(0, 255).to(torch.uint8).numpy()  # (70, 93, 3)
    scales = (0.5, 1.0, 1.5)
    expected = inference.tta_class_scores(model, image, 64, 448, scales=scales).argmax(0)  # (70, 93)
    assert len(expected.unique()) >= 3
    for max_values in (1, 5 * 93 * 5, 2**26):  # rows per band: 1, 5, all 70
        labels = inference.tta_semantic_map(model, image, 64, 448, scales=scales, max_values=max_values)
        assert torch.equal(labels, expected), max_values


def naive_pq_st(pairs: list[tuple[np.ndarray, np.ndarray]], num_classes: int, ignore_index: int) -> float:
    """PQ^St re-implemented from the official tools/evaluate_pq_for_semantic_segmentation.py, one image and
    one class at a time: each class present is one stuff segment; match if IoU > 0.5 with the predicted
    segment's void pixels out of the union; an unmatched prediction more than half on void is no FP."""
    tp, fp, fn, iou_sum = (np.zeros(num_classes) for _ in range(4))
    for pred, gt in pairs:
        void = gt == ignore_index
        for c in range(num_classes):
            g, p = gt == c, pred == c
            if not g.any() and not p.any():
                continue
            inter, union = (g & p).sum(), (g | p).sum() - (p & void).sum()
            if g.any() and p.any() and inter / union > 0.5:
                tp[c], iou_sum[c] = tp[c] + 1, iou_sum[c] + inter / union
                continue
            fn[c] += g.any()
            fp[c] += p.any() and (p & void).sum() / p.sum() <= 0.5
    counted = tp + fp + fn > 0
    return float(np.mean(iou_sum[counted] / (tp + fp / 2 + fn / 2)[counted]))


def test_eval_pq_st_equals_an_independent_computation(tiny_run, capsys, tmp_path, monkeypatch):
    """`infer.py --eval`'s printed and JSON PQ^St against `naive_pq_st` and a fresh SemanticMetrics on the
    very predictions it scored: the ground truth with its right half replaced by the model's prediction
    (so that some classes match and some do not), and ignore pixels predicted as class 0."""
    root, run, _ = tiny_run
    real = inference.predict_semantic
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    dataset = evaluation.evaluation_dataset("ade20k", root, "semantic", (96, 384))
    truths = [dataset[i]["orig_sem_seg"] for i in range(len(dataset))]

    def half_truth(model, images, image_sizes, orig_sizes, amp_dtype):
        preds = []
        for pred in real(model, images, image_sizes, orig_sizes, amp_dtype):
            truth = truths[len(pairs)]
            mixed = torch.where(truth == 255, 0, truth)  # (H0, W0)
            mixed[:, truth.shape[1] // 2:] = pred[:, truth.shape[1] // 2:]
            pairs.append((mixed.numpy(), truth.numpy()))
            preds.append(mixed)
        return preds

    monkeypatch.setattr(inference, "predict_semantic", half_truth)
    results, printed, report = run_eval(capsys, root, run / "last.pt", tmp_path / "d", "--batch-size", "1")
    assert len(pairs) == len(dataset) == results["num_images"]
    assert any((gt == 255).any() for _, gt in pairs)  # the ignore rule is exercised
    expected = naive_pq_st(pairs, 150, 255)
    assert 0.0 < expected < 1.0
    assert results["PQ_St"] == pytest.approx(expected, abs=1e-12) and report["PQ_St"] == results["PQ_St"]
    assert re.search(rf"PQ_St {100 * expected:.2f}\b", printed)
    fresh = SemanticMetrics(150, 255)
    for pred, gt in pairs:
        fresh.update(torch.from_numpy(pred), torch.from_numpy(gt))
    assert fresh.compute()["PQ_St"] == results["PQ_St"] and fresh.compute()["mIoU"] == results["mIoU"]
    per_class = [math.nan if row["PQ_St"] is None else row["PQ_St"] for row in report["per_class"]]  # JSON: nan -> null
    assert per_class == pytest.approx(fresh.compute()["per_class_pq"], nan_ok=True)


def test_validation_logs_every_headline_figure(monkeypatch, tmp_path):
    """validate_at's log line: mIoU and PQ^St for a semantic validation; PQ, then mIoU where the panoptic
    evaluation scored the semantic labels (ADE20K-Panoptic); PQ alone otherwise (COCO)."""
    cases = [("semantic", {"mIoU": 0.5, "PQ_St": 0.25}, "mIoU = 50.00, PQ_St = 25.00"),
             ("panoptic", {"PQ": 0.125, "mIoU": 0.75}, "PQ = 12.50, mIoU = 75.00"),
             ("panoptic", {"PQ": 0.125}, "PQ = 12.50")]
    for task, figures, expected in cases:
        monkeypatch.setattr(evaluation, "validate", lambda *args, figures=figures: dict(figures))
        lines: list[str] = []
        assert evaluation.validate_at(7, tmp_path, None, None, task, "cpu", None, None, lines.append) == figures
        assert lines == [f"step 7: validation {expected}"]
        assert evaluation.headline(task, figures) == list(figures)
