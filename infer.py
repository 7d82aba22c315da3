"""The inference command: MaskFormer on photos, and `--eval` over a validation split.

    python infer.py --config tiny --random-init --input photo.jpg --output out/      # a demo
    python infer.py --weights run/best.pt --input photos/ --data ade20k --output out/
    python infer.py --weights maskformer-swin-tiny-ade --input photo.jpg --output out/   # by name
    python infer.py --list                              # the published models (docs/weights.md)
    python infer.py --eval --data ade20k --data-root datasets --weights run/best.pt --output out/

The method it runs is §3.4's, in inference.py (Eq. (3.4a) and (3.4b), panoptic fusion, the
multi-scale test); models are loaded by machinery/weights.py (our checkpoints, published names,
Hugging Face folders, official .pkl files); its files and overlays are drawn by machinery/drawing.py;
`--eval` runs evaluation.py, which train.py's validation also uses.

Reading order: parse_args → main → run_inference (photos) or evaluation.run_evaluation (`--eval`).
The test resize comes from the checkpoint (evaluation.test_resize), not from a config file.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

import data
import evaluation
import inference
import maskformer
from machinery import augment, cli, datasets, drawing, weights

# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


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
    p.add_argument("--weights", help="checkpoint {'model': state_dict, 'config': dict} (train.py / tooling.convert), "
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
    p.add_argument("--data", choices=datasets.DATASETS, help="dataset for class names, colours and (panoptic) which "
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
    args, parser = parse_args(argv)
    if args.list:
        weights.print_table()
        return None
    for flag, default in zip(("object_mask_threshold", "overlap_threshold"), inference.panoptic_thresholds(args.data)):
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
            return evaluation.run_evaluation(args, parser, device, amp_dtype)
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
    if args.input is None:
        parser.error("--input is required (or --eval)")
    inputs = list_inputs(args.input, parser)
    try:
        names, palette, is_thing = datasets.class_metadata(args.data, args.data_root, None,
                                                           datasets.shapes_options(args))
    except data.DatasetError as e:
        parser.error(f"--data {args.data}: {e}")
    model, saved_names, checkpoint = weights.model_from_flags(args, parser, len(names) if args.data else None)
    model = model.to(device).eval()
    check_task(model, args.task)
    K = model.config.num_classes
    if args.data and len(names) != K:
        raise SystemExit(f"error: the model predicts {K} classes but --data {args.data} has {len(names)}")
    if not args.data:  # names from the checkpoint if it has them, else "class k"
        names, palette, is_thing = datasets.class_metadata(None, None, K)
        names = saved_names or names
    short_edge, long_edge, source = datasets.test_resize(
        args.data, config=asdict(model.config), checkpoint=checkpoint, size=args.size, max_size=args.max_size)
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
            labels = inference.tta_semantic_map(model, image, short_edge, tta_max_size, amp_dtype)
            drawing.write_semantic(out, stems[path], image, labels, names, palette)
            continue
        size = augment.shortest_edge_size(*image.shape[:2], short_edge, long_edge)
        resized, _ = augment.resize(image, {}, size)
        x = data.normalize(resized)[None].to(device)  # (1, 3, h, w)
        orig = [image.shape[:2]]  # predictions at the photo's own size
        if args.task == "semantic":
            labels = inference.predict_semantic(model, x, orig_sizes=orig, amp_dtype=amp_dtype)[0]
            drawing.write_semantic(out, stems[path], image, labels, names, palette)
        else:
            pan_seg, segments_info = inference.predict_panoptic(model, x, is_thing, orig_sizes=orig,
                                                                amp_dtype=amp_dtype,
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
