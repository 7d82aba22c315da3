"""Download, check and convert a published MaskFormer (or an ImageNet backbone) by name; print where it is.

    python -m tooling.fetch swin-t-ade            # only download + convert; prints the cached checkpoint's path
    python -m tooling.fetch imagenet-resnet50     # an ImageNet backbone for train.py --weights imagenet
    python -m tooling.fetch --list                # the table of published models (as python infer.py --list)

Not a part of the method: the names, files, checksums, cache and mirror are machinery/weights.py's;
this is their command line.
"""

from __future__ import annotations

import argparse
import sys

from machinery import conversion
from machinery.weights import MIRROR_ENV, WeightsError, imagenet_checkpoint, print_table, resolve


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tooling.fetch",
                                description="Download, check and convert published MaskFormer weights by name.")
    p.add_argument("name", nargs="?", help="a model name or alias (see --list), or imagenet-BACKBONE")
    p.add_argument("--list", action="store_true", help="print the table of published models")
    p.add_argument("--mirror", help=f"base URL or file:// folder replacing the publishers' (or ${MIRROR_ENV})")
    args = p.parse_args(argv)
    if args.list or args.name is None:
        print_table()
        return
    try:
        if args.name.startswith("imagenet-"):
            path = imagenet_checkpoint(args.name.removeprefix("imagenet-"), args.mirror)
        else:
            path = resolve(args.name, args.mirror)
    except (WeightsError, conversion.ConversionError) as e:
        raise SystemExit(f"error: {e}") from None
    print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
