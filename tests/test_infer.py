"""Tests of infer.py: §3.4 inference against naive loops and hand-built cases, the resize/crop
pipeline and evaluate() with models whose right answer is known exactly, and the CLI end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import data
import evaluation
import infer
import inference
import maskformer
from inference import general_inference, instance_inference, panoptic_inference, semantic_inference
from machinery import augment, dataset_files, datasets, drawing

REPO = Path(__file__).resolve().parents[1]


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def softmax(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


# ---------------------------------------------------------------- Eq. (3.4b) and Eq. (3.4a)


def test_semantic_inference_equals_naive_loop():
    g = torch.Generator().manual_seed(0)
    B, N, K, h, w = 2, 5, 4, 3, 4
    logits = torch.randn(B, N, K + 1, generator=g) * 2
    masks = torch.randn(B, N, h, w, generator=g) * 3
    scores = semantic_inference(logits, masks)
    assert scores.shape == (B, K, h, w)
    for b in range(B):
        p = [softmax(logits[b, i].tolist()) for i in range(N)]
        for c in range(K):
            for y in range(h):
                for x in range(w):
                    # Eq. (3.4b): Σ_i p_i(c) · m_i[h, w]
                    expected = sum(p[i][c] * sigmoid(masks[b, i, y, x].item()) for i in range(N))
                    assert scores[b, c, y, x].item() == pytest.approx(expected, abs=1e-6)


def naive_general_inference(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    B, N, K1 = logits.shape
    out = torch.empty(B, *masks.shape[-2:], dtype=torch.long)
    for b in range(B):
        p = [softmax(logits[b, i].tolist()) for i in range(N)]
        c = [max(range(K1), key=lambda k, i=i: p[i][k]) for i in range(N)]  # c_i over {1..K, ∅}
        for y in range(masks.shape[-2]):
            for x in range(masks.shape[-1]):
                candidates = [i for i in range(N) if c[i] != K1 - 1]
                if not candidates:
                    out[b, y, x] = -1
                    continue
                best = max(candidates, key=lambda i: p[i][c[i]] * sigmoid(masks[b, i, y, x].item()))
                out[b, y, x] = c[best]
    return out


def test_general_inference_equals_naive_loop():
    g = torch.Generator().manual_seed(1)
    B, N, K, h, w = 3, 6, 4, 5, 4
    logits = torch.randn(B, N, K + 1, generator=g) * 2
    logits[:, :2, K] += 6  # two queries per image are ∅ for sure
    logits[2, :, K] += 20  # image 2: every query is ∅ -> no segment anywhere (-1)
    masks = torch.randn(B, N, h, w, generator=g) * 3
    labels = general_inference(logits, masks)
    assert torch.equal(labels, naive_general_inference(logits, masks))
    assert (labels[2] == -1).all() and (labels[:2] >= 0).all()


# ---------------------------------------------------------------- panoptic inference


def logits_for(classes: list[int], K: int, strength: float = 10.0) -> torch.Tensor:
    """Class logits (N, K+1) whose softmax puts about 1 - 1e-4·K on each query's class (K = ∅)."""
    logits = torch.zeros(len(classes), K + 1)
    logits[torch.arange(len(classes)), torch.tensor(classes)] = strength
    return logits


def test_panoptic_drops_no_object_and_low_confidence_queries():
    K = 3
    logits = logits_for([0, 3, 1], K)  # query 1 is ∅
    logits[2] = torch.tensor([0.0, 1.0, 0.0, 0.0])  # query 2: class 1 with p = e/(e+3) ≈ 0.475
    masks = torch.full((3, 4, 4), -10.0)
    masks[0, :, :2] = masks[1] = masks[2, :, 2:] = 10.0  # query 0: left half; queries 1, 2: right half
    pan_seg, info = panoptic_inference(logits, masks, [True, False, True])
    assert [(s["id"], s["category_id"], s["isthing"], s["area"]) for s in info] == [(1, 0, True, 16)]
    # as in the official code, the argmax runs over kept queries only: the one kept query takes
    # every pixel, even the right half where its mask is ~0 (16 won / 8 own pixels >= 0.8)
    assert (pan_seg == 1).all()
    # the threshold is strict: a score equal to it is dropped, one just above it kept
    p = logits[2].softmax(-1).max().item()
    _, info = panoptic_inference(logits, masks, [True, False, True], object_mask_threshold=p)
    assert [s["category_id"] for s in info] == [0]
    _, info = panoptic_inference(logits, masks, [True, False, True], object_mask_threshold=p - 1e-4)
    assert [s["category_id"] for s in info] == [0, 1]
    assert info[1]["score"] == pytest.approx(p)
    # no query left: an all-void map and no segment
    pan_seg, info = panoptic_inference(logits_for([3, 3], K), masks[:2], [True, False, True])
    assert info == [] and pan_seg.shape == (4, 4) and (pan_seg == 0).all()


def test_panoptic_overlap_threshold_drops_hidden_masks():
    K = 2
    logits = logits_for([0, 1], K)
    logits[1, 1] = 9.0  # query 1 slightly less confident: it loses where both masks are on
    masks = torch.full((2, 1, 10), -10.0)
    masks[0, 0, :6] = 10.0  # query 0: pixels 0-5
    masks[1, 0, 4:] = 10.0  # query 1: pixels 4-9 -> wins 6-9 only: 4 of its 6 pixels
    pan_seg, info = panoptic_inference(logits, masks, [True, True], overlap_threshold=0.8)
    assert [s["category_id"] for s in info] == [0]  # 4 / 6 < 0.8: query 1 dropped ...
    assert pan_seg[0].tolist() == [1] * 6 + [0] * 4  # ... and its pixels become void
    # 4 / 6 = 0.667 is kept at a threshold equal to it (the test is "<", as official)
    pan_seg, info = panoptic_inference(logits, masks, [True, True], overlap_threshold=4 / 6)
    assert [(s["id"], s["category_id"], s["area"]) for s in info] == [(1, 0, 6), (2, 1, 4)]
    assert pan_seg[0].tolist() == [1] * 6 + [2] * 4


def test_panoptic_merges_stuff_and_numbers_things():
    K = 2  # class 0 stuff, class 1 thing
    logits = logits_for([0, 1, 0, 1], K)
    masks = torch.full((4, 2, 8), -10.0)
    for q in range(4):
        masks[q, :, 2 * q : 2 * q + 2] = 10.0  # four disjoint 2x2 blocks
    pan_seg, info = panoptic_inference(logits, masks, [False, True])
    assert [(s["id"], s["category_id"], s["isthing"], s["area"]) for s in info] == [
        (1, 0, False, 8), (2, 1, True, 4), (3, 1, True, 4)]
    assert pan_seg[0].tolist() == [1, 1, 2, 2, 1, 1, 3, 3]  # queries 0 and 2: one stuff segment


def test_panoptic_skips_query_without_own_mask():
    # query 1 wins pixels (its score beats query 0's there) but none of its mask is >= 0.5:
    # the official code gives it no segment, so its pixels stay void
    logits = logits_for([0, 1], 2)
    masks = torch.tensor([[[-10.0, -10.0, 10.0]], [[-1.0, -1.0, -10.0]]])
    pan_seg, info = panoptic_inference(logits, masks, [True, True], overlap_threshold=0.0)
    assert [s["category_id"] for s in info] == [0]
    assert pan_seg[0].tolist() == [0, 0, 1]


def official_panoptic_loop(logits, masks, is_thing, object_mask_threshold, overlap_threshold):
    """MaskFormer's panoptic_inference as the official code writes it: query by query into the map."""
    K = logits.shape[-1] - 1
    scores, labels = logits.softmax(-1).max(-1)
    masks = masks.sigmoid()
    keep = (labels != K) & (scores > object_mask_threshold)
    scores, labels, masks = scores[keep], labels[keep], masks[keep]
    pan_seg = torch.zeros(masks.shape[-2:], dtype=torch.long)
    info, segment_id, stuff_ids = [], 0, {}
    if len(scores) == 0:
        return pan_seg, info
    owner = (scores[:, None, None] * masks).argmax(0)
    for k in range(len(scores)):
        c = int(labels[k])
        mask = owner == k
        area, own_area = int(mask.sum()), int((masks[k] >= 0.5).sum())
        if area > 0 and own_area > 0:
            if area / own_area < overlap_threshold:
                continue
            if not is_thing[c]:
                if c in stuff_ids:
                    pan_seg[mask] = stuff_ids[c]
                    continue
                stuff_ids[c] = segment_id + 1
            segment_id += 1
            pan_seg[mask] = segment_id
            info.append({"id": segment_id, "category_id": c, "isthing": bool(is_thing[c])})
    return pan_seg, info


def test_panoptic_equals_official_loop_on_random_inputs():
    g = torch.Generator().manual_seed(2)
    K, N = 5, 10
    is_thing = [True, False, True, False, True]
    segments = stuff_merges = images_with_drops = 0
    for _ in range(20):
        logits = torch.randn(N, K + 1, generator=g)
        logits[torch.arange(N), torch.randint(0, K + 1, (N,), generator=g)] += 4
        coarse = torch.randn(N, 1, 4, 4, generator=g) * 4
        masks = F.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
        pan_seg, info = panoptic_inference(logits, masks, is_thing, 0.5, 0.15)
        ref_seg, ref_info = official_panoptic_loop(logits, masks, is_thing, 0.5, 0.15)
        assert torch.equal(pan_seg, ref_seg)
        assert [{k: s[k] for k in ("id", "category_id", "isthing")} for s in info] == ref_info
        assert [s["area"] for s in info] == [int((pan_seg == s["id"]).sum()) for s in info]
        # what the case exercised: segments, stuff segments merged from several queries, drops
        scores, classes = logits.softmax(-1).max(-1)
        kept = (scores > 0.5) & (classes != K)
        owner = (scores[kept, None, None] * masks[kept].sigmoid()).argmax(0)
        segments += len(info)
        stuff_merges += sum(len(set(owner[pan_seg == s["id"]].tolist())) > 1 for s in info if not s["isthing"])
        images_with_drops += bool(((pan_seg == 0) & (masks[kept] >= 0).any(0)).any())
    assert segments > 40 and stuff_merges > 3 and images_with_drops > 5


def test_instance_inference():
    logits = logits_for([1, 2, 0], 2)  # query 1 is ∅
    logits[2, 0] = 3.0  # query 2 less confident than query 0
    masks = torch.tensor([[[1.0, -1.0]], [[5.0, 5.0]], [[-2.0, 0.5]]])
    result = instance_inference(logits, masks)
    assert result["labels"].tolist() == [1, 0]
    expected_scores = [max(softmax(logits[q].tolist())) for q in (0, 2)]
    assert result["scores"].tolist() == pytest.approx(expected_scores)
    assert result["masks"].tolist() == [[[True, False]], [[False, True]]]


# ---------------------------------------------------------------- resizing, prediction, evaluation


def test_resize_to_original_crops_the_padding():
    # image 10x14 inside a 16x32 padded input; the padding holds huge values that must not leak
    x = torch.full((2, 16, 32), 1e6)
    x[:, :10, :14] = torch.rand(2, 10, 14)
    out = inference.resize_to_original(x, (16, 32), (10, 14), (25, 35))
    assert out.shape == (2, 25, 35) and out.max() <= 1.0
    # stride-4 input: upsampled to the padded size first (a constant map stays constant)
    out = inference.resize_to_original(torch.full((3, 4, 8), 7.0), (16, 32), (10, 14), (20, 28))
    assert out.shape == (3, 20, 28) and torch.allclose(out, torch.tensor(7.0))


class ColumnModel(torch.nn.Module):
    """A fake model whose right answer is known: image channel 0 is -1 left of a split and +1
    right of it; the model reads it at stride 4 (average pool) as class 1's evidence.
    head "per_pixel": 2 class logits; head "mask_classification": query 0 = class 0 with the
    left mask, query 1 = class 1 with the right mask, query 2 = ∅."""

    def __init__(self, head: str):
        super().__init__()
        self.head = head
        self.config = SimpleNamespace(num_classes=2)
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, images):
        evidence = 5 * F.avg_pool2d(images[:, :1], 4)  # (B, 1, H/4, W/4)
        if self.head == "per_pixel":
            return {"sem_seg_logits": torch.cat([-evidence, evidence], 1)}
        masks = torch.cat([-evidence, evidence, evidence], 1)  # (B, 3, H/4, W/4)
        logits = logits_for([0, 1, 2], 2).expand(len(images), 3, 3)
        return {"pred_logits": logits, "pred_masks": masks}


def column_items(sizes: list[tuple[int, int]], scale: int = 2) -> list[dict]:
    """Evaluation items: image (h, w) split at column w/2, ground truth at (scale·h, scale·w)."""
    items = []
    for h, w in sizes:
        image = torch.zeros(3, h, w)
        image[0, :, : w // 2], image[0, :, w // 2 :] = -1.0, 1.0
        H0, W0 = scale * h, scale * w
        sem = torch.zeros(H0, W0, dtype=torch.long)
        sem[:, W0 // 2 :] = 1
        sem[: H0 // 4, :3] = 255  # some ignored pixels
        pan = torch.where(sem == 1, 2, 1)
        pan[sem == 255] = 0
        orig_image = torch.zeros(H0, W0, 3, dtype=torch.uint8)  # the photo: channel 0 normalises to -1.0 / +1.1
        orig_image[:, : W0 // 2, 0], orig_image[:, W0 // 2 :, 0] = 65, 188
        items.append({"image": image, "sem_seg": torch.zeros(h, w, dtype=torch.long), "orig_image": orig_image,
                      "labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, h, w, dtype=torch.bool),
                      "orig_size": (H0, W0), "orig_sem_seg": sem, "orig_pan_seg": pan,
                      "segments_info": [{"id": 1, "category_id": 0, "iscrowd": 0},
                                        {"id": 2, "category_id": 1, "iscrowd": 0}]})
    return items


class ItemList(list):
    is_thing = [False, False]
    ignore_index = 255


@pytest.mark.parametrize("head", ["per_pixel", "mask_classification"])
def test_evaluate_is_exact_on_a_model_with_a_known_answer(head):
    # split columns are multiples of 4 and the batch pads 72 -> 96 and 50 -> 64 (and 40 -> 64):
    # only an exact upsample -> crop -> resize chain puts the boundary back at the right column
    dataset = ItemList(column_items([(50, 72), (40, 56), (33, 40)]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=data.collate)
    model = ColumnModel(head).train()
    result = evaluation.evaluate(model, loader, "semantic", progress=False)
    assert result["mIoU"] == 1.0 and result["pixel_acc"] == 1.0 and result["num_images"] == 3
    assert model.training  # the mode is restored
    if head == "mask_classification":
        pq = evaluation.evaluate(model, loader, "panoptic", progress=False)
        assert (pq["PQ"], pq["SQ"], pq["RQ"], pq["n"]) == (1.0, 1.0, 1.0, 2)
    # multi-scale + flip: most versions are exact; a forgotten flip-back would average to noise
    tta = evaluation.evaluate(model, loader, "semantic", tta=True, progress=False)
    assert tta["mIoU"] > 0.97


def test_evaluate_real_tiny_models_on_shapes():
    torch.manual_seed(0)
    dataset = datasets.build_dataset("shapes", split="val", image_size=64, num_images=2)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=data.collate)
    for head in ("mask_classification", "per_pixel", "per_pixel_plus"):
        model = maskformer.build_model("tiny", num_classes=dataset.num_classes, head=head)
        result = evaluation.evaluate(model, loader, "semantic", max_batches=1, progress=False)
        assert 0.0 <= result["mIoU"] <= 1.0 and len(result["per_class_iou"]) == dataset.num_classes
    with pytest.raises(ValueError, match="mask-classification"):
        evaluation.evaluate(model, loader, "panoptic", is_thing=dataset.is_thing, progress=False)


# ---------------------------------------------------------------- drawing


def test_draw_overlay_blends_and_lists_present_classes():
    image = np.full((20, 30, 3), 100, np.uint8)
    labels = np.zeros((20, 30), np.int64)
    labels[:, 15:] = 2
    labels[0, 0] = 255  # unknown label: left as is
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)
    canvas = np.asarray(drawing.draw_overlay(image, labels, ["a", "b", "c"], palette, alpha=0.5))
    assert canvas.shape[0] >= 20 and canvas.shape[1] > 30  # a legend panel on the right
    assert canvas[5, 20].tolist() == [50, 178, 50]  # 0.5·100 + 0.5·(0, 255, 0), rounded
    assert canvas[0, 0].tolist() == [100, 100, 100]


# ---------------------------------------------------------------- the command line


def ade_photo(shared_data: Path) -> Path:
    return shared_data / "ADEChallengeData2016" / "images" / "validation" / "ADE_val_00000001.jpg"


def test_cli_semantic_end_to_end_on_a_real_photo(shared_data, tmp_path):
    photo = ade_photo(shared_data)
    torch.manual_seed(0)
    infer.main(["--config", "tiny", "--random-init", "--input", str(photo), "--output", str(tmp_path),
                "--data", "ade20k", "--device", "cpu", "--size", "160"])
    labels = np.asarray(Image.open(tmp_path / f"{photo.stem}.png"))
    width, height = Image.open(photo).size
    assert labels.shape == (height, width) and labels.dtype == np.uint8 and labels.max() < 150
    overlay = Image.open(tmp_path / f"{photo.stem}_overlay.png")
    assert overlay.size[0] > width and overlay.size[1] >= height


def test_cli_panoptic_and_saved_checkpoint(shared_data, tmp_path):
    coco = shared_data / "coco_panoptic"
    photo = coco / "val2017" / "000000439180.jpg"
    torch.manual_seed(0)
    model = maskformer.build_model("tiny", num_classes=133).eval()
    checkpoint = tmp_path / "tiny.pt"
    names = [f"category {k}" for k in range(133)]
    torch.save({"model": model.state_dict(), "config": asdict(model.config), "class_names": names}, checkpoint)
    out = tmp_path / "out"
    infer.main(["--weights", str(checkpoint), "--input", str(photo), "--output", str(out), "--task", "panoptic",
                "--data", "coco_panoptic", "--data-root", str(coco), "--size", "128",
                "--object-mask-threshold", "0.0", "--overlap-threshold", "0.0"])
    rgb = np.asarray(Image.open(out / f"{photo.stem}_panoptic.png")).astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]
    info = json.loads((out / f"{photo.stem}_panoptic.json").read_text())["segments_info"]
    assert set(np.unique(ids)) - {0} == {s["id"] for s in info} and info
    assert all(s["category_name"] for s in info) and all(s["area"] == (ids == s["id"]).sum() for s in info)
    # the checkpoint's weights were really used: the same model in-process predicts the same map
    image = data.read_image(photo)
    resized, _ = augment.resize(image, {}, augment.shortest_edge_size(*image.shape[:2], 128, 2048))
    dataset = datasets.build_dataset("coco_panoptic", coco, split="val")
    expected, _ = inference.predict_panoptic(model, data.normalize(resized)[None], dataset.is_thing,
                                         orig_sizes=[image.shape[:2]], object_mask_threshold=0.0,
                                         overlap_threshold=0.0)[0]
    assert np.array_equal(ids, expected.numpy())
    # without --data the class names come from the checkpoint (tooling/convert.py writes them)
    infer.main(["--weights", str(checkpoint), "--input", str(photo), "--output", str(out / "plain"), "--task",
                "panoptic", "--size", "128", "--object-mask-threshold", "0.0"])
    info = json.loads((out / "plain" / f"{photo.stem}_panoptic.json").read_text())["segments_info"]
    assert info and all(s["category_name"] == names[s["category_id"]] for s in info)


def error_of(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        infer.main(argv)
    assert exit_info.value.code != 0
    message = exit_info.value.code if isinstance(exit_info.value.code, str) else capsys.readouterr().err
    return message.strip().splitlines()[-1]


def test_cli_clear_errors(tmp_path, capsys):
    base = ["--output", str(tmp_path / "out"), "--device", "cpu"]
    message = error_of(["--config", "tiny", "--random-init", "--input", str(tmp_path / "nope.jpg"), *base], capsys)
    assert "--input" in message and "no such file" in message
    (tmp_path / "empty").mkdir()
    message = error_of(["--config", "tiny", "--random-init", "--input", str(tmp_path / "empty"), *base], capsys)
    assert "holds no images" in message
    message = error_of(["--config", "tiny_xl", "--random-init", "--input", str(tmp_path), *base], capsys)
    assert "--config" in message and "invalid choice" in message and "tiny" in message
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    message = error_of(["--config", "tiny", "--input", str(tmp_path / "photo.png"), *base], capsys)
    assert "--weights is required" in message
    message = error_of(["--weights", str(tmp_path / "none.pt"), "--input", str(tmp_path / "photo.png"), *base], capsys)
    assert "--weights" in message and "no such file" in message
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    message = error_of(["--weights", str(tmp_path / "garbage.pt"), "--input", str(tmp_path / "photo.png"), *base],
                       capsys)
    assert "garbage.pt: cannot read it as a weights-only checkpoint" in message


def test_cli_weights_of_another_architecture(tmp_path, capsys, shared_data):
    photo = ade_photo(shared_data)
    # a per-pixel baseline checkpoint loaded as a MaskFormer: missing and unexpected keys
    per_pixel = maskformer.build_model("tiny", head="per_pixel")
    torch.save({"model": per_pixel.state_dict(), "config": asdict(per_pixel.config)}, tmp_path / "pp.pt")
    message = error_of(["--weights", str(tmp_path / "pp.pt"), "--config", "tiny", "--input", str(photo),
                        "--output", str(tmp_path)], capsys)
    assert "does not fit --config tiny" in message and "missing (e.g." in message and "unexpected (e.g." in message
    # another width: shape mismatches
    wide = maskformer.build_model("tiny", hidden_dim=128)
    torch.save({"model": wide.state_dict(), "config": asdict(wide.config)}, tmp_path / "wide.pt")
    message = error_of(["--weights", str(tmp_path / "wide.pt"), "--config", "tiny", "--input", str(photo),
                        "--output", str(tmp_path)], capsys)
    assert "shape-mismatched (e.g." in message and "(128" in message
    # in a real process: one line on stderr, no traceback
    run = subprocess.run([sys.executable, str(REPO / "infer.py"), "--weights", str(tmp_path / "pp.pt"),
                          "--config", "tiny", "--input", str(photo), "--output", str(tmp_path)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "does not fit" in run.stderr


def test_cli_eval_on_real_ade20k_samples(shared_data, tmp_path, capsys):
    torch.manual_seed(0)
    results = infer.main(["--eval", "--data", "ade20k", "--data-root", str(shared_data), "--config", "tiny",
                          "--random-init", "--output", str(tmp_path), "--workers", "0", "--max-batches", "2",
                          "--device", "cpu"])
    printed = capsys.readouterr().out
    assert results["num_images"] == 2 and f"mIoU {100 * results['mIoU']:.2f}" in printed
    saved = json.loads((tmp_path / "eval_semantic.json").read_text())
    assert saved["mIoU"] == pytest.approx(results["mIoU"])
    assert [row["class"] for row in saved["per_class"]] == dataset_files.official_classes("ade20k")[0]
    csv_lines = (tmp_path / "eval_semantic_per_class.csv").read_text().splitlines()
    assert csv_lines[0] == "class,IoU,Acc,PQ_St" and len(csv_lines) == 151
    assert f"PQ_St {100 * results['PQ_St']:.2f}" in printed and saved["PQ_St"] == pytest.approx(results["PQ_St"])
