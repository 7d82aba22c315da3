"""Inference: from MaskFormer's N (class, mask) pairs to segmentation maps (§3.4), and its CLI.

The model (maskformer.py) returns, per image, N class logits over K + 1 classes (the last one is
"no object" ∅) and N mask logits at stride 4. §3.4 turns them into outputs:

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
(a batch of images → predictions at the original size, with optional multi-scale + flip test-time
augmentation), and the CLI (which writes its files and overlays with drawing.py, and runs `--eval`
with evaluate.py, where mIoU / PQ over a loader is computed for train.py too):

    python infer.py --config tiny --random-init --input photo.jpg --output out/      # a demo
    python infer.py --weights run/best.pt --input photos/ --data ade20k --output out/
    python infer.py --weights maskformer-swin-tiny-ade --input photo.jpg --output out/   # by name
    python infer.py --list                              # the published models (docs/weights.md)
    python infer.py --eval --data ade20k --data-root datasets --weights run/best.pt --output out/

Reading order: semantic_inference → general_inference → panoptic_inference → instance_inference →
resize_to_original → predict_semantic / tta_class_scores / predict_panoptic → main (CLI) →
run_inference; evaluate.py for `--eval`.

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
- The test resize comes from the checkpoint (evaluate.resolve_test_resize), not from a config file.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

import augment
import cli
import convert
import data
import datasets
import drawing
import maskformer
import prepare
import weights
from checkpoint import CheckpointError, config_differences, read_checkpoint

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
    at the original size: evaluate.tta_semantic_map gives the argmax a band of rows at a time.
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
    if "pred_masks" not in outputs:
        raise ValueError("panoptic inference needs a mask-classification model (pred_logits, pred_masks); "
                         "a per-pixel baseline gives semantic maps only")
    padded_size = tuple(images.shape[-2:])
    results = []
    for b in range(len(images)):
        # official: mask logits upsampled, cropped, resized to the original size, then inference; only the
        # queries step 1 keeps are resized (M x H0 x W0 values instead of N x H0 x W0; the same result)
        keep = confident_queries(outputs["pred_logits"][b], object_mask_threshold)[0]
        kept_masks = outputs["pred_masks"][b][keep]  # (M, h, w)
        masks = resize_to_original(kept_masks, padded_size, image_sizes[b], orig_sizes[b]) if keep.any() \
            else kept_masks.new_zeros((0, *orig_sizes[b]))
        results.append(panoptic_inference(outputs["pred_logits"][b][keep], masks, is_thing, object_mask_threshold,
                                          overlap_threshold))
    return results


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def class_metadata(name: str | None, root: str | None, num_classes: int | None,
                   shapes_options: dict | None = None) -> tuple[list[str], np.ndarray, list[bool]]:
    """(class_names, palette, is_thing) of dataset `name`; generic names and colours without one;
    shapes_options: the shapes dataset's colours / stuff (`shapes_options`)."""
    if name is None:
        K = num_classes if num_classes is not None else 150
        return [f"class {k}" for k in range(K)], data.make_palette(K), [False] * K
    if name == "ade20k" and root is None:  # the 150 names are part of data.py: no files needed
        return list(datasets.ADE20K_CLASSES), data.make_palette(150), [False] * 150
    if root is None and name in prepare.PREPARERS:  # official class lists in meta/: no files needed
        names, is_thing, colours = prepare.official_classes(name)
        return names, data.make_palette(len(names)) if colours is None else colours, is_thing
    dataset = data.build_dataset(name, root, split="val", **(shapes_options or {}))
    return list(dataset.class_names), dataset.palette, list(dataset.is_thing)


def shapes_options(args: argparse.Namespace) -> dict:
    """--shapes-colours / --shapes-stuff as the shapes dataset's arguments (shapes.py's options)."""
    return {"colours": args.shapes_colours, "stuff": args.shapes_stuff} if args.data == "shapes" else {}


def published_weights(spec: str, mirror: str | None) -> str:
    """--weights NAME: the converted checkpoint of a published model (weights.py: downloaded, checked and
    converted on first use, then read from the cache); a path stays as it is."""
    try:
        return weights.resolve(spec, mirror)
    except (weights.WeightsError, convert.ConversionError) as e:
        raise SystemExit(f"error: {e}") from None


def load_weights(path: str) -> tuple[dict, dict]:
    """(state_dict, the rest) of a checkpoint {"model": state_dict, "config": dict, ...} or a bare state dict."""
    try:
        checkpoint = read_checkpoint(path)
    except CheckpointError as e:
        raise SystemExit(f"error: --weights {e}") from None
    if not isinstance(checkpoint, dict):
        raise SystemExit(f"error: --weights {path}: expected a dict, got {type(checkpoint).__name__}")
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise SystemExit(f"error: --weights {path}: no state dict of tensors (under 'model' or at the top)")
    return state, checkpoint if "model" in checkpoint else {}


def check_state_dict(model: nn.Module, state: dict[str, Tensor], path: str, description: str) -> None:
    """SystemExit with one line summarising missing / unexpected / reshaped keys if `state` does not fit `model`."""
    ours = model.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    reshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(ours[k].shape)}" for k in ours
                if k in state and state[k].shape != ours[k].shape]
    problems = [f"{len(keys)} {kind} (e.g. {', '.join(keys[:2])})"
                for kind, keys in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", reshaped))
                if keys]
    if problems:
        raise SystemExit(f"error: --weights {path} does not fit {description}: {'; '.join(problems)}")


def build_model_for(args: argparse.Namespace, parser: argparse.ArgumentParser,
                    num_classes: int | None) -> tuple[nn.Module, list[str] | None, dict]:
    """The model of --config / the checkpoint's config with --weights loaded (or random with --random-init),
    the class names the checkpoint carries (convert.py writes them), if any, and the checkpoint's
    other entries (its "recipe", "args", ...; empty without one)."""
    if args.random_init:
        if args.weights is not None or args.config is None:
            parser.error("--random-init goes with --config and without --weights (random weights, for demos/tests)")
        return maskformer.build_model(args.config, num_classes=num_classes or 150), None, {}
    if args.weights is None:
        parser.error("--weights is required (or --config NAME --random-init for a model with random weights)")
    args.weights = published_weights(args.weights, args.weights_mirror)
    state, extras = load_weights(args.weights)
    saved_config = extras.get("config") if isinstance(extras.get("config"), dict) else None
    if args.config is not None:
        K = (saved_config or {}).get("num_classes") or num_classes or 150
        model, description = maskformer.build_model(args.config, num_classes=K), f"--config {args.config} (K={K})"
        differences = config_differences(asdict(model.config), saved_config or {})
        description += f", whose {differences} in the file's config" if differences else ""
    elif saved_config is not None:
        known = {f.name for f in fields(maskformer.MaskFormerConfig)}
        try:
            config = maskformer.MaskFormerConfig(**{k: v for k, v in saved_config.items() if k in known})
            model = maskformer.MaskFormer(config)
        except (TypeError, ValueError) as e:
            raise SystemExit(f"error: --weights {args.weights}: its config cannot be built ({e})") from None
        description = f"its own config (backbone {config.backbone}, head {config.head})"
    else:
        parser.error(f"--config is required: {args.weights} holds no 'config' entry")
    check_state_dict(model, state, args.weights, description)
    model.load_state_dict(state)
    class_names = extras.get("class_names")
    valid_names = isinstance(class_names, list) and len(class_names) == model.config.num_classes
    return model, list(map(str, class_names)) if valid_names else None, extras


def list_inputs(path: str, parser: argparse.ArgumentParser) -> list[Path]:
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() not in data.IMAGE_EXTENSIONS:
            parser.error(f"--input {path}: not an image file (expected one of {', '.join(data.IMAGE_EXTENSIONS)})")
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in data.IMAGE_EXTENSIONS)
        if not files:
            parser.error(f"--input {path}: the folder holds no images ({', '.join(data.IMAGE_EXTENSIONS)})")
        return files
    parser.error(f"--input {path}: no such file or folder")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    p = argparse.ArgumentParser(description="MaskFormer inference (§3.4) and evaluation (mIoU / PQ).")
    p.add_argument("--weights", help="checkpoint {'model': state_dict, 'config': dict} (train.py / convert.py), "
                   "or a published model's name or alias (see --list): downloaded, checked and converted once")
    p.add_argument("--list", action="store_true", help="print the published models (names, aliases, paper numbers)")
    p.add_argument("--weights-mirror", help=f"base URL or file:// folder replacing the publishers' for --weights "
                   f"NAME (default: ${weights.MIRROR_ENV}); same layout as the cache, e.g. NAME/model.safetensors")
    p.add_argument("--config", choices=list(maskformer.CONFIGS), help="architecture (default: the checkpoint's)")
    p.add_argument("--random-init", action="store_true", help="no weights: random model of --config (demos, tests)")
    p.add_argument("--input", help="an image file or a folder of images")
    p.add_argument("--output", default="outputs/infer", type=cli.writable_folder,
                   help="folder for the PNGs / JSON / evaluation tables")
    p.add_argument("--task", choices=("semantic", "panoptic"), default="semantic")
    p.add_argument("--data", choices=data.DATASETS, help="dataset for class names, colours and (panoptic) which "
                   "classes are things; and the split for --eval. Without it: the checkpoint's names, all stuff")
    p.add_argument("--data-root", type=cli.existing_folder,
                   help="the dataset's folder (needed by --eval; without --eval only by --data cityscapes, "
                   "coco_panoptic and folder: the other class lists ship with this code)")
    p.add_argument("--shapes-colours", type=cli.int_at_least(0), default=0,
                   help="--data shapes: outline x colour classes, as the checkpoint was trained (train.py flag)")
    p.add_argument("--shapes-stuff", type=cli.int_at_least(0), default=0,
                   help="--data shapes: textured stuff classes, as the checkpoint was trained (train.py flag)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", type=cli.device_name)
    p.add_argument("--size", type=cli.int_at_least(32),
                   help="test resize (--input and --eval): short edge. Default: the checkpoint's recipe (the size "
                   "it was trained and validated at; a published model's official test size, e.g. 640 for "
                   "Swin-B/L on ADE20K), else the --data recipe's (ADE20K 512), else 512")
    p.add_argument("--max-size", type=cli.int_at_least(32),
                   help="test resize: long edge at most (default: from the same place as --size's, else 2048)")
    p.add_argument("--tta", action="store_true",
                   help="multi-scale (0.5-1.75) + flip test-time augmentation")
    p.add_argument("--amp", choices=("bf16", "fp16"), help="autocast the forward pass to this dtype")
    p.add_argument("--object-mask-threshold", type=cli.number_in(0, 1), help="panoptic: min p_i(c_i) to keep a query "
                   "(default: the --data recipe's, 0.7 for ade20k_panoptic, else 0.8)")
    p.add_argument("--overlap-threshold", type=cli.number_in(0, 1),
                   help="panoptic: min visible part of a mask (default 0.8)")
    p.add_argument("--eval", action="store_true", help="evaluate on the --data validation split instead")
    p.add_argument("--batch-size", type=cli.int_at_least(1), default=1, help="--eval batch size")
    p.add_argument("--workers", type=cli.int_at_least(0), default=2, help="--eval data-loading processes")
    p.add_argument("--max-batches", type=cli.int_at_least(1), help="--eval: stop after this many batches")
    return p.parse_args(argv), p


def main(argv: list[str] | None = None) -> dict | None:
    """The CLI: predictions for --input images, or with --eval the metrics of the --data validation split."""
    import evaluate  # evaluate.py imports this module: imported here, when the CLI runs
    args, parser = parse_args(argv)
    if args.list:
        weights.print_table()
        return None
    for flag, default in zip(("object_mask_threshold", "overlap_threshold"), panoptic_thresholds(args.data)):
        if getattr(args, flag) is None:
            setattr(args, flag, default)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    if args.tta and args.task == "panoptic":
        parser.error("--tta is for --task semantic only")
    device = torch.device(args.device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[args.amp]
    try:
        if args.eval:
            return evaluate.run_evaluation(args, parser, device, amp_dtype)
        run_inference(args, parser, device, amp_dtype)
    except data.DatasetError as e:  # e.g. a bad label of the --eval split, found by a data-loading worker
        raise SystemExit(f"error: {cli.error_line(e)}") from None
    return None


def check_task(model: nn.Module, task: str) -> None:
    if task == "panoptic" and model.config.head != "mask_classification":
        raise SystemExit(f"error: --task panoptic needs a mask-classification model; this one's head is "
                         f"{model.config.head!r} (semantic only)")


def run_inference(args: argparse.Namespace, parser: argparse.ArgumentParser, device: torch.device,
                  amp_dtype: torch.dtype | None) -> None:
    """Label PNG (or COCO panoptic PNG + JSON) and a colour overlay for every --input image."""
    import evaluate  # evaluate.py imports this module: imported here, when the CLI runs
    if args.input is None:
        parser.error("--input is required (or --eval)")
    inputs = list_inputs(args.input, parser)
    try:
        names, palette, is_thing = class_metadata(args.data, args.data_root, None, shapes_options(args))
    except data.DatasetError as e:
        parser.error(f"--data {args.data}: {e}")
    model, saved_names, checkpoint = build_model_for(args, parser, len(names) if args.data else None)
    model = model.to(device).eval()
    check_task(model, args.task)
    K = model.config.num_classes
    if args.data and len(names) != K:
        raise SystemExit(f"error: the model predicts {K} classes but --data {args.data} has {len(names)}")
    if not args.data:  # names from the checkpoint if it has them, else "class k"
        names, palette, is_thing = class_metadata(None, None, K)
        names = saved_names or names
    short_edge, long_edge, source = evaluate.resolve_test_resize(args.data, model.config, checkpoint, args.size,
                                                                 args.max_size)
    print(f"test resize: short edge {short_edge}, long edge <= {long_edge} (from {source})")
    recipe = augment.RECIPES.get(args.data) if args.data else None
    tta_max_size = (recipe.tta_max_scale if recipe else 7) * short_edge  # official TEST.AUG.MAX_SIZE
    out = Path(args.output)
    stems = drawing.output_stems(inputs, out, args.task)  # never an input's name, never another image's output
    out.mkdir(parents=True, exist_ok=True)
    unreadable = []
    for path in tqdm(inputs, desc="infer", unit="image"):
        try:
            image = data.read_image(path)  # (H0, W0, 3) uint8
        except data.DatasetError as e:
            unreadable.append(str(e))  # reported at the end; the other images are still processed
            continue
        if args.tta:  # --task semantic (checked): every scale is resized from the photo itself
            labels = evaluate.tta_semantic_map(model, image, short_edge, tta_max_size, amp_dtype)
            drawing.write_semantic(out, stems[path], image, labels, names, palette)
            continue
        size = augment.shortest_edge_size(*image.shape[:2], short_edge, long_edge)
        resized, _ = augment.resize(image, {}, size)
        x = data.normalize(resized)[None].to(device)  # (1, 3, h, w)
        orig = [image.shape[:2]]  # predictions at the photo's own size
        if args.task == "semantic":
            labels = predict_semantic(model, x, orig_sizes=orig, amp_dtype=amp_dtype)[0]
            drawing.write_semantic(out, stems[path], image, labels, names, palette)
        else:
            pan_seg, segments_info = predict_panoptic(model, x, is_thing, orig_sizes=orig, amp_dtype=amp_dtype,
                                                      object_mask_threshold=args.object_mask_threshold,
                                                      overlap_threshold=args.overlap_threshold)[0]
            drawing.write_panoptic(out, stems[path], image, pan_seg, segments_info, names, palette)
    print(f"wrote {len(inputs) - len(unreadable)} prediction(s) to {out}")
    if unreadable:
        for message in unreadable:
            print(f"error: {message}", file=sys.stderr)
        raise SystemExit(f"error: {len(unreadable)} of {len(inputs)} images could not be read (listed above)")


if __name__ == "__main__":
    main()
