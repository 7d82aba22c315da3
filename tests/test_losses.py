"""Tests for losses.py: Eq. (3.1b) and (3.2d)–(3.2g).

References: focal and dice values worked by hand on a 2 x 2 mask, gradcheck, a plain loop-based
re-implementation of the whole loss (one query and one mask at a time, float64), a 2-process
run for the distributed num_masks, and the Hugging Face port's MaskFormerLoss.
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from losses import MaskFormerLoss, PerPixelLoss, dice_loss, per_pixel_loss, sigmoid_focal_loss, upsample_bilinear
from matcher import FixedMatcher, HungarianMatcher

ALPHA, GAMMA = 0.25, 2.0
LN2, LN3 = math.log(2), math.log(3)


# ---------------------------------------------------------------------------------------------
# focal and dice, by hand
# ---------------------------------------------------------------------------------------------
# Mask 1: logits [[0, ln 3], [−ln 3, 0]] -> probabilities [[1/2, 3/4], [1/4, 1/2]], target
# [[1, 0], [0, 1]]. Mask 2: logits all 0 (p = 1/2), target all 0.
HAND_LOGITS = torch.tensor([[0.0, LN3, -LN3, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
HAND_TARGETS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)


def test_focal_loss_hand_worked_2x2():
    # Eq. (3.2f) per pixel: −α_t (1 − p_t)^γ log p_t, α_t = 1/4 on target 1, 3/4 on target 0.
    # mask 1, pixel (0,0): t=1, p_t = 1/2:  1/4 · (1/2)^2 · ln 2          = ln2 / 16
    #         pixel (0,1): t=0, p_t = 1/4:  3/4 · (3/4)^2 · ln 4          = 27/32 · ln 2
    #         pixel (1,0): t=0, p_t = 3/4:  3/4 · (1/4)^2 · ln(4/3)       = 3/64 · ln(4/3)
    #         pixel (1,1): as (0,0)                                      = ln2 / 16
    mask1 = (LN2 / 16 + 27 / 32 * LN2 + 3 / 64 * math.log(4 / 3) + LN2 / 16) / 4
    # mask 2, every pixel: t=0, p_t = 1/2:  3/4 · (1/2)^2 · ln 2 = 3/16 · ln 2
    mask2 = 3 / 16 * LN2
    assert sigmoid_focal_loss(HAND_LOGITS[:1], HAND_TARGETS[:1], 1).item() == pytest.approx(mask1, rel=1e-12)
    # summed over masks and divided by num_masks
    total = sigmoid_focal_loss(HAND_LOGITS, HAND_TARGETS, num_masks=2).item()
    assert total == pytest.approx((mask1 + mask2) / 2, rel=1e-12)


def test_dice_loss_hand_worked_2x2():
    # Eq. (3.2g): mask 1: Σ m·m_gt = 1/2 + 1/2 = 1, Σ m = 2, Σ m_gt = 2 -> 1 − 3/5 = 2/5
    #             mask 2: Σ m·m_gt = 0,  Σ m = 2, Σ m_gt = 0           -> 1 − 1/3 = 2/3
    assert dice_loss(HAND_LOGITS[:1], HAND_TARGETS[:1], 1).item() == pytest.approx(2 / 5, rel=1e-12)
    assert dice_loss(HAND_LOGITS, HAND_TARGETS, num_masks=4).item() == pytest.approx((2 / 5 + 2 / 3) / 4,
                                                                                     rel=1e-12)


def test_gradcheck_focal_and_dice():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 7, generator=g, dtype=torch.float64, requires_grad=True)
    targets = (torch.rand(3, 7, generator=g) > 0.5).double()
    assert torch.autograd.gradcheck(lambda x: sigmoid_focal_loss(x, targets, 2.0), (logits,))
    assert torch.autograd.gradcheck(lambda x: dice_loss(x, targets, 2.0), (logits,))


# ---------------------------------------------------------------------------------------------
# the full loss against a loop-based re-implementation
# ---------------------------------------------------------------------------------------------
def random_batch(seed: int, num_segments: list[int], N: int = 6, K: int = 5, h: int = 6, w: int = 8,
                 num_aux: int = 0, unique_labels: bool = False, stride: int = 4) -> tuple[dict, list[dict]]:
    """Random outputs (with num_aux aux outputs) and targets at stride x the prediction size.

    The targets leave a bottom band of rows empty in every mask, like padding, so that the
    default behaviour (padding = background) is exercised.
    """
    g = torch.Generator().manual_seed(seed)
    B = len(num_segments)

    def layer() -> dict:
        return {"pred_logits": torch.randn(B, N, K + 1, generator=g) * 2,
                "pred_masks": torch.randn(B, N, h, w, generator=g) * 2}

    outputs = layer()
    if num_aux:
        outputs["aux_outputs"] = [layer() for _ in range(num_aux)]
    targets = []
    for n in num_segments:
        labels = torch.randperm(K, generator=g)[:n] if unique_labels else torch.randint(0, K, (n,), generator=g)
        masks = torch.rand(n, h * stride, w * stride, generator=g) > 0.6
        masks[:, -stride:] = False  # the "padding" rows
        targets.append({"labels": labels, "masks": masks})
    return outputs, targets


def loop_reference(outputs: dict, targets: list[dict], matcher, K: int) -> dict[str, float]:
    """Eq. (3.2d)–(3.2g) one query and one mask at a time, in float64, for every layer.

    Uses `matcher`'s assignment (the matching itself is tested in test_matcher.py).
    """
    num_masks = max(sum(len(t["labels"]) for t in targets), 1)
    layers = [("", outputs)] + [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]
    result = {}
    for suffix, layer in layers:
        indices = matcher(layer, targets)
        logits = layer["pred_logits"].double()
        B, N, _ = logits.shape
        ce_sum = weight_sum = focal_sum = dice_sum = 0.0
        for b in range(B):
            matched = dict(zip(indices[b][0].tolist(), indices[b][1].tolist()))  # query -> segment
            for q in range(N):
                c = targets[b]["labels"][matched[q]].item() if q in matched else K  # K is ∅
                weight = 1.0 if c < K else 0.1
                log_prob = logits[b, q, c] - torch.logsumexp(logits[b, q], 0)
                ce_sum += -weight * log_prob.item()
                weight_sum += weight
                if q not in matched:
                    continue
                t = targets[b]["masks"][matched[q]].double()
                H, W = t.shape
                m_logit = F.interpolate(layer["pred_masks"][b, q][None, None].double(), size=(H, W),
                                        mode="bilinear", align_corners=False)[0, 0]
                m = torch.sigmoid(m_logit)
                focal = torch.where(t == 1, -ALPHA * (1 - m) ** GAMMA * torch.log(m),
                                    -(1 - ALPHA) * m ** GAMMA * torch.log(1 - m))
                focal_sum += focal.mean().item()
                dice_sum += 1 - (2 * (m * t).sum().item() + 1) / (m.sum().item() + t.sum().item() + 1)
        result["loss_ce" + suffix] = ce_sum / weight_sum
        result["loss_focal" + suffix] = focal_sum / num_masks
        result["loss_dice" + suffix] = dice_sum / num_masks
    return result


@pytest.mark.parametrize("num_segments", [[3, 0, 4], [8, 2]], ids=["with_empty_image", "more_gt_than_queries"])
def test_full_loss_equals_loop_reference(num_segments):
    outputs, targets = random_batch(0, num_segments, num_aux=2)
    K = 5
    losses = MaskFormerLoss(K)(outputs, {"targets": targets})
    reference = loop_reference(outputs, targets, HungarianMatcher(), K)
    assert set(losses) == set(reference)
    for key, value in reference.items():
        assert losses[key].item() == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_full_loss_with_fixed_matcher_equals_loop_reference():
    K = 5
    outputs, targets = random_batch(1, [3, 5, 0], N=K, K=K, unique_labels=True)
    losses = MaskFormerLoss(K, matcher=FixedMatcher())(outputs, {"targets": targets})
    reference = loop_reference(outputs, targets, FixedMatcher(), K)
    for key, value in reference.items():
        assert losses[key].item() == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_weight_dict_covers_every_returned_key():
    criterion = MaskFormerLoss(5)
    outputs, targets = random_batch(2, [2, 1], num_aux=5)
    losses = criterion(outputs, {"targets": targets})
    assert len(losses) == 18 and set(losses) <= set(criterion.weight_dict)
    paper_weights = {"loss_ce": 1.0, "loss_focal": 20.0, "loss_dice": 1.0}
    assert set(criterion.weight_dict) == {f"{key}{suffix}" for key in paper_weights
                                          for suffix in ["", "_0", "_1", "_2", "_3", "_4"]}
    for key, value in criterion.weight_dict.items():
        assert value == paper_weights[key if key in paper_weights else key.rsplit("_", 1)[0]]
    outputs, targets = random_batch(3, [2], num_aux=6)
    with pytest.raises(ValueError, match="num_aux_layers"):
        criterion(outputs, {"targets": targets})


def test_image_without_segments():
    # every query of an empty image is ∅; with no mask anywhere the mask terms are 0 but in the graph
    outputs, targets = random_batch(4, [0, 0])
    for key in ("pred_logits", "pred_masks"):
        outputs[key].requires_grad_(True)
    losses = MaskFormerLoss(5)(outputs, {"targets": targets})
    # all queries have weight 0.1, so the weighted mean is the plain mean of −log p(∅)
    expected_ce = -outputs["pred_logits"].log_softmax(-1)[..., -1].mean()
    torch.testing.assert_close(losses["loss_ce"], expected_ce)
    assert losses["loss_focal"].item() == 0 and losses["loss_dice"].item() == 0
    assert losses["loss_focal"].requires_grad and losses["loss_dice"].requires_grad
    sum(losses.values()).backward()
    assert torch.isfinite(outputs["pred_logits"].grad).all()
    assert torch.count_nonzero(outputs["pred_masks"].grad) == 0


def test_bad_targets_raise_clear_errors():
    outputs, targets = random_batch(6, [2, 1])
    targets[1]["masks"] = targets[1]["masks"][:, :-4]
    with pytest.raises(ValueError, match="padded batch size"):
        MaskFormerLoss(5)(outputs, {"targets": targets})
    outputs, targets = random_batch(7, [2])
    targets[0]["labels"] = targets[0]["labels"].int()
    with pytest.raises(ValueError, match="long"):
        MaskFormerLoss(5)(outputs, {"targets": targets})
    outputs, targets = random_batch(8, [2])
    with pytest.raises(ValueError, match="num_classes \\+ 1 = 8"):
        MaskFormerLoss(7)(outputs, {"targets": targets})


def _num_masks_worker(rank: int, init_file: str) -> None:
    """One of two processes; an assertion error here fails the test through mp.spawn."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        # rank 0 holds 3 GT masks, rank 1 holds 1: num_masks = (3 + 1) / 2 = 2 on both, so the
        # mask terms are the single-process ones (divided by the local count) x local count / 2
        outputs, targets = random_batch(10 + rank, [[3], [1]][rank])
        losses = MaskFormerLoss(5)(outputs, {"targets": targets})
        reference = loop_reference(outputs, targets, HungarianMatcher(), 5)
        local_masks = len(targets[0]["labels"])
        for key in ("loss_focal", "loss_dice"):
            assert losses[key].item() == pytest.approx(reference[key] * local_masks / 2, rel=1e-5), key
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two fresh processes import torch: 6-12 s on 2 cores
def test_num_masks_is_averaged_across_processes():
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_num_masks_worker, args=(os.path.join(folder, "init"),), nprocs=2)


def test_num_masks_uses_the_all_reduced_mean(monkeypatch):
    # the fast stand-in for the test above: a fake second process that holds 1 GT mask
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    outputs, targets = random_batch(12, [3])
    reference = loop_reference(outputs, targets, HungarianMatcher(), 5)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, op=None: tensor.add_(1))  # sum: 3 + 1
    losses = MaskFormerLoss(5)(outputs, {"targets": targets})
    for key in ("loss_focal", "loss_dice"):  # num_masks = (3 + 1) / 2 = 2 instead of 3
        assert losses[key].item() == pytest.approx(reference[key] * 3 / 2, rel=1e-5), key


# ---------------------------------------------------------------------------------------------
# per-pixel baselines, Eq. (3.1b)
# ---------------------------------------------------------------------------------------------
def test_per_pixel_loss_equals_loop_reference():
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(2, 4, 3, 5, generator=g)
    labels = torch.randint(0, 4, (2, 12, 20), generator=g)
    labels[0, :6] = 255
    up = F.interpolate(logits.double(), size=(12, 20), mode="bilinear", align_corners=False)
    total, count = 0.0, 0
    for b, y, x in itertools.product(range(2), range(12), range(20)):
        c = labels[b, y, x].item()
        if c == 255:
            continue
        total += -(up[b, c, y, x] - torch.logsumexp(up[b, :, y, x], 0)).item()
        count += 1
    assert per_pixel_loss(logits, labels).item() == pytest.approx(total / count, rel=1e-5)


def test_per_pixel_criterion_supervises_every_layer():
    # PerPixelLoss = Eq. (3.1b) on the final and on every auxiliary output, each with weight 1
    g = torch.Generator().manual_seed(9)
    layers = [torch.randn(2, 4, 3, 5, generator=g) for _ in range(3)]
    labels = torch.randint(0, 4, (2, 12, 20), generator=g)
    labels[1, :, :7] = 255
    outputs = {"sem_seg_logits": layers[-1], "aux_outputs": [{"sem_seg_logits": x} for x in layers[:-1]]}
    criterion = PerPixelLoss(num_aux_layers=2)
    terms = criterion(outputs, {"sem_seg": labels})
    assert set(terms) == set(criterion.weight_dict) == {"loss_ce", "loss_ce_0", "loss_ce_1"}
    labelled = labels != 255
    for key, logits in (("loss_ce", layers[2]), ("loss_ce_0", layers[0]), ("loss_ce_1", layers[1])):
        up = F.interpolate(logits, size=(12, 20), mode="bilinear", align_corners=False)
        log_p = up.log_softmax(1).gather(1, labels.clamp(max=3)[:, None])[:, 0]   # (B, H, W)
        assert terms[key].item() == pytest.approx(-log_p[labelled].mean().item(), rel=1e-5), key
    assert set(PerPixelLoss()(outputs | {"aux_outputs": []}, {"sem_seg": labels})) == {"loss_ce"}


def test_per_pixel_criterion_checks_labels_once_and_names_itself(monkeypatch):
    # the label check reads the labels back to the host (a GPU sync): once per call, not per layer
    import losses
    calls = []
    check = losses.check_sem_seg
    monkeypatch.setattr(losses, "check_sem_seg", lambda *a: calls.append(a[-1]) or check(*a))
    layers = [torch.randn(1, 3, 2, 2) for _ in range(6)]
    outputs = {"sem_seg_logits": layers[-1], "aux_outputs": [{"sem_seg_logits": x} for x in layers[:-1]]}
    PerPixelLoss(num_aux_layers=5)(outputs, {"sem_seg": torch.zeros(1, 4, 4, dtype=torch.long)})
    assert calls == ["PerPixelLoss"]
    with pytest.raises(ValueError, match=r"PerPixelLoss: sem_seg values must be in 0\.\.2 or 255"):
        PerPixelLoss(num_aux_layers=5)(outputs, {"sem_seg": torch.full((1, 4, 4), 7)})


def test_per_pixel_loss_all_ignored_and_bad_labels():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = per_pixel_loss(logits, torch.full((1, 8, 8), 255))
    assert loss.item() == 0
    loss.backward()
    assert torch.count_nonzero(logits.grad) == 0
    with pytest.raises(ValueError, match=r"0\.\.2 or 255"):
        per_pixel_loss(logits, torch.full((1, 8, 8), 3))
    with pytest.raises(ValueError, match="long"):
        per_pixel_loss(logits, torch.zeros(1, 8, 8, dtype=torch.uint8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    outputs, targets = random_batch(9, [3, 0, 2], num_aux=1)
    to_cuda = {"pred_logits": outputs["pred_logits"].cuda(), "pred_masks": outputs["pred_masks"].cuda(),
               "aux_outputs": [{k: v.cuda() for k, v in outputs["aux_outputs"][0].items()}]}
    cuda_targets = [{k: v.cuda() for k, v in t.items()} for t in targets]
    cpu_losses = MaskFormerLoss(5)(outputs, {"targets": targets})
    for key, value in MaskFormerLoss(5).cuda()(to_cuda, {"targets": cuda_targets}).items():
        torch.testing.assert_close(value.cpu(), cpu_losses[key], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# the Hugging Face port as a reference
# ---------------------------------------------------------------------------------------------
def test_equals_hugging_face_loss():
    """Main-output terms and weighted total equal transformers' MaskFormerLoss within 1e-5.

    No aux outputs: HF's auxiliary path is broken in 5.x. Differences in the call, not in the
    numbers: HF names the CE term "loss_cross_entropy"; takes masks and labels as two lists;
    needs float masks (its matcher cannot resize bool ones); pads masks of different sizes itself
    where we require the padded batch size from collate; and all-reduces num_masks through
    `accelerate` (when a PartialState exists) where we use torch.distributed. Both upsample the
    predicted masks (bilinear) to the label size in the loss and resize labels (nearest) to the
    prediction size in the matcher, as the official code does.
    """
    try:
        from transformers.models.maskformer.modeling_maskformer import MaskFormerHungarianMatcher
        from transformers.models.maskformer.modeling_maskformer import MaskFormerLoss as HFMaskFormerLoss
    except ImportError as error:
        pytest.skip(f"transformers' MaskFormer port is not importable ({error}); it is only a reference")
    K = 5
    outputs, targets = random_batch(11, [3, 0, 7, 1], N=6, K=K)
    criterion = MaskFormerLoss(K)
    hf_weights = {"loss_cross_entropy": 1.0, "loss_mask": 20.0, "loss_dice": 1.0}
    hf_matcher = MaskFormerHungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0)
    hf_criterion = HFMaskFormerLoss(K, matcher=hf_matcher, weight_dict=hf_weights, eos_coef=0.1)
    mask_labels, class_labels = [t["masks"].float() for t in targets], [t["labels"] for t in targets]

    hf_indices = hf_matcher(outputs["pred_masks"], outputs["pred_logits"], mask_labels, class_labels)
    for (q1, t1), (q2, t2) in zip(criterion.matcher(outputs, targets), hf_indices):
        assert torch.equal(q1, q2) and torch.equal(t1, t2)

    ours = criterion(outputs, {"targets": targets})
    hf = hf_criterion(outputs["pred_masks"], outputs["pred_logits"], mask_labels, class_labels)
    hf["loss_ce"], hf["loss_focal"] = hf.pop("loss_cross_entropy"), hf.pop("loss_mask")  # its "mask" is the focal term
    for key in ("loss_ce", "loss_focal", "loss_dice"):
        torch.testing.assert_close(ours[key], hf[key], rtol=0, atol=1e-5)
    total = sum(criterion.weight_dict[k] * v for k, v in ours.items())
    hf_names = {"loss_ce": "loss_cross_entropy", "loss_focal": "loss_mask", "loss_dice": "loss_dice"}
    hf_total = sum(hf_weights[hf_names[k]] * v for k, v in hf.items())
    torch.testing.assert_close(total, hf_total, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape, size", [((5, 8, 8), (32, 32)), ((2, 3, 7, 5), (29, 17)), ((3, 16, 12), (16, 12)),
                                         ((1, 4, 4), (3, 2)), ((2, 1, 9), (40, 4))])
def test_upsample_bilinear_is_f_interpolate(shape, size):
    # the loss's two-matmul upsampling against PyTorch's bilinear kernel (align_corners=False): values and
    # gradients, for whole factors, odd sizes, an unchanged size and downsampling
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    weights = torch.randn(*shape[:-2], *size, dtype=torch.float64)
    ours = upsample_bilinear(x, size)
    as_4d = x if x.dim() == 4 else x[:, None]
    ref = F.interpolate(as_4d, size=size, mode="bilinear", align_corners=False).reshape(ours.shape)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), x)
    (grad_ref,) = torch.autograd.grad((ref * weights).sum(), x)
    torch.testing.assert_close(grad_ours, grad_ref, rtol=0, atol=1e-12)
