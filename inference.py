"""Mask-classification inference (§3.4): from MaskFormer's N (class, mask) pairs to segmentation maps.

The model (maskformer.py) returns, per image, N class logits over K + 1 classes (the last one is
"no object" ∅) and N mask logits at stride 4. p_i(c) below is the softmax over all K + 1 classes;
inference then drops the ∅ column without renormalising the K that remain. §3.4 turns these into:

- `semantic_inference`, Eq. (3.4b): per-pixel class scores Σ_i p_i(c) · m_i[h, w], a matrix
  product; the argmax over the K real classes is the semantic map. Used for mIoU (Table 1).
- `general_inference`, Eq. (3.4a): each pixel goes to the single query maximising p_i(c_i) · m_i.
- `panoptic_inference`: Eq. (3.4a) plus DETR's filters (drop ∅ and low-confidence queries, drop
  segments mostly hidden by others), stuff segments of one class merged; used for PQ (Table 3).
- `instance_inference`: the by-product "one binary mask and score per query".
- The per-pixel baselines (§4) already give per-pixel class logits (`sem_seg_logits`), Eq. (3.1a):
  their argmax is the semantic map.

Around these: `resize_to_original` (upsample to the padded input, crop the padding, resize to the
original image, as detectron2's `sem_seg_postprocess`), `predict_semantic` / `predict_panoptic`
(a batch of images → predictions at the original size) and the multi-scale + flip test
(`tta_class_scores`, and `tta_semantic_map`, its argmax a band of rows at a time). The command
that runs them on photos is infer.py; the loop over a validation split is evaluation.py.

Reading order: semantic_inference → general_inference → panoptic_inference → instance_inference →
resize_to_original → predict_semantic → predict_panoptic (`panoptic_map`; both at once:
`predict_panoptic_and_semantic`) → the multi-scale test (tta_outputs →
tta_class_scores → tta_semantic_map).

How this differs from the official code (facebookresearch/MaskFormer, mask_former_model.py):
- Same order of operations: mask logits are upsampled to the padded input size before the
  sigmoid; semantic scores (and, for panoptic, the mask logits) are cropped and resized to the
  original size; panoptic inference runs at the original size. Panoptic inference is vectorised
  (one bincount for the areas, one lookup for the final map) instead of a loop over queries that
  writes the map query by query; the result is the same, edge cases included.
- `segments_info` also carries each segment's "score" p_i(c_i) (a merged stuff segment keeps the
  score of its first query) and its "area" in pixels.
- Test-time augmentation resizes the original image once per scale; the official
  DatasetMapperTTA resizes the image its test loader already resized to the test size (two
  interpolations, the same target sizes).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import data
import losses
from machinery import augment

TTA_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # the paper's multi-scale ("m.s.") test, with flip

# ---------------------------------------------------------------------------------------------
# §3.4: from N (class, mask) pairs to segmentations
# ---------------------------------------------------------------------------------------------


def semantic_inference(pred_logits: Tensor, pred_masks: Tensor) -> Tensor:
    """Eq. (3.4b): per-pixel class scores Σ_i p_i(c) · m_i[h, w] over the K real classes.

    pred_logits (B, N, K+1) class logits, pred_masks (B, N, h, w) mask logits → (B, K, h, w).
    The semantic map is the argmax over dim 1; ∅ takes no part in it.
    """
    # Eq. (3.3a): p_i = softmax over K + 1 classes; then ∅ (the last column) is dropped
    class_probs = pred_logits.float().softmax(-1)[..., :-1]  # (B, N, K)
    # Eq. (3.3b): m_i = sigmoid of the mask logits
    mask_probs = pred_masks.float().sigmoid()  # (B, N, h, w)
    # Eq. (3.4b): Σ_i p_i(c) · m_i[h, w]
    return torch.einsum("bnk,bnhw->bkhw", class_probs, mask_probs)  # (B, K, h, w)


def general_inference(pred_logits: Tensor, pred_masks: Tensor) -> Tensor:
    """Eq. (3.4a): a semantic map by hard assignment of each pixel to one query.

    pred_logits (B, N, K+1), pred_masks (B, N, h, w) logits → labels (B, h, w) long: pixel [h, w]
    gets c_i of the query i maximising p_i(c_i) · m_i[h, w] among queries with c_i ≠ ∅, where
    c_i = argmax_c p_i(c) over all K + 1 classes. Where every query predicts ∅ the set is empty
    and the label is -1 ("no segment"; SemanticMetrics counts it as a miss).
    """
    B, N, K1 = pred_logits.shape
    # c_i and p_i(c_i), the argmax taken over {1..K, ∅}
    scores, classes = pred_logits.float().softmax(-1).max(-1)  # (B, N), (B, N)
    prob_masks = scores[..., None, None] * pred_masks.float().sigmoid()  # (B, N, h, w)
    # queries with c_i = ∅ take no part: give them a value below every probability
    no_object = classes == K1 - 1  # (B, N)
    prob_masks = prob_masks.masked_fill(no_object[..., None, None], -1.0)
    # Eq. (3.4a): argmax over i with c_i ≠ ∅ of p_i(c_i) · m_i[h, w]
    winner = prob_masks.argmax(1)  # (B, h, w) query index
    labels = classes.gather(1, winner.flatten(1)).view_as(winner)  # (B, h, w) c_winner
    return labels.masked_fill(labels == K1 - 1, -1)  # only when all N queries are ∅


def panoptic_thresholds(dataset: str | None) -> tuple[float, float]:
    """(object-mask threshold, overlap threshold) of a dataset's official panoptic config: 0.7 / 0.8
    for ADE20K-Panoptic (configs/ade20k-150-panoptic), 0.8 / 0.8 otherwise (configs/coco-panoptic)."""
    return (0.7, 0.8) if dataset == "ade20k_panoptic" else (0.8, 0.8)


def panoptic_inference(
    pred_logits: Tensor,
    pred_masks: Tensor,
    is_thing: list[bool] | Tensor,
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
) -> tuple[Tensor, list[dict]]:
    """General inference, Eq. (3.4a), with DETR's filters for panoptic output (§3.4).

    pred_logits (N, K+1), pred_masks (N, H, W) mask logits (at the output size), is_thing (K,).
    1. Keep queries with c_i ≠ ∅ and p_i(c_i) > object_mask_threshold.
    2. Each pixel goes to the kept query maximising p_i(c_i) · m_i[h, w], Eq. (3.4a).
    3. A query whose won pixels are fewer than overlap_threshold × its own mask's pixels
       (m_i >= 0.5), i.e. a mask mostly hidden by others, gives no segment: its pixels stay void.
       So does a query that wins no pixel or whose mask has no pixel >= 0.5 (official behaviour).
    4. The segments of one stuff class merge into one (the first kept query's id); every thing
       query is its own instance.
    Returns pan_seg (H, W) long, 0 = void, segments 1, 2, … and segments_info, one dict per
    segment: {"id", "category_id", "isthing", "score", "area"}.
    """
    H, W = pred_masks.shape[-2:]
    # 1. drop ∅ and low-confidence queries; c_i and p_i(c_i) of the others
    keep, scores, classes = confident_queries(pred_logits, object_mask_threshold)  # (N,), (M,), (M,)
    mask_probs = pred_masks[keep].float().sigmoid()  # (M, H, W)
    M = len(scores)
    if M == 0:
        return torch.zeros(H, W, dtype=torch.long, device=pred_masks.device), []  # all void
    # 2. Eq. (3.4a): each pixel to the kept query with the largest p_i(c_i) · m_i[h, w]
    winner = (scores[:, None, None] * mask_probs).argmax(0)  # (H, W) in 0..M-1
    won_area = torch.bincount(winner.flatten(), minlength=M)  # (M,) pixels each query won
    mask_area = (mask_probs >= 0.5).flatten(1).sum(1)  # (M,) pixels of each query's own mask
    # 3.-4. decide each query's segment id; a loop over <= N numbers on the host (one transfer)
    segment_of_query = [0] * M  # 0 = void
    segments_info: list[dict] = []
    stuff_segment: dict[int, dict] = {}  # class -> its (merged) stuff segment
    for i, (c, score, won, area) in enumerate(
        zip(classes.tolist(), scores.tolist(), won_area.tolist(), mask_area.tolist())
    ):
        if won == 0 or area == 0 or won / area < overlap_threshold:
            continue
        thing = bool(is_thing[c])
        if not thing and c in stuff_segment:
            segment = stuff_segment[c]  # 4. merge into the class's stuff segment
            segment["area"] += won
        else:
            segment = {"id": len(segments_info) + 1, "category_id": c, "isthing": thing, "score": score,
                       "area": won}
            segments_info.append(segment)
            if not thing:
                stuff_segment[c] = segment
        segment_of_query[i] = segment["id"]
    pan_seg = torch.tensor(segment_of_query, device=winner.device)[winner]  # (H, W)
    return pan_seg, segments_info


def confident_queries(pred_logits: Tensor, object_mask_threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """Step 1 of `panoptic_inference`: (keep (N,) bool, p_i(c_i) (M,), c_i (M,)) of the queries with
    c_i = argmax over {1..K, ∅} not ∅ and p_i(c_i) > object_mask_threshold."""
    scores, classes = pred_logits.float().softmax(-1).max(-1)  # (N,), (N,)
    keep = (classes != pred_logits.shape[-1] - 1) & (scores > object_mask_threshold)
    return keep, scores[keep], classes[keep]


def instance_inference(pred_logits: Tensor, pred_masks: Tensor) -> dict[str, Tensor]:
    """Instance segmentation as a by-product of Eq. (3.2a): one binary mask per non-∅ query.

    pred_logits (N, K+1), pred_masks (N, H, W) logits → {"masks": bool (M, H, W) (m_i >= 0.5),
    "labels": (M,) c_i, "scores": (M,) p_i(c_i)}, sorted by decreasing score. (Not in the
    MaskFormer paper's tables; Mask2Former's instance head ranks query-class pairs instead.)
    """
    K = pred_logits.shape[-1] - 1
    scores, labels = pred_logits.float().softmax(-1).max(-1)  # (N,), (N,)
    order = scores.argsort(descending=True)
    order = order[labels[order] != K]  # drop ∅ queries
    return {"masks": pred_masks[order].float().sigmoid() >= 0.5, "labels": labels[order], "scores": scores[order]}


# ---------------------------------------------------------------------------------------------
# From stride-4 model outputs to predictions at the original image size
# ---------------------------------------------------------------------------------------------


def resize_to_original(x: Tensor, padded_size: tuple[int, int], image_size: tuple[int, int],
                       orig_size: tuple[int, int]) -> Tensor:
    """(C, h, w) maps → (C, H0, W0), as detectron2's `sem_seg_postprocess` after the official upsampling.

    1. upsample (bilinear) to the padded network input (Hp, Wp) (skipped if already there),
    2. crop the padding away: keep the top-left image_size (h_img, w_img),
    3. resize (bilinear) to orig_size, the image's size before the test resize.
    """
    x = x[None]  # (1, C, h, w)
    if tuple(x.shape[-2:]) != tuple(padded_size):
        x = F.interpolate(x, size=padded_size, mode="bilinear", align_corners=False)  # (1, C, Hp, Wp)
    x = x[..., : image_size[0], : image_size[1]]  # (1, C, h_img, w_img)
    if tuple(image_size) != tuple(orig_size):
        x = F.interpolate(x, size=orig_size, mode="bilinear", align_corners=False)  # (1, C, H0, W0)
    return x[0]


def pad_to_multiple(images: Tensor, multiple: int = data.SIZE_DIVISIBILITY) -> Tensor:
    """Zero-pad (B, 3, H, W) normalised images at the bottom/right to sides divisible by `multiple`."""
    H, W = images.shape[-2:]
    return F.pad(images, (0, -W % multiple, 0, -H % multiple))


def run_model(model: nn.Module, images: Tensor, amp_dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """One forward pass without gradients (autocast to `amp_dtype` if given); outputs in float32."""
    with torch.no_grad(), torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        outputs = model(images)
    return {k: v.float() for k, v in outputs.items() if isinstance(v, Tensor)}


def class_scores(outputs: dict[str, Tensor], b: int, padded_size: tuple[int, int], image_size: tuple[int, int],
                 orig_size: tuple[int, int]) -> Tensor:
    """Per-pixel class scores (K, H0, W0) of image b of a batch, at its original size."""
    return resize_to_original(scores_at_test_size(outputs, b, padded_size), padded_size, image_size, orig_size)


def scores_at_test_size(outputs: dict[str, Tensor], b: int, padded_size: tuple[int, int]) -> Tensor:
    """Per-pixel class scores of image b at the padded network input: (K, Hp, Wp) for MaskFormer,
    (K, h, w) at stride 4 for the per-pixel baselines (`resize_to_original` takes either)."""
    if "sem_seg_logits" in outputs:
        # per-pixel baselines, Eq. (3.1a): the logits already are per-pixel scores
        return outputs["sem_seg_logits"][b]  # (K, h, w)
    # official order: mask logits upsampled to the padded input, then sigmoid and Eq. (3.4b)
    masks = F.interpolate(outputs["pred_masks"][b : b + 1], size=padded_size, mode="bilinear",
                          align_corners=False)  # (1, N, Hp, Wp)
    return semantic_inference(outputs["pred_logits"][b : b + 1], masks)[0]  # (K, Hp, Wp)


def semantic_map(outputs: dict[str, Tensor], b: int, padded_size: tuple[int, int], image_size: tuple[int, int],
                 orig_size: tuple[int, int], max_values: int = 2**26) -> Tensor:
    """`class_scores(...).argmax(0)`, the semantic map (H0, W0), with at most ~max_values scores at the
    original size at a time: the classes are resized a few at a time and a running maximum kept, so a
    150-class model on a 5000 x 4000 photo needs 256 MB here instead of 12 GB. The result is the same:
    the resize treats every class on its own, and ties keep the lower class id, as argmax does."""
    scores = scores_at_test_size(outputs, b, padded_size)  # (K, Hp, Wp) or (K, h, w)
    per_chunk = max(1, max_values // (orig_size[0] * orig_size[1]))
    if per_chunk >= len(scores):
        return resize_to_original(scores, padded_size, image_size, orig_size).argmax(0)  # (H0, W0)
    best_score, best_class = None, None
    for first in range(0, len(scores), per_chunk):
        chunk = resize_to_original(scores[first : first + per_chunk], padded_size, image_size, orig_size)
        score, label = chunk.max(0)  # (H0, W0) each; the first maximum within the chunk
        if best_score is None:
            best_score, best_class = score, label
        else:
            better = score > best_score  # strictly: a tie keeps the earlier class
            best_score = torch.where(better, score, best_score)
            best_class = torch.where(better, label + first, best_class)
    return best_class


def _sizes(images: Tensor, image_sizes: list | None, orig_sizes: list | None) -> tuple[list, list]:
    """Defaults: every image fills the batch tensor; predictions at that same size."""
    if image_sizes is None:
        image_sizes = [tuple(images.shape[-2:])] * len(images)
    image_sizes = [tuple(s) for s in image_sizes]
    return image_sizes, [tuple(s) for s in orig_sizes] if orig_sizes is not None else image_sizes


def predict_semantic(model: nn.Module, images: Tensor, image_sizes: list | None = None, orig_sizes: list | None = None,
                     amp_dtype: torch.dtype | None = None) -> list[Tensor]:
    """Semantic maps (H0, W0) long, one per image; Eq. (3.4b) or the per-pixel argmax.

    images (B, 3, H, W) normalised (zero padding is added up to a multiple of 32);
    image_sizes: each image's (h, w) inside the batch before padding (default: all of (H, W));
    orig_sizes: the size to predict at (default: image_sizes). Multi-scale test: `tta_class_scores`.
    """
    image_sizes, orig_sizes = _sizes(images, image_sizes, orig_sizes)
    images = pad_to_multiple(images)
    outputs = run_model(model, images, amp_dtype)
    padded_size = tuple(images.shape[-2:])
    return [semantic_map(outputs, b, padded_size, image_sizes[b], orig_sizes[b])  # (H0, W0)
            for b in range(len(images))]


def tta_class_scores(model: nn.Module, image: np.ndarray | Tensor, test_size: int, max_size: int,
                     amp_dtype: torch.dtype | None = None, scales: tuple[float, ...] = TTA_SCALES) -> Tensor:
    """Class scores (K, H0, W0) of one original image (H0, W0, 3) uint8, averaged over scales × {as is, flipped}.

    As the official SemanticSegmentorWithTTA with detectron2's DatasetMapperTTA: per scale s the
    image is resized (bilinear) to short edge int(s · test_size), long edge <= max_size (ADE20K:
    256 … 896, max 3584; the official TEST.AUG.MIN_SIZES / MAX_SIZE), normalised, and predicted
    as is and flipped; every version is brought to the original size (flipped ones flipped back)
    and the scores are averaged: Eq. (3.4b) scores for MaskFormer, logits for the per-pixel
    baselines (the official TTA averages whatever the model returns). The sum and one version are held
    at the original size: evaluation.tta_semantic_map gives the argmax a band of rows at a time.
    """
    image = np.asarray(image)
    orig_size = image.shape[:2]
    total = None
    for outputs, padded_size, size in tta_outputs(model, image, test_size, max_size, amp_dtype, scales):
        for b in range(2):
            scores = class_scores(outputs, b, padded_size, size, orig_size)  # (K, H0, W0)
            scores = scores.flip(-1) if b == 1 else scores
            total = scores if total is None else total + scores
    return total / (2 * len(scales))


def tta_outputs(model: nn.Module, image: np.ndarray, test_size: int, max_size: int, amp_dtype: torch.dtype | None,
                scales: tuple[float, ...]):
    """Per scale s: the model's outputs on the pair (image resized to short edge int(s · test_size), long
    edge <= max_size; the same flipped), the pair's padded size and the resized size (hs, ws)."""
    device = next(model.parameters()).device
    for scale in scales:
        size = augment.shortest_edge_size(*image.shape[:2], int(scale * test_size), max_size)
        scaled = data.normalize(augment.resize(image, {}, size)[0])[None].to(device)  # (1, 3, hs, ws)
        pair = pad_to_multiple(torch.cat([scaled, scaled.flip(-1)]))  # (2, 3, Hp, Wp): flip before padding
        yield run_model(model, pair, amp_dtype), tuple(pair.shape[-2:]), size


def predict_panoptic(model: nn.Module, images: Tensor, is_thing: list[bool], image_sizes: list | None = None,
                     orig_sizes: list | None = None, amp_dtype: torch.dtype | None = None,
                     object_mask_threshold: float = 0.8, overlap_threshold: float = 0.8) -> list[tuple[Tensor, list]]:
    """(pan_seg (H0, W0), segments_info) per image via `panoptic_inference` at the original size."""
    image_sizes, orig_sizes = _sizes(images, image_sizes, orig_sizes)
    images = pad_to_multiple(images)
    outputs = run_model(model, images, amp_dtype)
    padded_size = tuple(images.shape[-2:])
    return [panoptic_map(outputs, b, padded_size, image_sizes[b], orig_sizes[b], is_thing, object_mask_threshold,
                         overlap_threshold) for b in range(len(images))]


def panoptic_map(outputs: dict[str, Tensor], b: int, padded_size: tuple[int, int], image_size: tuple[int, int],
                 orig_size: tuple[int, int], is_thing: list[bool], object_mask_threshold: float = 0.8,
                 overlap_threshold: float = 0.8) -> tuple[Tensor, list]:
    """(pan_seg (H0, W0), segments_info) of image b of a batch's `outputs`: `panoptic_inference` at the
    original size (Eq. (3.4a) with the panoptic filters)."""
    if "pred_masks" not in outputs:
        raise ValueError("panoptic inference needs a mask-classification model (pred_logits, pred_masks); "
                         "a per-pixel baseline gives semantic maps only")
    # official: mask logits upsampled, cropped, resized to the original size, then inference; only the
    # queries step 1 keeps are resized (M x H0 x W0 values instead of N x H0 x W0; the same result)
    keep = confident_queries(outputs["pred_logits"][b], object_mask_threshold)[0]
    kept_masks = outputs["pred_masks"][b][keep]  # (M, h, w)
    masks = resize_to_original(kept_masks, padded_size, image_size, orig_size) if keep.any() \
        else kept_masks.new_zeros((0, *orig_size))
    return panoptic_inference(outputs["pred_logits"][b][keep], masks, is_thing, object_mask_threshold,
                              overlap_threshold)


def predict_panoptic_and_semantic(model: nn.Module, images: Tensor, is_thing: list[bool],
                                  image_sizes: list | None = None, orig_sizes: list | None = None,
                                  amp_dtype: torch.dtype | None = None, object_mask_threshold: float = 0.8,
                                  overlap_threshold: float = 0.8) -> list[tuple[Tensor, list, Tensor]]:
    """(pan_seg (H0, W0), segments_info, semantic map (H0, W0)) per image from ONE forward pass:
    `predict_panoptic` and `predict_semantic` (Eq. (3.4b)) together, as the official model returns
    "sem_seg" beside "panoptic_seg" (ADE20K-Panoptic's evaluation scores both: PQ and mIoU)."""
    image_sizes, orig_sizes = _sizes(images, image_sizes, orig_sizes)
    images = pad_to_multiple(images)
    outputs = run_model(model, images, amp_dtype)
    padded_size = tuple(images.shape[-2:])
    results = []
    for b in range(len(images)):
        pan_seg, segments_info = panoptic_map(outputs, b, padded_size, image_sizes[b], orig_sizes[b], is_thing,
                                              object_mask_threshold, overlap_threshold)
        results.append((pan_seg, segments_info, semantic_map(outputs, b, padded_size, image_sizes[b], orig_sizes[b])))
    return results


def tta_resize(dataset, orig_size: tuple[int, int]) -> tuple[int, int]:
    """(test size, long-edge cap) the multi-scale test scales from: the dataset's recipe (ADE20K: 512,
    3584 = 7 x 512); without one (shapes) the image's own short edge."""
    recipe = getattr(dataset, "recipe", None)
    test_size = recipe.test_size if recipe is not None else min(orig_size)
    return test_size, (recipe.tta_max_scale if recipe is not None else 7) * test_size


def tta_semantic_map(model: nn.Module, image, test_size: int, max_size: int, amp_dtype: torch.dtype | None = None,
                     scales: tuple[float, ...] = TTA_SCALES, max_values: int = 2**26) -> Tensor:
    """`tta_class_scores(...).argmax(0)`, the multi-scale + flip semantic map (H0, W0), a band of
    the photo's rows at a time, holding at most ~max_values class scores at its size at once.

    Each version (scale x flip) reaches the original size through two bilinear resizes of its stride-4
    outputs, one before and one after Eq. (3.4b). A band of original rows reads only a few rows of
    each resize's input, so per band and version only those rows are computed (`band_scores`); the
    band's scores are summed over the versions and its argmax taken. tta_class_scores holds the sum
    and one version at the original size (150 classes, 5000 x 4000: 2 x 12 GB). Measured, the `tiny`
    model with 150 classes on a 2000 x 3000 photo (test size 128, CPU): peak RSS 11.0 GB and 53 s for
    tta_class_scores(...).argmax(0), 1.3 GB and 38 s here. Same labels, up to the float rounding of the
    row resizes (done as small matmuls).
    """
    image = np.asarray(image)
    orig_size = image.shape[:2]
    device = next(model.parameters()).device
    versions = []
    for outputs, padded_size, size in tta_outputs(model, image, test_size, max_size, amp_dtype, scales):
        versions += [tta_version(outputs, b, padded_size, size, orig_size) for b in range(2)]
    num_classes = versions[0]["num_classes"]
    rows_per_band = max(1, max_values // (num_classes * orig_size[1]))
    labels = torch.empty(orig_size, dtype=torch.long, device=device)  # (H0, W0)
    for top in range(0, orig_size[0], rows_per_band):
        bottom = min(top + rows_per_band, orig_size[0])
        labels[top:bottom] = sum(band_scores(v, top, bottom) for v in versions).argmax(0)
    return labels


def tta_version(outputs: dict[str, Tensor], b: int, padded_size: tuple[int, int], image_size: tuple[int, int],
                orig_size: tuple[int, int]) -> dict:
    """What `band_scores` needs of image b of a pair (b = 1: the flipped one): its stride-4 maps, the
    class probabilities of Eq. (3.3a) (MaskFormer) or None (per-pixel logits), the widths, and the two
    row resizes of infer.resize_to_original as 1-D interpolation matrices (built once, sliced per band)."""
    if "sem_seg_logits" in outputs:
        maps, class_probs = outputs["sem_seg_logits"][b], None  # (K, h, w)
    else:
        maps, class_probs = outputs["pred_masks"][b], outputs["pred_logits"][b].softmax(-1)[:, :-1]  # (N, h, w), (N, K)
    return {"maps": maps, "class_probs": class_probs,
            "num_classes": len(maps) if class_probs is None else class_probs.shape[1],
            "widths": (padded_size[1], image_size[1], orig_size[1]), "flipped": b == 1,
            # stride 4 -> the padded input, cropped to the image: (h, hs); the image -> the original: (hs, H0)
            "to_padded": losses.interpolation_matrix(maps.shape[-2], padded_size[0], maps)[:, : image_size[0]],
            "to_original": losses.interpolation_matrix(image_size[0], orig_size[0], maps)}


def band_scores(version: dict, top: int, bottom: int) -> Tensor:
    """Class scores (K, bottom - top, W0) of rows top..bottom-1 of the original size, for one version:
    infer.resize_to_original's two resizes, the columns by F.interpolate, the rows by matrix slices."""
    padded_width, image_width, orig_width = version["widths"]
    to_original = version["to_original"][:, top:bottom]  # (hs, rows)
    used = to_original.abs().sum(1).nonzero()[:, 0]  # the test-size rows this band reads
    first, last = int(used[0]), int(used[-1]) + 1
    # 1. up to the padded input (rows: the used ones only; columns: all), cropped to the image
    x = version["to_padded"][:, first:last].T @ version["maps"]  # (C, used rows, w)
    x = F.interpolate(x[None], size=(last - first, padded_width), mode="bilinear",
                      align_corners=False)[0, :, :, :image_width]  # (C, used rows, ws)
    if version["class_probs"] is not None:
        # Eq. (3.4b): Σ_i p_i(c) · sigmoid(mask logits)_i
        x = torch.einsum("nk,nhw->khw", version["class_probs"], x.sigmoid())  # (K, used rows, ws)
    # 2. the resize to the original size
    x = F.interpolate(x[None], size=(last - first, orig_width), mode="bilinear", align_corners=False)[0]
    x = torch.einsum("hr,khw->krw", to_original[first:last], x)  # (K, rows, W0)
    return x.flip(-1) if version["flipped"] else x
