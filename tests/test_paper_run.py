"""`python train.py --data NAME` is the paper's run: the official recipe's details, each against the
value or behaviour of the official code (facebookresearch/MaskFormer configs and mappers)."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import data
import infer
import inference
import losses
import maskformer
import train
from machinery import augment, datasets, weights
from machinery.checkpoint import read_checkpoint
from metrics import SemanticMetrics
from tests.test_convert import microsoft_swin_layout, torchvision_resnet_layout


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


# ---------------------------------------------------------------------------------------------
# Item: the pixel decoder per backbone for the panoptic recipes
# ---------------------------------------------------------------------------------------------
# configs/coco-panoptic/*.yaml: R50/R101 use PIXEL_DECODER_NAME "TransformerEncoderPixelDecoder" with
# TRANSFORMER_ENC_LAYERS 6 (TRANSFORMER_IN_FEATURE "transformer_encoder"); the swin/*.yaml files set
# "BasePixelDecoder" with TRANSFORMER_IN_FEATURE "res5" (no encoder layers).
OFFICIAL_COCO_PANOPTIC_ENC_LAYERS = {"r50": 6, "r101": 6, "swin_t": 0, "swin_s": 0, "swin_b": 0, "swin_l": 0}


@pytest.mark.parametrize("config", sorted(OFFICIAL_COCO_PANOPTIC_ENC_LAYERS))
def test_panoptic_pixel_decoder_per_backbone_as_the_official_configs(config):
    enc_layers = OFFICIAL_COCO_PANOPTIC_ENC_LAYERS[config]
    for dataset in ("coco_panoptic", "ade20k_panoptic"):  # ADE20K-Panoptic: R50/R101 + 6 encoder layers too
        recipe = train.resolve_recipe(train.parse_args(["--data", dataset, "--config", config]))
        with torch.device("meta"):
            model = maskformer.build_model(config, num_classes=133, **recipe.model_overrides)
        assert model.config.enc_layers == enc_layers
        encoder = [n for n, _ in model.named_parameters() if n.startswith("pixel_decoder.encoder_layers")]
        assert bool(encoder) == (enc_layers > 0)
        # the transformer decoder attends to the 256-wide encoder output, or to res5 through a projection
        projection = model.transformer.input_proj
        if enc_layers:
            assert isinstance(projection, torch.nn.Identity)
        else:
            assert projection.in_channels == model.backbone.out_channels["res5"] and projection.out_channels == 256
    assert train.resolve_recipe(train.parse_args(["--data", "ade20k", "--config", config])).model_overrides == {}


# ---------------------------------------------------------------------------------------------
# Item: gradient accumulation normalises by the accumulated batch's mask count
# ---------------------------------------------------------------------------------------------
def test_two_accumulation_steps_equal_one_big_batch_and_the_hand_normalisation():
    """Official (8 GPUs x 2 images): the focal and dice sums of the whole batch / its mask count. Two
    micro-batches of 2 must give the loss and gradients of one batch of 4: the mask terms over the
    step's mask count, the cross-entropy over the step's class-weight sum (1 per matched query, 0.1 per
    ∅ query; DDP does the same across processes), both worked out here by hand."""
    shapes = datasets.build_dataset("shapes", split="train", image_size=64, num_images=4)
    items = [shapes[i] for i in range(4)]
    halves, big = [data.collate(items[:2]), data.collate(items[2:])], data.collate(items)
    counts = [sum(len(t["labels"]) for t in h["targets"]) for h in halves]
    assert counts[0] != counts[1]  # otherwise per-micro-batch and global normalisation agree
    torch.manual_seed(0)
    model = maskformer.build_model("tiny", num_classes=shapes.num_classes).eval()  # eval: batch-independent BN
    N = model.config.num_queries
    criterion = losses.MaskFormerLoss(shapes.num_classes, num_aux_layers=model.config.dec_layers - 1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    # by hand: raw sums of every term (normalisers 1) over both halves, divided by the step's totals
    masks_total = sum(counts)
    weights_total = sum(len(t["labels"]) + 0.1 * (N - len(t["labels"])) for t in big["targets"])
    by_hand, per_micro_batch = 0.0, 0.0  # the second: each half over its own counts (the old way)
    for half, count in zip(halves, counts):
        raw = criterion(model(half["images"]), {**half, "num_masks": torch.tensor(1.0),
                                                "class_weight_sum": torch.tensor(1.0)})
        half_weights = sum(len(t["labels"]) + 0.1 * (N - len(t["labels"])) for t in half["targets"])
        for key, value in raw.items():
            ce = key.startswith("loss_ce")
            by_hand += criterion.weight_dict[key] * float(value.detach()) / (weights_total if ce else masks_total)
            per_micro_batch += criterion.weight_dict[key] * float(value.detach()) / (half_weights if ce else count) / 2
    # the reference gradient: one batch of the four images
    terms = criterion(model(big["images"]), big)
    big_loss = sum(criterion.weight_dict[k] * v for k, v in terms.items())
    big_loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    assert math.isclose(float(big_loss.detach()), by_hand, rel_tol=1e-5)

    # train_step with two accumulation steps; SGD with lr 1: parameter change = -gradient
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    settings = train.StepSettings(2, torch.device("cpu"), None, 0.0, num_queries=N)
    stats = train.train_step(model, iter(halves), criterion, optimizer, torch.amp.GradScaler("cpu", enabled=False),
                             settings)
    assert math.isclose(stats["loss"], by_hand, rel_tol=1e-5)
    # the old normalisation is 60x further away than that tolerance
    assert abs(stats["loss"] - per_micro_batch) > 60 * 1e-5 * stats["loss"]
    for name, p in model.named_parameters():
        torch.testing.assert_close(before[name] - p.detach(), expected[name], rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------
# Item: mIoU as the paper's evaluator counted it
# ---------------------------------------------------------------------------------------------
def test_miou_is_the_detectron2_of_the_paper_on_a_case_where_definitions_differ():
    """detectron2 v0.4-v0.6 (2021, the MaskFormer paper's numbers), SemSegEvaluator.evaluate:
        iou[acc_valid] = tp / union;  miou = sum(iou[acc_valid]) / sum(iou_valid)
    with acc_valid = "class in the ground truth", iou_valid = "in ground truth or prediction": a class
    only predicted adds 0 to the sum and 1 to the count. (detectron2 since July 2022, commit f3c1bc1,
    divides by the classes with ground truth only.) Written out here with numpy, as it was."""
    K = 3
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[0, 2, 1, 1], [0, 0, 2, 2]])  # class 2: predicted, absent from the ground truth
    conf = np.zeros((K + 1, K + 1), np.int64)  # detectron2: rows = prediction, columns = ground truth
    p = np.where(gt == 255, K, pred)
    g = np.where(gt == 255, K, gt)
    conf += np.bincount((K + 1) * p.reshape(-1) + g.reshape(-1), minlength=(K + 1) ** 2).reshape(K + 1, K + 1)
    tp = conf.diagonal()[:-1].astype(float)
    pos_gt = conf[:-1, :-1].sum(0).astype(float)
    pos_pred = conf[:-1, :-1].sum(1).astype(float)
    acc_valid, iou_valid = pos_gt > 0, (pos_gt + pos_pred) > 0
    iou = np.full(K, np.nan)
    iou[acc_valid] = tp[acc_valid] / (pos_gt + pos_pred - tp)[acc_valid]
    paper_miou = np.sum(iou[acc_valid]) / np.sum(iou_valid)
    gt_only_miou = np.mean(iou[acc_valid])
    metric = SemanticMetrics(K)
    metric.update(torch.tensor(pred), torch.tensor(gt))
    ours = metric.compute()["mIoU"]
    assert abs(paper_miou - gt_only_miou) > 0.1  # the two definitions differ here: (3/4 + 2/3) / 3 vs / 2
    assert math.isclose(ours, paper_miou, rel_tol=1e-12)
    assert math.isclose(ours, (3 / 4 + 2 / 3 + 0) / 3, rel_tol=1e-12)  # by hand: IoU 3/4, 2/3, 0


# ---------------------------------------------------------------------------------------------
# Item: multi-scale test on the original image
# ---------------------------------------------------------------------------------------------
def test_tta_resizes_the_original_image_per_scale_by_hand():
    torch.manual_seed(0)
    model = maskformer.build_model("tiny", num_classes=5).eval()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 150, 3), dtype=np.uint8)  # wide: the largest scales hit the cap
    test_size, max_size = 40, 7 * 40  # the official ratio: ADE20K 512 -> TEST.AUG.MAX_SIZE 3584
    got = inference.tta_class_scores(model, image, test_size, max_size)

    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    total, capped = torch.zeros(5, 30, 150), False
    for scale in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75):
        h, w = official_resize(30, 150, int(scale * test_size), max_size)
        capped |= w == max_size
        resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR), np.float64)  # from the original
        x = torch.tensor(((resized - mean) / std).transpose(2, 0, 1), dtype=torch.float32)
        Hp, Wp = -(-h // 32) * 32, -(-w // 32) * 32
        for flip in (False, True):
            padded = torch.zeros(1, 3, Hp, Wp)
            padded[0, :, :h, :w] = x.flip(-1) if flip else x
            with torch.no_grad():
                out = model(padded)
            masks = F.interpolate(out["pred_masks"], size=(Hp, Wp), mode="bilinear", align_corners=False)
            probs = out["pred_logits"].softmax(-1)[0, :, :-1]  # (N, K)
            scores = torch.einsum("nk,nhw->khw", probs, masks[0].sigmoid())[:, :h, :w]  # Eq. (3.4b), crop
            scores = F.interpolate(scores[None], size=(30, 150), mode="bilinear", align_corners=False)[0]
            total += scores.flip(-1) if flip else scores
    assert capped
    torch.testing.assert_close(got, total / 12, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# The full-scale run on CPU: the ADE20K recipe with paper configs, 2 iterations, then inference
# ---------------------------------------------------------------------------------------------
def official_imagenet_file(backbone: str) -> tuple[str, dict]:
    """(file name, contents) of a random ImageNet classifier in its publisher's format (torchvision's
    resnet50-<sha>.pth, Microsoft's swin_tiny_patch4_window7_224.pth), scaled like trained weights
    (He-scaled convolutions and linears, unit norms) so that activations stay finite."""
    g = torch.Generator().manual_seed(0)
    if backbone == "resnet50":
        state, name = torchvision_resnet_layout(True, [3, 4, 6, 3]), "resnet50-{}.pth"
    else:
        state, name = microsoft_swin_layout(96, [2, 2, 6, 2], [3, 6, 12, 24], 7), "swin_tiny_patch4_window7_224.pth"
    tensors = state.get("model", state)
    for key, t in tensors.items():
        if not t.is_floating_point() or key.endswith("running_var"):
            continue
        if t.dim() >= 2 and "relative_position_bias_table" not in key:
            t.copy_(torch.randn(t.shape, generator=g) * math.sqrt(2 / t[0].numel()))
        elif key.endswith("weight"):  # norms: 1, the last BN of each bottleneck 0.2 (a tame residual sum)
            t.fill_(0.2 if ".bn3." in key else 1.0)
        else:  # biases, BN means, relative-position tables
            t.copy_(0.02 * torch.randn(t.shape, generator=g))
    return name, state


def ade20k_root(shared_data):
    root = shared_data / "ADEChallengeData2016"
    if not (root / "images" / "training").is_dir():
        pytest.skip(f"the ADE20K samples are not in {shared_data} (ADEChallengeData2016/images/training)")
    return root


@pytest.mark.parametrize("config", ["r50", pytest.param("swin_t", marks=pytest.mark.slow)])
def test_full_scale_ade20k_recipe_on_cpu(config, shared_data, tmp_path, monkeypatch, capsys):
    """`python train.py --data ade20k --config r50` as a GPU user runs it (crop 512, ImageNet weights by
    default, batch 2, bf16 autocast), 2 iterations on the real samples; then single-scale and TTA
    inference of a full-size photo from its checkpoint. (swin_t: the same, in the slow set: ~2x r50.)"""
    root = ade20k_root(shared_data)
    backbone = maskformer.CONFIGS[config].backbone
    name, contents = official_imagenet_file(backbone)
    mirror = tmp_path / "mirror" / f"imagenet-{backbone}"
    mirror.mkdir(parents=True)
    torch.save(contents, mirror / "file.pth")
    sha = hashlib.sha256((mirror / "file.pth").read_bytes()).hexdigest()[:8]
    name = name.format(sha)
    (mirror / "file.pth").rename(mirror / name)
    kind = "torchvision" if backbone == "resnet50" else "swin"
    entry = weights.ImageNet(backbone, kind, "IN-1k 224", weights.Download(f"https://example.org/{name}",
                                                                             sha if kind == "torchvision" else None))
    monkeypatch.setattr(weights, "IMAGENET", (entry,))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    run = tmp_path / "run"
    train.main(["--data", "ade20k", "--data-root", str(root), "--config", config, "--batch-size", "2",
                "--iters", "2", "--amp", "bf16", "--val-images", "1", "--workers", "0", "--no-progress",
                "--threads", "2", "--weights-mirror", (tmp_path / "mirror").as_uri(), "--output", str(run)])
    log = capsys.readouterr().out
    assert len([line for line in log.splitlines() if line.startswith("ImageNet weights")]) == 1
    checkpoint = read_checkpoint(run / "last.pt")
    assert checkpoint["step"] == 2 and checkpoint["recipe"]["crop_size"] == 512
    # the backbone started from the file: 2 small AdamW steps away from it (buffers exactly equal)
    converted = torch.load(weights.imagenet_checkpoint(backbone, (tmp_path / "mirror").as_uri()),
                           weights_only=True)["model"]
    trained = checkpoint["model"]
    assert converted and all(torch.isfinite(v).all() for v in trained.values() if v.is_floating_point())
    for key, value in converted.items():
        torch.testing.assert_close(trained[key], value, rtol=0, atol=1e-3, msg=key)

    photo = root / "images" / "validation" / "ADE_val_00000001.jpg"  # 683 x 512, full size
    for flags in ([], ["--tta"]):
        out = tmp_path / ("tta" if flags else "single")
        infer.main(["--weights", str(run / "last.pt"), "--input", str(photo), "--data", "ade20k", "--amp", "bf16",
                    "--output", str(out), *flags])
        first = capsys.readouterr().out.splitlines()[0]
        assert first == "test resize: short edge 512, long edge <= 2048 (from the checkpoint's recipe)"
        labels = np.asarray(Image.open(out / "ADE_val_00000001.png"))
        assert labels.shape == (512, 683) and labels.max() < 150
