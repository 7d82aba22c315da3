"""The paper's §4 findings at classroom scale: Tables 4, 5, 6, the class-count trend, Figure 4 and
semantic vs general inference, each as `python -m tooling.experiments STUDY` on a 2-core CPU.

Paper: §4.3 "Ablation studies" (docs/paper.md, "Table 4", "Table 5", "Number of queries") and
§3.4 (Eq. (3.4a) against Eq. (3.4b)). Every study trains small models (`tiny` config) on the
synthetic shapes of machinery/shapes.py, several seeds per arm, with one budget fixed before any result was
seen and identical for every arm (`FULL`), then writes three small files:

    results/STUDY.json   every run's metrics, mean and std per arm, the command, machine, wall time
    results/STUDY.md     the table (mean ± std over seeds, the paper's number beside ours)
    results/STUDY.png    the same as a picture (bars with ± std error bars)

    python -m tooling.experiments table4      # PerPixelBaseline, PerPixelBaseline+, fixed vs bipartite matching
    python -m tooling.experiments table5      # box- vs mask-based matching on panoptic shapes: PQ, PQ^Th, PQ^St
    python -m tooling.experiments table6      # the number of queries N (97 classes; table6_k7: 7 classes)
    python -m tooling.experiments classes     # per-pixel vs mask classification as the number of classes K grows
    python -m tooling.experiments figure4     # unique categories predicted per query (any checkpoint: --checkpoint)
    python -m tooling.experiments inference   # semantic (3.4b) vs general (3.4a) inference, mIoU and PQ
    python -m tooling.experiments all --quick # every study at a tiny budget, one seed (CI)

Runs are shared between studies (an arm is a set of training flags; Table 4's PerPixelBaseline is
also the classes study's K = 7 per-pixel arm) and each finished run is a file results/runs/*.json:
an interrupted study resumes where it stopped (an unfinished training continues from its last.pt
under runs/experiments/). `figure4` and `inference` read the checkpoints of their runs, which are not
committed: on a fresh copy they first train those runs again (and rewrite their records). To rerun a
study from scratch, give it other folders: `python -m tooling.experiments table4 --results R --work W`.

Reading order: `Budget` and `Arm` (what one training run is) -> `STUDIES` (the arms of each study)
-> `run_arm` (one run through train.py) -> `run_study` (seeds, mean ± std, files) -> the two
checkpoint analyses `figure4` (`categories_per_query`) and `inference` (`compare_inference`) ->
`cross_attention_maps` (the decoder attention of notebook 08) -> the files and the command line.

Differences from the paper: everything is small (a 3M-parameter model trained from scratch for a
few hundred steps on 64-pixel synthetic images instead of R50/Swin on ADE20K or COCO for 160k
iterations), so the numbers are not comparable with the paper's, only the directions are.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor, nn
from tqdm import tqdm

import data
import evaluation
import inference
import train
from machinery import cli, datasets, shapes, weights
from machinery.checkpoint import read_checkpoint
from metrics import PanopticMetrics, SemanticMetrics, strict_json


# -----------------------------------------------------------------------------------------------
# One training run: a budget (shared by every arm) and an arm (what differs between arms)
# -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """The training budget of every run of a study; fixed before any result was seen."""

    image_size: int  # generated scenes are image_size x image_size
    batch_size: int
    iters: int
    warmup_iters: int
    val_images: int
    seeds: tuple[int, ...]
    lr: float = 1e-3  # pinned: the studies' runs were trained at 1e-3, whatever train.py's classroom default is

    def flags(self) -> list[str]:
        return ["--crop-size", str(self.image_size), "--batch-size", str(self.batch_size), "--lr", str(self.lr),
                "--iters", str(self.iters), "--warmup-iters", str(self.warmup_iters),
                "--val-images", str(self.val_images), "--eval-period", str(self.iters),
                "--checkpoint-period", str(max(self.iters // 4, 1))]


# 20-130 s per run on one busy, shared CPU core; 36 runs in all (~1 h). The shapes recipe otherwise
# (lr 1e-3, weight decay 0.05, poly schedule, the `tiny` config).
FULL = Budget(image_size=64, batch_size=8, iters=200, warmup_iters=20, val_images=100, seeds=(0, 1, 2))
QUICK = Budget(image_size=64, batch_size=2, iters=2, warmup_iters=0, val_images=4, seeds=(0,))


@dataclass(frozen=True)
class Arm:
    """What one arm trains: the classification head, the matcher, N, and the shapes data."""

    head: str = "mask_classification"  # | "per_pixel" (PerPixelBaseline) | "per_pixel_plus"
    matcher: str = "hungarian"  # | "fixed" | "box"
    num_queries: int | None = None  # N; None: N = K
    colours: int = 0  # machinery/shapes.py: 0 = classes by outline only; c > 0: outline x c colours
    stuff: int = 0  # machinery/shapes.py: 0 = one background class; s > 0: s textured stuff classes, panoptic

    @property
    def num_classes(self) -> int:
        return shapes.num_shapes_classes(self.colours, self.stuff)

    @property
    def task(self) -> str:
        return "panoptic" if self.stuff else "semantic"

    @property
    def queries(self) -> int:
        return self.num_queries or self.num_classes

    def name(self) -> str:
        head = {"mask_classification": f"maskcls-{self.matcher}-N{self.queries}",
                "per_pixel": "perpixel", "per_pixel_plus": "perpixelplus"}[self.head]
        return f"{head}-K{self.num_classes}" + (f"-stuff{self.stuff}" if self.stuff else "")

    def flags(self) -> list[str]:
        flags = ["--head", self.head]
        if self.head == "mask_classification":
            flags += ["--matcher", self.matcher, "--num-queries", str(self.queries)]
        if self.colours:
            flags += ["--shapes-colours", str(self.colours)]
        if self.stuff:
            flags += ["--shapes-stuff", str(self.stuff), "--task", "panoptic"]
        return flags


@dataclass
class Study:
    """A table: labelled arms, the metrics shown, and the paper's figures for the same rows."""

    title: str
    arms: dict[str, Arm]
    metrics: tuple[str, ...]
    paper: dict[str, str] = field(default_factory=dict)
    paper_note: str = ""


MANY = 16  # colours in the many-class data: 6 outlines x 16 colours + background = 97 classes
STUDIES: dict[str, Study] = {
    # Table 4: same pixel-level module, same budget; N = K for both matchings (paper: N = K = 150)
    "table4": Study(
        "Table 4: per-pixel vs mask classification, fixed vs bipartite matching (shapes, K = 7, N = K)",
        {"PerPixelBaseline": Arm(head="per_pixel"),
         "PerPixelBaseline+": Arm(head="per_pixel_plus"),
         "MaskFormer, fixed matching": Arm(matcher="fixed"),
         "MaskFormer, bipartite matching": Arm(matcher="hungarian")},
        ("mIoU",),
        {"PerPixelBaseline": "39.2 (Table 2)", "PerPixelBaseline+": "41.9",
         "MaskFormer, fixed matching": "43.7", "MaskFormer, bipartite matching": "44.2"},
        "paper: ADE20K-150, R50, N = K = 150, mIoU"),
    # Table 5: panoptic shapes with textured stuff regions; N = 20 queries
    "table5": Study(
        "Table 5: box- vs mask-based matching (panoptic shapes, 4 stuff + 6 thing classes, N = 20)",
        {"box matching": Arm(matcher="box", num_queries=20, stuff=4),
         "mask matching": Arm(matcher="hungarian", num_queries=20, stuff=4)},
        ("PQ", "PQ_th", "PQ_st"),
        {"box matching": "43.7", "mask matching": "46.5"},
        "paper: COCO panoptic val, R50 + 6 enc, PQ (PQ^Th, PQ^St not in docs/paper.md)"),
    # §4.4 "Number of queries", on the many-class data (K = 97, closest to ADE20K's 150)
    "table6": Study(
        f"Number of queries N (shapes x {MANY} colours, K = 97)",
        {f"N = {n}": Arm(num_queries=n, colours=MANY) for n in (10, 20, 50, 100)},
        ("mIoU",),
        {"N = 20": "42.9", "N = 50": "43.9", "N = 100": "44.5"},
        "paper: ADE20K-150, R50, mIoU (N = 10 not in the paper)"),
    # The same on K = 7, where N < K, N = K and N > K all occur
    "table6_k7": Study(
        "Number of queries N (shapes, K = 7)",
        {f"N = {n}": Arm(num_queries=n) for n in (7, 20, 50, 100)},
        ("mIoU",),
        {"N = 20": "42.9", "N = 50": "43.9", "N = 100": "44.5"},
        "paper: ADE20K-150, R50, mIoU (N = 7 not in the paper)"),
    # per-pixel vs mask classification as K grows (paper, Table 2: the gap grows with K)
    "classes": Study(
        "Per-pixel vs mask classification as the number of classes K grows (N = 20)",
        {**{f"per-pixel, K = {shapes.num_shapes_classes(c, 0)}": Arm(head="per_pixel", colours=c) for c in (0, MANY)},
         **{f"mask classification, K = {shapes.num_shapes_classes(c, 0)}": Arm(num_queries=20, colours=c)
            for c in (0, MANY)}},
        ("mIoU",),
        {"per-pixel, K = 7": "77.4 (Cityscapes, K = 19)", "per-pixel, K = 97": "39.2 (ADE20K, K = 150)",
         "mask classification, K = 7": "78.5 (Cityscapes)", "mask classification, K = 97": "44.5 (ADE20K)"},
        "paper: Table 2, R50 (R101 on Cityscapes), mIoU: +1.1 with 19 classes, +5.3 with 150"),
}
# Figure 4 and the attention maps: the classes study's MaskFormers (N = 20), many classes and few
FIGURE4_ARMS = {f"K = {arm.num_classes}": arm for arm in (STUDIES["classes"].arms[f"mask classification, K = {k}"]
                                                           for k in (shapes.num_shapes_classes(MANY, 0), 7))}
INFERENCE_ARM = STUDIES["table5"].arms["mask matching"]
STUDY_NAMES = (*STUDIES, "figure4", "inference")


# -----------------------------------------------------------------------------------------------
# Running arms and studies
# -----------------------------------------------------------------------------------------------
def run_key(arm: Arm, seed: int) -> str:
    return f"{arm.name()}-seed{seed}"


def record_path(results: Path, arm: Arm, seed: int) -> Path:
    """results/runs/KEY.json: what one run measured (written once it has finished)."""
    return results / "runs" / f"{run_key(arm, seed)}.json"


def run_arm(arm: Arm, seed: int, budget: Budget, results: Path, work: Path) -> dict:
    """One training run through train.py (resumed if interrupted), recorded in results/runs/KEY.json.

    A run whose record exists is not trained again. Returns {"arm", "seed", "metrics", "wall_s"}."""

    record_file = record_path(results, arm, seed)
    if record_file.exists():
        return json.loads(record_file.read_text())
    out = work / run_key(arm, seed)
    argv = [*budget.flags(), *arm.flags(), "--seed", str(seed), "--output", str(out), "--threads", "1",
            "--workers", "0", "--no-progress"]
    argv.append("--resume" if (out / "last.pt").exists() else "--overwrite")
    start = time.perf_counter()
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # train.py's log lines: not over the bar
        metrics = train.train(train.parse_args(argv))
    keep = ("mIoU", "pixel_acc") if arm.task == "semantic" else ("PQ", "PQ_th", "PQ_st", "SQ", "RQ")
    record = {"arm": asdict(arm), "seed": seed, "argv": argv[:-1],
              "metrics": {k: metrics[k] for k in keep if k in metrics},
              "wall_s": round(time.perf_counter() - start, 1)}
    record_file.parent.mkdir(parents=True, exist_ok=True)
    record_file.write_text(strict_json(record, indent=1))
    return record


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def run_study(name: str, budget: Budget, results: Path, work: Path, command: str) -> dict:
    """Every arm x seed of STUDIES[name] (a progress bar over runs), then the summary files."""
    study = STUDIES[name]
    jobs = [(label, arm, seed) for label, arm in study.arms.items() for seed in budget.seeds]
    runs: dict[str, list[dict]] = {label: [] for label in study.arms}
    for label, arm, seed in tqdm(jobs, desc=name, unit="run"):
        runs[label].append(run_arm(arm, seed, budget, results, work))
    arms = {}
    for label, arm in study.arms.items():
        summary = {m: mean_std([r["metrics"].get(m, math.nan) for r in runs[label]]) for m in study.metrics}
        arms[label] = {"arm": asdict(arm), "key": arm.name(), "num_classes": arm.num_classes,
                       "seeds": [r["seed"] for r in runs[label]],
                       "runs": [r["metrics"] for r in runs[label]],
                       "mean": {m: summary[m][0] for m in study.metrics},
                       "std": {m: summary[m][1] for m in study.metrics},
                       "paper": study.paper.get(label, "-")}
    wall = sum(r["wall_s"] for rs in runs.values() for r in rs)
    result = {"study": name, "title": study.title, "metrics": list(study.metrics), "arms": arms,
              "paper_note": study.paper_note, **about_run(budget, command, wall)}
    write_study_files(results, name, result)
    return result


def about_run(budget: Budget, command: str, wall_s: float) -> dict:
    return {"budget": asdict(budget), "command": command, "machine": machine(), "wall_s": round(wall_s, 1)}


def machine() -> str:
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs "
            f"while measured), torch {torch.__version__}")


# -----------------------------------------------------------------------------------------------
# Studies on trained checkpoints: Figure 4 and semantic vs general inference
# -----------------------------------------------------------------------------------------------
def validation_set(arm: Arm, budget: Budget):
    return datasets.build_dataset("shapes", split="val", task=arm.task, image_size=budget.image_size,
                              num_images=budget.val_images, colours=arm.colours, stuff=arm.stuff)


def batches(dataset, batch_size: int = 8):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=data.collate)


@torch.no_grad()
def categories_per_query(model: nn.Module, loader) -> list[int]:
    """Figure 4: for each query i, how many different categories c_i ≠ ∅ it predicts over the set."""
    seen: list[set[int]] = [set() for _ in range(model.config.num_queries)]
    for batch in loader:
        logits = model(inference.pad_to_multiple(batch["images"]))["pred_logits"]  # (B, N, K+1)
        predicted = logits.argmax(-1)  # (B, N): c_i, with K meaning ∅
        for i, categories in enumerate(predicted.T.tolist()):
            seen[i].update(c for c in categories if c != model.config.num_classes)
    return [len(s) for s in seen]


@torch.no_grad()
def compare_inference(model: nn.Module, loader, is_thing: list[bool]) -> dict:
    """mIoU and PQ of the same model with semantic inference (3.4b) and general inference (3.4a).

    PQ with (3.4b): its semantic map has no instances, so each class present is one segment.
    PQ with (3.4a): inference.panoptic_inference (general inference with the panoptic filters)."""
    K = model.config.num_classes
    semantic = {"3.4b": SemanticMetrics(K), "3.4a": SemanticMetrics(K)}
    panoptic = {"3.4b": PanopticMetrics(is_thing), "3.4a": PanopticMetrics(is_thing)}
    for batch in loader:
        images = inference.pad_to_multiple(batch["images"])
        outputs = model(images)
        masks = F.interpolate(outputs["pred_masks"], size=images.shape[-2:], mode="bilinear", align_corners=False)
        maps = {"3.4b": inference.semantic_inference(outputs["pred_logits"], masks).argmax(1),  # (B, H, W)
                "3.4a": inference.general_inference(outputs["pred_logits"], masks)}  # (B, H, W)
        for b, target in enumerate(batch["targets"]):
            H, W = target["orig_size"]
            for kind, label_map in maps.items():
                semantic[kind].update(label_map[b, :H, :W], target["orig_sem_seg"])
            pan_seg, segments = segments_of_classes(maps["3.4b"][b, :H, :W])
            panoptic["3.4b"].update(pan_seg, segments, target["orig_pan_seg"], target["segments_info"])
            pan_seg, segments = inference.panoptic_inference(outputs["pred_logits"][b], masks[b, :, :H, :W], is_thing)
            panoptic["3.4a"].update(pan_seg, segments, target["orig_pan_seg"], target["segments_info"])
    results = {}
    for kind in ("3.4b", "3.4a"):
        pq = panoptic[kind].compute()
        results[kind] = {"mIoU": semantic[kind].compute()["mIoU"], "PQ": pq["PQ"], "PQ_th": pq["PQ_th"],
                         "PQ_st": pq["PQ_st"]}
    return results


def segments_of_classes(label_map: Tensor) -> tuple[Tensor, list[dict]]:
    """A semantic map as a panoptic one: one segment (id = class + 1) per class present."""
    classes = [c for c in label_map.unique().tolist() if c >= 0]
    return (label_map + 1).clamp(min=0), [{"id": c + 1, "category_id": c} for c in classes]


def checkpoint_of(arm: Arm, seed: int, budget: Budget, results: Path, work: Path) -> Path:
    """last.pt of an arm's run, trained first if needed (its record too)."""
    path, record_file = work / run_key(arm, seed) / "last.pt", record_path(results, arm, seed)
    if not path.exists() or not record_file.exists():
        record_file.unlink(missing_ok=True)
        run_arm(arm, seed, budget, results, work)
    return path


def figure4(budget: Budget, results: Path, work: Path, command: str, checkpoint: Path | None = None,
            loader=None) -> dict:
    """Unique categories per query, sorted, for every seed of FIGURE4_ARMS or for one --checkpoint."""
    start = time.perf_counter()
    if checkpoint is not None:
        sources = {str(checkpoint): (checkpoint, loader)}
    else:
        sources = {}
        for name, arm in FIGURE4_ARMS.items():
            val = batches(validation_set(arm, budget))
            sources.update({f"{name}, seed {s}": (checkpoint_of(arm, s, budget, results, work), val)
                            for s in budget.seeds})
    counts = {}
    for label, (path, val) in tqdm(sources.items(), desc="figure4", unit="checkpoint"):
        counts[label] = sorted(categories_per_query(weights.load_model(str(path))[0], val), reverse=True)
    table = {label: {"max": c[0], "median": float(np.median(c)), "never": sum(v == 0 for v in c),
                     "queries": len(c)} for label, c in counts.items()}
    result = {"study": "figure4", "title": "Figure 4: unique categories predicted by each query (sorted)",
              "arms": {name: asdict(arm) for name, arm in FIGURE4_ARMS.items()} if checkpoint is None
              else str(checkpoint), "counts": counts, "summary": table,
              **about_run(budget, command, time.perf_counter() - start)}
    write_figure4_files(results, result)
    return result


def inference_study(budget: Budget, results: Path, work: Path, command: str) -> dict:
    """(3.4b) vs (3.4a) on INFERENCE_ARM's checkpoints (Table 5's mask-matching runs)."""
    start = time.perf_counter()
    dataset = validation_set(INFERENCE_ARM, budget)
    per_seed = []
    for seed in tqdm(budget.seeds, desc="inference", unit="checkpoint"):
        model = weights.load_model(str(checkpoint_of(INFERENCE_ARM, seed, budget, results, work)))[0]
        per_seed.append(compare_inference(model, batches(dataset), dataset.is_thing))
    arms = {}
    for kind, label in (("3.4b", "semantic inference (3.4b)"), ("3.4a", "general inference (3.4a)")):
        values = {m: mean_std([s[kind][m] for s in per_seed]) for m in ("mIoU", "PQ", "PQ_th", "PQ_st")}
        arms[label] = {"runs": [s[kind] for s in per_seed], "seeds": list(budget.seeds),
                       "mean": {m: v[0] for m, v in values.items()}, "std": {m: v[1] for m, v in values.items()},
                       "paper": "better mIoU (§3.4)" if kind == "3.4b" else "-"}
    result = {"study": "inference", "title": "Semantic (3.4b) vs general (3.4a) inference, same checkpoints "
              "(Table 5's mask-matching runs, panoptic shapes)", "metrics": ["mIoU", "PQ", "PQ_th", "PQ_st"],
              "arms": arms, "paper_note": "paper: semantic inference gives the better mIoU (§3.4, no figure "
              "in docs/paper.md); general inference is what produces instances", "arm": asdict(INFERENCE_ARM),
              **about_run(budget, command, time.perf_counter() - start)}
    write_study_files(results, "inference", result)
    return result


# -----------------------------------------------------------------------------------------------
# Decoder cross-attention (notebook 08, like DETR's attention demo)
# -----------------------------------------------------------------------------------------------
@torch.no_grad()
def cross_attention_maps(model: nn.Module, images: Tensor) -> tuple[dict, list[Tensor]]:
    """The model's outputs and each decoder layer's cross-attention weights (B, heads, N, h·w):
    how much each query looks at each image token (res5 cell) of F."""
    maps: list[Tensor] = []
    layers = model.transformer.decoder_layers

    def keep_weights(attention: nn.Module):
        def forward(query, key, value):
            out, weights = type(attention).forward(attention, query, key, value, need_weights=True)
            maps.append(weights)
            return out
        return forward

    for layer in layers:
        layer.cross_attn.forward = keep_weights(layer.cross_attn)
    try:
        outputs = model(images)
    finally:
        for layer in layers:
            del layer.cross_attn.forward  # back to the class's forward
    return outputs, maps


# -----------------------------------------------------------------------------------------------
# Files: JSON, markdown table, PNG (PIL only)
# -----------------------------------------------------------------------------------------------
def percent(mean: float, std: float) -> str:
    return "n/a" if not math.isfinite(mean) else f"{100 * mean:.1f} ± {100 * std:.1f}"


def markdown_table(result: dict) -> str:
    metrics = result["metrics"]
    lines = [f"# {result['title']}", "",
             "| arm | " + " | ".join(f"{m} (mean ± std)" for m in metrics) + " | seeds | paper |",
             "|---" * (len(metrics) + 3) + "|"]
    for label, arm in result["arms"].items():
        cells = [percent(arm["mean"][m], arm["std"][m]) for m in metrics]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {len(arm['seeds'])} | {arm['paper']} |")
    return "\n".join(lines + ["", *footer(result)]) + "\n"


def footer(result: dict) -> list[str]:
    budget = result["budget"]
    return [f"{result.get('paper_note', '')}", "",
            f"Budget per run: {budget['iters']} iterations, batch {budget['batch_size']}, "
            f"{budget['image_size']}x{budget['image_size']} images, {budget['val_images']} validation images, "
            f"seeds {budget['seeds']}.", f"Command: `{result['command']}`", f"Machine: {result['machine']}",
            f"Wall time: {duration(result['wall_s'])} (training and evaluation of the runs listed)."]


def duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def write_study_files(results: Path, name: str, result: dict) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(strict_json(result, indent=1))
    (results / f"{name}.md").write_text(markdown_table(result))
    bars = {label: (arm["mean"][m], arm["std"][m]) for m in result["metrics"] for label, arm in
            [(f"{label} {m}" if len(result["metrics"]) > 1 else label, arm) for label, arm in result["arms"].items()]}
    draw_bars(bars, f"{result['title']}: {', '.join(result['metrics'])} (%), mean ± std over seeds",
              results / f"{name}.png")


def write_figure4_files(results: Path, result: dict) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / "figure4.json").write_text(strict_json(result, indent=1))
    lines = [f"# {result['title']}", "", "| checkpoint | queries | most categories of one query | median | "
             "queries predicting no category |", "|---|---|---|---|---|"]
    for label, row in result["summary"].items():
        lines.append(f"| {label} | {row['queries']} | {row['max']} | {row['median']:g} | {row['never']} |")
    lines += ["", "Models: the classes study's MaskFormers (N = 20) on shapes with K classes.",
              "paper: Figure 4 (ADE20K val, 100 queries): queries differ widely in how many categories they predict.",
              *footer({**result, "paper_note": ""})[1:]]
    (results / "figure4.md").write_text("\n".join(lines) + "\n")
    shown = [label for label in result["counts"] if "seed" not in label or label.endswith("seed 0")]
    bars = {f"{label.split(',')[0]} #{i}": (float(v), 0.0) for label in shown
            for i, v in enumerate(result["counts"][label])}
    models = " | ".join(label.split(",")[0] for label in shown)
    draw_bars(bars, f"Figure 4: unique categories predicted per query, sorted (seed 0; left to right: {models})",
              results / "figure4.png", scale=1.0)


def draw_bars(bars: dict[str, tuple[float, float]], title: str, path: Path, scale: float = 100.0,
              size: tuple[int, int] = (720, 400)) -> None:
    """A bar per entry (mean x scale) with a ± std error bar; labels under the bars when they fit."""
    W, H, pad, bottom = size[0], size[1], 50, 90
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    finite = [(m + s) * scale for m, s in bars.values() if math.isfinite(m)]
    top = max(finite + [1e-9]) * 1.1
    width = (W - 2 * pad) / max(len(bars), 1)
    draw.line([(pad, H - bottom), (W - pad, H - bottom)], fill="black")
    for row, start in enumerate(range(0, len(title), 110)):
        draw.text((pad, 8 + 12 * row), title[start:start + 110], fill="black")
    draw.text((4, pad - 14), f"{top:.3g}", fill="black")
    for i, (label, (mean, std)) in enumerate(bars.items()):
        if not math.isfinite(mean):
            continue
        x0, x1 = pad + i * width + 0.15 * width, pad + (i + 0.85) * width

        def y(v: float) -> float:
            return H - bottom - (H - bottom - pad) * v * scale / top

        draw.rectangle([x0, y(mean), x1, H - bottom], fill=(31, 119, 180))
        xc = (x0 + x1) / 2
        draw.line([(xc, y(mean - std)), (xc, y(mean + std))], fill="black", width=2)
        if width > 40:
            draw.text((x0, y(mean + std) - 12), f"{mean * scale:.1f}", fill="black")
            for row, start in enumerate(range(0, len(label), max(int(width // 6), 4))):
                draw.text((x0, H - bottom + 4 + 11 * row), label[start:start + max(int(width // 6), 4)], fill="black")
    img.save(path)


# -----------------------------------------------------------------------------------------------
# Command line
# -----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("study", choices=[*STUDY_NAMES, "all"])
    p.add_argument("--quick", action="store_true", help="a tiny budget and one seed (CI): checks the code, "
                   "not the findings")
    p.add_argument("--results", default=None, help="folder of the result files (default: results/, "
                   "with --quick: runs/experiments-quick/results)")
    p.add_argument("--work", default=None, help="folder of the training runs (default: runs/experiments)")
    p.add_argument("--checkpoint", default=None, help="figure4: a train.py checkpoint instead of the study's "
                   "own runs (with --data, --data-root); files go to CHECKPOINT_FOLDER/figure4/ unless --results")
    p.add_argument("--data", default="shapes", choices=datasets.DATASETS, help="figure4 --checkpoint: its dataset")
    p.add_argument("--data-root", default=None, help="figure4 --checkpoint: the dataset's folder")
    p.add_argument("--val-images", type=cli.int_at_least(1), default=None,
                   help="figure4 --checkpoint: only the first N validation images")
    args = p.parse_args(argv)
    budget = QUICK if args.quick else FULL
    default_root = Path("runs") / ("experiments-quick" if args.quick else "experiments")
    results = Path(args.results) if args.results else (default_root / "results" if args.quick else Path("results"))
    if args.checkpoint and not args.results:  # the committed results/figure4.* stay as they are
        results = Path(args.checkpoint).parent / "figure4"
    work = Path(args.work) if args.work else default_root
    command = "python -m tooling.experiments " + " ".join(argv if argv is not None else sys.argv[1:])
    torch.set_num_threads(1)
    for name in STUDY_NAMES if args.study == "all" else (args.study,):
        if name in STUDIES:
            result = run_study(name, budget, results, work, command)
        elif name == "figure4":
            loader = None
            if args.checkpoint:
                loader = figure4_loader(args, budget)
            result = figure4(budget, results, work, command, Path(args.checkpoint) if args.checkpoint else None,
                             loader)
        else:
            result = inference_study(budget, results, work, command)
        print(f"{name}: wrote {results / name}.json, .md, .png ({duration(result['wall_s'])})")


def figure4_loader(args: argparse.Namespace, budget: Budget):
    """The validation batches of --data for a --checkpoint (its recipe's test size)."""
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f"error: --checkpoint {args.checkpoint}: no such file")
    ckpt = read_checkpoint(args.checkpoint)
    recipe = ckpt.get("recipe", {}) if isinstance(ckpt, dict) else {}
    size = (recipe.get("test_size") or budget.image_size, recipe.get("test_max_size") or budget.image_size)
    try:
        dataset = evaluation.evaluation_dataset(args.data, args.data_root, "semantic", size, args.val_images)
    except data.DatasetError as e:
        raise SystemExit(f"error: {e}") from None
    return batches(dataset, batch_size=1 if args.data != "shapes" else 8)


if __name__ == "__main__":
    main()
