"""Pictures: predictions drawn over images, the training-loss curve, and a grid of dataset items.

Not a part of the paper's method; these are the figures a reader looks at: infer.py's overlays
(Figure 2's output, the semantic map of Eq. (3.4b) or the panoptic segments), train.py's end-of-run
figures, and `python -m tooling.prepare --preview` (the ground truth z_gt of Eq. (3.2b) as colours); and the
files `python infer.py --input` writes for each image (label PNG or COCO panoptic PNG + JSON, and
the overlay).

Reading order: `draw_overlay` (a semantic map over an image, with a legend) ->
`draw_panoptic_overlay` -> `draw_loss_curve` -> `save_overlays` -> `save_figures` (train.py's) ->
`preview` -> infer.py's output files: `output_names` / `output_stems` (never over an input or
another image's output) -> `write_semantic` / `write_panoptic`.
All drawing is PIL + numpy (matplotlib is not a runtime dependency).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn

import inference
from data import colorize, denormalize, make_palette
from machinery import dataset_files
from metrics import strict_json


def draw_overlay(image: np.ndarray, label_map: np.ndarray | Tensor, class_names: list[str], palette: np.ndarray,
                 alpha: float = 0.5) -> Image.Image:
    """The image (H, W, 3) uint8 with a semantic map (H, W) blended over it, plus a legend of the
    classes present (largest first). Labels outside 0..K-1 are left undrawn."""
    label_map = np.asarray(torch.as_tensor(label_map).cpu())
    colours = colorize(label_map, palette)  # (H, W, 3)
    known = (label_map >= 0) & (label_map < len(palette))
    classes, counts = np.unique(label_map[known], return_counts=True)
    entries = [(class_names[c], palette[c], n / label_map.size) for c, n in zip(classes, counts)]
    return _blend_with_legend(image, colours, known, entries, alpha)


def draw_panoptic_overlay(image: np.ndarray, pan_seg: np.ndarray | Tensor, segments_info: list[dict],
                          class_names: list[str], palette: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The image with each panoptic segment blended over it: stuff in its class colour, each thing
    instance in a shade of its class colour, white segment borders, and a legend of the classes."""
    pan_seg = np.asarray(torch.as_tensor(pan_seg).cpu())
    colours = np.zeros((*pan_seg.shape, 3), np.uint8)
    area_of_class: dict[int, int] = {}
    for k, segment in enumerate(segments_info):
        c = segment["category_id"]
        colour = palette[c].astype(np.int64)
        if segment["isthing"]:  # a different shade per instance
            colour = np.clip(colour + (k % 5 - 2) * 28, 0, 255)
        where = pan_seg == segment["id"]
        colours[where] = colour
        area_of_class[c] = area_of_class.get(c, 0) + int(where.sum())
    border = np.zeros(pan_seg.shape, bool)
    border[:, 1:] |= pan_seg[:, 1:] != pan_seg[:, :-1]
    border[1:, :] |= pan_seg[1:, :] != pan_seg[:-1, :]
    colours[border] = 255
    drawn = (pan_seg > 0) | border
    entries = [(class_names[c], palette[c], n / pan_seg.size)
               for c, n in sorted(area_of_class.items(), key=lambda kv: kv[0])]
    return _blend_with_legend(image, colours, drawn, entries, alpha)


def _blend_with_legend(image: np.ndarray, colours: np.ndarray, drawn: np.ndarray, entries: list,
                       alpha: float, max_entries: int = 30) -> Image.Image:
    """Blend `colours` over `image` where `drawn`; add a legend panel (swatch, name, % of pixels) on the right."""
    blended = image.astype(np.float32)
    blended[drawn] = (1 - alpha) * blended[drawn] + alpha * colours[drawn]
    H, W = image.shape[:2]
    entries = sorted(entries, key=lambda e: -e[2])[:max_entries]
    font = ImageFont.load_default()
    row, width = 16, 12 + max([len(name) for name, _, _ in entries] + [8]) * 7 + 60
    canvas = Image.new("RGB", (W + width, max(H, row * len(entries) + 8)), "white")
    canvas.paste(Image.fromarray(blended.round().astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, (name, colour, fraction) in enumerate(entries):
        y = 4 + k * row
        draw.rectangle([W + 6, y + 2, W + 18, y + 12], fill=tuple(int(v) for v in colour), outline="black")
        draw.text((W + 24, y), f"{name} {100 * fraction:.1f}%", fill="black", font=font)
    return canvas


def draw_loss_curve(history: list[dict], path: Path, size: tuple[int, int] = (640, 360)) -> None:
    """Total training loss against step (log-scale y) with the validation metric marked."""
    points = [(h["step"], h["loss"]) for h in history if "loss" in h and h["loss"] > 0]
    if len(points) < 2:
        return
    W, H, pad = size[0], size[1], 40
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    x0, x1 = points[0][0], points[-1][0]
    ys = [math.log10(v) for _, v in points]
    y0, y1 = min(ys), max(ys) + 1e-9

    def xy(step: float, logv: float) -> tuple[float, float]:
        return (pad + (W - 2 * pad) * (step - x0) / max(x1 - x0, 1), H - pad - (H - 2 * pad) * (logv - y0) / (y1 - y0))

    draw.rectangle([pad, pad, W - pad, H - pad], outline="black")
    draw.line([xy(s, y) for (s, _), y in zip(points, ys)], fill=(31, 119, 180), width=2)
    draw.text((pad, 10), f"training loss (log scale): {points[0][1]:.3g} -> {points[-1][1]:.3g}", fill="black")
    draw.text((pad, H - pad + 8), f"step {x0}", fill="black")
    draw.text((W - pad - 60, H - pad + 8), f"step {x1}", fill="black")
    evals = [h for h in history if any(k.startswith("val_") for k in h)]
    if evals:
        last = evals[-1]
        name = next(k for k in last if k.startswith("val_"))
        draw.text((W - 260, 10), f"{name[4:]} at step {last['step']}: {100 * last[name]:.1f}", fill=(200, 0, 0))
    img.save(path)


def save_overlays(images: list[Tensor], label_maps: list[Tensor], class_names: list[str], palette: np.ndarray,
                  out: Path) -> None:
    """`prediction_{i}.png` in `out` for each normalised image (3, H, W) and its predicted map (H, W)."""
    for i, (image, label_map) in enumerate(zip(images, label_maps)):
        draw_overlay(denormalize(image), label_map.numpy(), class_names, palette).save(out / f"prediction_{i}.png")


def save_figures(model: nn.Module, val_set, train_set, history: list[dict], device: torch.device, out: Path,
                 count: int = 4) -> None:
    """train.py's end-of-run figures: loss_curve.png and prediction_{i}.png (a few validation images with
    the semantic map of Eq. (3.4b) that `model` predicts)."""
    draw_loss_curve(history, out / "loss_curve.png")
    model.eval()
    images = [val_set[i]["image"] for i in range(min(count, len(val_set)))]
    predictions = [inference.predict_semantic(model, image[None].to(device))[0].cpu() for image in images]
    save_overlays(images, predictions, list(train_set.class_names), train_set.palette, out)


def preview(dataset, path: str | Path, num_items: int = 6, columns: int = 2,
            zoom: int = 1) -> None:
    """Save a PNG grid of items: each cell is the image, its colourised sem_seg and, for panoptic
    sets, its segments (pan_seg) in arbitrary colours; `zoom` enlarges small images (nearest)."""
    cells = []
    for i in range(min(num_items, len(dataset))):
        item = dataset[i]
        panels = [denormalize(item["image"]), colorize(item["sem_seg"], dataset.palette)]
        if "pan_seg" in item:
            _, segment_index = torch.unique(item["pan_seg"], return_inverse=True)  # ids -> 0, 1, 2, ...
            panels.append(colorize(segment_index, make_palette(int(segment_index.max()) + 1)[::-1]))
        cell = np.concatenate([np.pad(p, ((0, 0), (0, 2), (0, 0)), constant_values=255) for p in panels], 1)
        cells.append(cell.repeat(zoom, 0).repeat(zoom, 1))
    h, w = max(c.shape[0] for c in cells), max(c.shape[1] for c in cells)
    rows = math.ceil(len(cells) / columns)
    grid = np.full((rows * (h + 6), columns * (w + 6), 3), 255, np.uint8)
    for k, cell in enumerate(cells):
        y, x = (k // columns) * (h + 6), (k % columns) * (w + 6)
        grid[y:y + cell.shape[0], x:x + cell.shape[1]] = cell
    Image.fromarray(grid).save(path)


def output_names(stem: str, task: str) -> list[str]:
    """The files `write_semantic` / `write_panoptic` write for one image."""
    if task == "semantic":
        return [f"{stem}.png", f"{stem}_overlay.png"]
    return [f"{stem}_panoptic.png", f"{stem}_panoptic.json", f"{stem}_overlay.png"]


def output_stems(inputs: list[Path], out: Path, task: str) -> dict[Path, str]:
    """The name each input's outputs start with: its stem ("photo"), or with its extension
    ("photo_jpg") where the stem alone would write over an input file (--output = the input
    folder) or over another image's outputs (photo.jpg and photo.png). One line if still clashing."""
    input_files = {path.resolve() for path in inputs}
    stems = {path: path.stem for path in inputs}
    for attempt in range(2):
        writers: dict[Path, list[Path]] = {}
        for path, stem in stems.items():
            for name in output_names(stem, task):
                writers.setdefault((out / name).resolve(), []).append(path)
        clashes = {target: paths for target, paths in writers.items() if len(paths) > 1 or target in input_files}
        if not clashes:
            return stems
        if attempt == 0:
            for path in {p for paths in clashes.values() for p in paths}:
                stems[path] = f"{path.stem}_{path.suffix.lstrip('.').lower()}"
    target, paths = next(iter(clashes.items()))
    raise SystemExit(f"error: --output {out}: {target.name} would be written for {', '.join(map(str, paths))}"
                     f"{' and is an input' if target in input_files else ''}; give another --output")


def write_semantic(out: Path, stem: str, image: np.ndarray, labels: Tensor, names: list[str],
                   palette: np.ndarray) -> None:
    """<stem>.png: the class id of every pixel (8-bit, or 16-bit for K > 256); <stem>_overlay.png."""
    labels = labels.cpu().numpy()
    raw = labels.astype(np.uint8) if len(names) <= 256 else labels.astype(np.uint16)
    Image.fromarray(raw).save(out / f"{stem}.png")
    draw_overlay(image, labels, names, palette).save(out / f"{stem}_overlay.png")


def write_panoptic(out: Path, stem: str, image: np.ndarray, pan_seg: Tensor, segments_info: list[dict],
                   names: list[str], palette: np.ndarray) -> None:
    """<stem>_panoptic.png (COCO: id = R + 256 G + 256² B), <stem>_panoptic.json, <stem>_overlay.png."""
    rgb = dataset_files.encode_panoptic_png(pan_seg.cpu().numpy().astype(np.uint32))  # (H, W, 3)
    Image.fromarray(rgb).save(out / f"{stem}_panoptic.png")
    info = [{**s, "category_name": names[s["category_id"]]} for s in segments_info]
    (out / f"{stem}_panoptic.json").write_text(strict_json({"file_name": f"{stem}_panoptic.png",
                                                           "segments_info": info}, indent=1))
    draw_panoptic_overlay(image, pan_seg, segments_info, names, palette).save(out / f"{stem}_overlay.png")
