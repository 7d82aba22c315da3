"""Convert published MaskFormer / ImageNet weights into a checkpoint of ours (for infer.py and train.py --weights).

    python -m tooling.convert --from hf --input maskformer-swin-tiny-ade/ --output swin_t_ade.pt
    python -m tooling.convert --from detectron2 --input model_final_d8dbeb.pkl --config swin_t --output ours.pt
    python -m tooling.convert --from torchvision --input resnet50-0676ba61.pth --output r50_in1k.pt
    python -m tooling.convert --from swin --input swin_tiny_patch4_window7_224.pth --output swin_t_in1k.pt
    python -m tooling.convert --from d2-imagenet --input R-103.pkl --output r101c_in1k.pt    # R101c's backbone

The renaming rules and the checks that make a conversion exact are machinery/conversion.py's part.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

import maskformer
from machinery import datasets, weight_files
from machinery.checkpoint import save_checkpoint
from machinery.conversion import ConversionError, convert_file


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Convert published MaskFormer / ImageNet weights to ours "
                                            "(a checkpoint for infer.py and train.py --weights).")
    p.add_argument("--from", dest="source", required=True,
                   choices=("hf", "detectron2", "torchvision", "swin", "d2-imagenet"),
                   help="hf: a Hugging Face model folder; detectron2: an official model_final_*.pkl; "
                        "torchvision / swin: an ImageNet classifier .pth; d2-imagenet: a detectron2 ImageNet "
                        ".pkl (R-50.pkl, R-103.pkl of R101c)")
    p.add_argument("--input", required=True, help="the folder (hf) or file to convert")
    p.add_argument("--output", required=True, help="where to write {'model', 'config', 'class_names'} (.pt)")
    p.add_argument("--config", choices=list(maskformer.CONFIGS),
                   help="our config (required for detectron2; default: derived from the input)")
    args = p.parse_args(argv)
    try:
        model, state, class_names = convert_file(args.source, args.input, args.config)
    except (ConversionError, weight_files.UnsafePickleError) as e:
        raise SystemExit(f"error: {e}") from None
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {"model": state, "config": asdict(model.config), "class_names": class_names}
    if args.source in ("hf", "detectron2"):  # a whole published model: the test resize it was evaluated at
        checkpoint["recipe"] = datasets.published_recipe(checkpoint["config"])
    save_checkpoint(Path(args.output), checkpoint)
    print(f"wrote {len(state)} tensors ({sum(v.numel() for v in state.values()) / 1e6:.2f}M values) of "
          f"{model.config.backbone} / {model.config.head} (K = {model.config.num_classes}) to {args.output}")


if __name__ == "__main__":
    main(sys.argv[1:])
