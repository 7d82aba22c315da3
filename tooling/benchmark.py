"""Speed and memory: our MaskFormer beside the paper's Table 1 and the Hugging Face port.

    python -m tooling.benchmark                                   # CPU: r50, swin_t, tiny; float32
    python -m tooling.benchmark --device cuda                     # CUDA: bf16 autocast, eager and torch.compile
    python -m tooling.benchmark --configs tiny --repeats 1 --size 128 --json out.json
    python -m tooling.benchmark --ddp 2 --configs tiny --size 128      # 2 processes (DDP) against 1, per step
    python -m tooling.benchmark --time-to-accuracy --runs 3   # `python train.py` x 3: time to 0.70/0.80 mIoU, phases

What it prints (and writes as JSON with --json), with the machine, torch version, threads and dtype:

1. Params and FLOPs of every named config beside Table 1 (flops.flops_table).
2. For each of --configs: inference latency (batch 1 at the crop size: 512, 640 for Swin-B/L) and
   the time of one training step (forward, Hungarian matching, loss, backward, AdamW step; batch 2
   on CPU, 16 on CUDA) on realistic random targets (10 ADE-like segments per image), images/s,
   achieved GFLOP/s and peak memory. Each time is the median of --repeats timed runs after
   --warmup untimed ones; the variants (ours, the HF port, ...) run interleaved, one of each per
   round, so a change of machine load hits all of them alike (the machine may be shared).
3. The same for the Hugging Face port (`transformers.MaskFormerForInstanceSegmentation`, built by
   tests/hf_reference.py offline from a MaskFormerConfig equal to the named config, random
   weights, its own loss via mask_labels / class_labels), and the ratios ours / HF. Skipped, with
   a note, without transformers.
4. Model-FLOPs utilisation: achieved FLOP/s / the GPU's dense bf16 peak (datasheet table) on CUDA,
   / the faster of a 2048^3 matmul and a 256-channel 3x3 convolution measured on the spot on CPU
   (how close to the machine's dense-kernel speed the whole model runs); on CUDA also
   torch.compile on and off (--compile). On CPU, how much of each step is spent in convolution
   and matmul kernels ("dense %", dense_kernel_share), and the floor under the ratio ours / HF
   that those kernels set: ours' time in them / HF's whole time.
5. The data pipeline's samples/s (`training_speed.data_pipeline_speed`) next to what a training step
   consumes (images/s).
6. Only with --ddp N (instead of 1-5): the training step of N processes under DistributedDataParallel
   (distributed.wrap_for_training; gloo on CPU, NCCL on CUDA) against 1 process, each with the same batch
   per process and the same threads, and the all-reduce of the gradients alone (`ddp_speed`): the
   distributed path's overhead per step (on CPU communication only; the cores are shared).
7. Only with --time-to-accuracy (instead of 1-5): `training_speed.time_to_accuracy`, --runs fresh
   `python train.py` runs, the wall time each takes to 0.70 and 0.80 validation mIoU, images/s, the
   medians, then the share of the run's time per phase (`phase_profile`).

Fairness: every variant gets the same images, targets, threads, dtype and optimizer (AdamW, lr 1e-4,
weight decay 1e-4, PyTorch defaults otherwise). Our backbones run in channels-last memory (see
backbones.py); the port does not by default, so it runs twice: as shipped ("HF") and converted to
channels-last ("HF channels_last", model and input), and the ratios are given against both.
Two differences are the models' own and stay: the port's ResNet has trainable BatchNorm (ours the
official FrozenBatchNorm, `tiny` excepted), and the port's auxiliary losses do not work in
transformers 5.x, so the like-for-like training comparison is "ours (no aux loss)" (one matched
loss, deep_supervision=False) against HF; "ours" trains with deep supervision as the paper does.

FLOPs: flops.count_flops (multiply-adds of one eval-mode forward) x 2; a training step is
counted as 3 forward passes (backward = 2 forwards), the usual estimate; the loss is not counted.
Peak memory: on CPU the RSS high-water mark of a fresh process that builds one variant and runs it
(so the variants do not share a high-water mark), less that process's RSS before it built the model
(Python, torch and, for HF, transformers); on CUDA torch.cuda.max_memory_allocated.

Reading order: main → measure_config → build_variant (our model; the port from tests/hf_reference.py) →
step functions → tooling/timing.py (time_interleaved, peak memory, dense_kernel_share) → peak_memory_cpu →
print_speed_table; random_ade_targets; ddp_speed. Sections 5 and 7 (data_pipeline_speed,
time_to_accuracy) are tooling/training_speed.py's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

import maskformer
from losses import MaskFormerLoss
from machinery import distributed
from tests import hf_reference  # the HF port: test-only code (transformers is a dev requirement, optional here)
from tooling import flops, timing, training_speed
from tooling.timing import fmt

DEFAULT_CONFIGS = ("r50", "swin_t", "tiny")
SEGMENTS_PER_IMAGE = 10  # ADE20K-150 images hold ~8-10 classes


# ---------------------------------------------------------------------------------------------
# What runs: variants of a model (ours / the HF port, layout, compile) and their step functions
# ---------------------------------------------------------------------------------------------


@dataclass
class Variant:
    """One model to time. `label` names its row; `modes` says which of "infer" / "train" it runs."""

    label: str
    impl: str  # "ours" | "hf"
    channels_last: bool = False  # convert model and input to channels-last (HF only: ours always is)
    compile: bool = False  # torch.compile the model
    deep_supervision: bool = True  # ours only: auxiliary losses on every decoder layer
    modes: tuple[str, ...] = ("infer", "train")
    model: nn.Module | None = field(default=None, repr=False)


def variant_specs(use_hf: bool, compile_modes: list[bool]) -> list[Variant]:
    """The rows of one config: ours, ours without auxiliary losses (training only), and the HF port as
    shipped and in channels-last; each once per torch.compile setting in `compile_modes`."""
    specs = []
    for compiled in compile_modes:
        suffix = " +compile" if compiled else ""
        specs.append(Variant("ours" + suffix, "ours", compile=compiled))
        specs.append(Variant("ours (no aux loss)" + suffix, "ours", compile=compiled, deep_supervision=False,
                             modes=("train",)))
        if use_hf:
            specs.append(Variant("HF" + suffix, "hf", compile=compiled))
            specs.append(Variant("HF channels_last" + suffix, "hf", channels_last=True, compile=compiled))
    return specs


def build_variant(variant: Variant, name: str, device: torch.device) -> Variant:
    """Give `variant` its model (same seed for every variant of a config)."""
    torch.manual_seed(0)
    if variant.impl == "ours":
        model = maskformer.build_model(name, deep_supervision=variant.deep_supervision)
    else:
        model = hf_reference.maskformer_port(maskformer.CONFIGS[name])
    model = model.to(device)
    if variant.channels_last:
        model = model.to(memory_format=torch.channels_last)
    variant.model = model
    return variant


def inference_step(variant: Variant, images: Tensor, amp_dtype: torch.dtype | None) -> Callable[[], None]:
    """One forward pass without gradients, batch 1 (latency)."""
    model = torch.compile(variant.model) if variant.compile else variant.model
    if variant.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        variant.model.eval()
        with torch.no_grad(), torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            model(images) if variant.impl == "ours" else model(pixel_values=images)

    return step


def training_step(variant: Variant, images: Tensor, targets: list[dict],
                  amp_dtype: torch.dtype | None) -> Callable[[], None]:
    """One training step: forward, matching + loss, backward, AdamW step."""
    model = torch.compile(variant.model) if variant.compile else variant.model
    optimizer = torch.optim.AdamW(variant.model.parameters(), lr=1e-4, weight_decay=1e-4)
    autocast = torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    if variant.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    if variant.impl == "ours":
        config = getattr(variant.model, "module", variant.model).config  # a DDP wrapper holds the model
        criterion = MaskFormerLoss(config.num_classes, num_aux_layers=config.dec_layers - 1).to(images.device)

        def loss_fn() -> Tensor:
            with autocast:
                outputs = model(images)
            terms = criterion(outputs, {"targets": targets})  # computed in float32 (losses.py)
            return sum(criterion.weight_dict[k] * v for k, v in terms.items())
    else:
        mask_labels = [t["masks"].float() for t in targets]  # the port's target format
        class_labels = [t["labels"] for t in targets]

        def loss_fn() -> Tensor:
            with autocast:
                return model(pixel_values=images, mask_labels=mask_labels, class_labels=class_labels).loss

    def step() -> None:
        variant.model.train()
        loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def random_ade_targets(batch: int, size: int, num_classes: int, generator: torch.Generator,
                       num_segments: int = SEGMENTS_PER_IMAGE) -> list[dict]:
    """ADE20K-like semantic ground truth, as data.collate gives it: per image a partition of the
    size x size image into `num_segments` regions (Voronoi "stuff" blobs, then rectangles and
    ellipses painted over them), each a distinct random class → {"labels": (n,), "masks": bool (n, size, size)}."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")  # (size, size) each
    num_blobs = num_segments // 2
    targets = []
    for _ in range(batch):
        seeds = torch.rand(num_blobs, 2, generator=generator) * size  # (num_blobs, 2) centres
        distance = (ys - seeds[:, :1, None]) ** 2 + (xs - seeds[:, 1:, None]) ** 2  # (num_blobs, size, size)
        segment = distance.argmin(0)  # (size, size): Voronoi cells 0 .. num_blobs - 1
        for k in range(num_blobs, num_segments):  # objects on top: alternately rectangles and ellipses
            cy, cx = (torch.rand(2, generator=generator) * size).tolist()
            hy, hx = (size * (0.05 + 0.2 * torch.rand(2, generator=generator))).tolist()
            dy, dx = (ys - cy) / hy, (xs - cx) / hx
            inside = (dy.abs() < 1) & (dx.abs() < 1) if k % 2 else dy**2 + dx**2 < 1
            segment[inside] = k
        present = segment.unique()  # (n,): a segment may be painted over entirely
        classes = torch.randperm(num_classes, generator=generator)[:num_segments]
        targets.append({"labels": classes[present % len(classes)],
                        "masks": segment[None] == present[:, None, None]})  # (n, size, size)
    return targets


# ---------------------------------------------------------------------------------------------
# Measuring (tooling/timing.py has the rest): peak memory in a fresh process, FLOPs
# ---------------------------------------------------------------------------------------------


def peak_memory_cpu(args: argparse.Namespace, name: str, variant: Variant, mode: str) -> float | None:
    """Peak memory (MB) of running `variant` in `mode`: the RSS high-water mark of a fresh process
    that builds and runs only that (see `probe`), less its RSS before building the model."""
    command = [sys.executable, "-m", "tooling.benchmark", "--probe", name, variant.label, mode, "--device", args.device,
               "--dtype", args.dtype, "--threads", str(args.threads), "--batch", str(args.batch)]
    if args.size:
        command += ["--size", str(args.size)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600,
                            cwd=Path(__file__).resolve().parents[1])
    for line in result.stdout.splitlines():
        if line.startswith("PEAK_RSS_MB "):
            peak, before = map(float, line.split()[1:])
            return peak - before
    print(f"  (memory probe for {name} / {variant.label} / {mode} failed: {result.stderr.strip()[-300:]})")
    return None


def probe(args: argparse.Namespace) -> None:
    """Child process of peak_memory_cpu: build one variant, run its step twice, print the RSS peak
    and the RSS before the model was built (libraries loaded: transformers for HF, not for ours)."""
    name, label, mode = args.probe
    variant = next(v for v in variant_specs(True, [False, True]) if v.label == label)
    if variant.impl == "hf":
        hf_reference.version()  # imports transformers: its import alone takes memory, not the model's
    before = timing.rss_now_mb()
    step = make_steps(args, name, [build_variant(variant, name, torch.device(args.device))], mode)[label]
    step()
    step()  # the second training step also holds the optimizer state
    print(f"PEAK_RSS_MB {timing.rss_high_water_mb():.1f} {before:.1f}")


def forward_gflops(name: str, size: int) -> float:
    """G multiply-adds of one eval forward of our model on one size x size image (meta device: instant)."""
    with torch.device("meta"):
        model = maskformer.build_model(name)
    return flops.count_flops(model, size)


# ---------------------------------------------------------------------------------------------
# One config: build the variants, time them, measure memory
# ---------------------------------------------------------------------------------------------


def crop_size(args: argparse.Namespace, name: str) -> int:
    return args.size or flops.PAPER_TABLE1.get(name, (512,))[0]


def make_steps(args: argparse.Namespace, name: str, variants: list[Variant], mode: str) -> dict[str, Callable]:
    """{label: step function} of the variants that run `mode`, all on the same inputs."""
    device, size = torch.device(args.device), crop_size(args, name)
    amp_dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(0)
    num_classes = maskformer.CONFIGS[name].num_classes
    if mode == "infer":
        images = torch.randn(1, 3, size, size, generator=generator).to(device)
        return {v.label: inference_step(v, images, amp_dtype) for v in variants if mode in v.modes}
    images = torch.randn(args.batch, 3, size, size, generator=generator).to(device)
    targets = [{k: t.to(device) for k, t in target.items()}
               for target in random_ade_targets(args.batch, size, num_classes, generator)]
    return {v.label: training_step(v, images, targets, amp_dtype) for v in variants if mode in v.modes}


def measure_config(args: argparse.Namespace, name: str, use_hf: bool, notes: list[str]) -> list[dict]:
    """Rows (one per variant) of the speed table for config `name`; problems go to `notes`."""
    device, size = torch.device(args.device), crop_size(args, name)
    compile_modes = [False, True] if args.compile == "both" else [args.compile == "on"]
    variants = [build_variant(v, name, device) for v in variant_specs(use_hf, compile_modes)]
    gflops = forward_gflops(name, size)  # multiply-adds per image
    rows = {v.label: {"config": name, "variant": v.label, "channels_last": v.impl == "ours" or v.channels_last,
                      "compile": v.compile} for v in variants}
    for mode, batch in (("infer", 1), ("train", args.batch)):
        steps = make_steps(args, name, variants, mode)
        times = timing.time_interleaved(steps, args.repeats, args.warmup, device, notes)
        # on CUDA an op returns at launch, so its time there is not the kernel's: CPU only
        dense = timing.dense_kernel_share_interleaved(steps, list(times), args.repeats) if device.type == "cpu" \
            else {}
        flops = 2 * gflops * 1e9 * batch * (3 if mode == "train" else 1)
        for label, seconds in times.items():
            median = statistics.median(seconds)
            row = rows[label]
            row[f"{mode}_s"] = median
            row[f"{mode}_s_all"] = seconds
            row[f"{mode}_img_per_s"] = batch / median
            row[f"{mode}_gflop_per_s"] = flops / median / 1e9
            row[f"{mode}_mfu"] = flops / median / (args.peak_tflops * 1e12)
        for variant in variants:
            if variant.label not in times:
                continue
            row = rows[variant.label]
            if variant.label in dense:
                row[f"{mode}_dense_share"] = dense[variant.label]
                row[f"{mode}_dense_s"] = dense[variant.label] * row[f"{mode}_s"]
            if device.type == "cuda":
                row[f"{mode}_peak_mb"] = timing.peak_memory_cuda(steps[variant.label], device)
            elif args.memory:
                row[f"{mode}_peak_mb"] = peak_memory_cpu(args, name, variant, mode)
    return list(rows.values())


def add_ratios(rows: list[dict]) -> list[dict]:
    """Time ratios ours / HF per config and compile setting: inference "ours" / HF, training
    "ours (no aux loss)" / HF (the like-for-like pair, see the module docstring); None if one is missing."""
    ratios = []
    for row in rows:
        if not row["variant"].startswith("HF"):
            continue
        suffix = " +compile" if row["compile"] else ""
        same_config = {r["variant"]: r for r in rows if r["config"] == row["config"]}
        ratio = {"config": row["config"], "against": row["variant"]}
        for mode, ours_label in (("infer", "ours"), ("train", "ours (no aux loss)")):
            ours_row = same_config.get(ours_label + suffix, {})
            ours, theirs, ours_dense = ours_row.get(f"{mode}_s"), row.get(f"{mode}_s"), ours_row.get(f"{mode}_dense_s")
            ratio[mode] = ours / theirs if ours and theirs else None
            # the floor: ours with only its convolution and matmul kernels left (dense_kernel_share)
            ratio[f"{mode}_floor"] = ours_dense / theirs if ours_dense and theirs else None
        ratios.append(ratio)
    return ratios


# ---------------------------------------------------------------------------------------------
# Scale-out: the training step of N processes (DDP) against one (--ddp N)
# ---------------------------------------------------------------------------------------------


def ddp_worker(rank: int, world_size: int, init_file: str, name: str, args: argparse.Namespace,
               result_file: str) -> None:
    """One of `world_size` processes: `args.repeats` timed training steps of config `name` under DDP
    (world_size 1: the plain model), then the all-reduce of a gradient-sized buffer alone."""
    device = torch.device(args.device if args.device == "cpu" else f"cuda:{rank}")
    torch.set_num_threads(args.threads_per_process)
    if world_size > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{init_file}",
                                rank=rank, world_size=world_size)
    variant = build_variant(Variant("ours", "ours"), name, device)
    # the training script's own DDP set-up (channels-last weights, gradient_as_bucket_view)
    variant.model = distributed.wrap_for_training(variant.model, device, world_size, compile_model=False)
    notes: list[str] = []
    steps = make_steps(args, name, [variant], "train")  # every process: the same random batch
    times = timing.time_interleaved(steps, args.repeats, args.warmup, device, notes)["ours"]
    gradients = torch.zeros(sum(p.numel() for p in variant.model.parameters()), device=device)
    reduce_times = []
    for _ in range(args.repeats if world_size > 1 else 0):
        timing.synchronize(device)
        start = time.perf_counter()
        dist.all_reduce(gradients)
        timing.synchronize(device)
        reduce_times.append(time.perf_counter() - start)
    if rank == 0:
        Path(result_file).write_text(json.dumps({"step_s": times, "allreduce_s": reduce_times,
                                                 "gradient_mb": gradients.numel() * 4 / 2**20, "notes": notes}))
    if world_size > 1:
        dist.destroy_process_group()


def ddp_speed(args: argparse.Namespace) -> dict:
    """Per-step time of `args.ddp` processes under DDP against 1 process, per config (section 6)."""
    backend = "NCCL" if args.device.startswith("cuda") else "gloo"
    print(f"DDP: {args.ddp} processes ({backend}) against 1, training batch {args.batch} per process, "
          f"{args.threads_per_process} thread(s) per process, {args.dtype}; median of {args.repeats} steps after "
          f"{args.warmup} warm-up" + ("; on CPU all processes share the cores, so the difference is "
                                      "communication plus contention" if backend == "gloo" else ""))
    results = {}
    for name in args.configs:
        row = {}
        for world_size in (1, args.ddp):
            with tempfile.TemporaryDirectory() as folder:
                result_file = str(Path(folder) / "result.json")
                mp.spawn(ddp_worker, args=(world_size, str(Path(folder) / "init"), name, args, result_file),
                         nprocs=world_size)
                row[world_size] = json.loads(Path(result_file).read_text())
        one, many = (statistics.median(row[w]["step_s"]) for w in (1, args.ddp))
        reduce = statistics.median(row[args.ddp]["allreduce_s"])
        results[name] = {"processes": args.ddp, "step_s_1": one, f"step_s_{args.ddp}": many,
                         "overhead_s": many - one, "allreduce_s": reduce, "gradient_mb": row[1]["gradient_mb"]}
        print(f"  {name:8} {crop_size(args, name)}px: 1 process {1000 * one:8.1f} ms/step | {args.ddp} processes "
              f"{1000 * many:8.1f} ms/step ({100 * (many / one - 1):+.0f} %) | all-reduce of the "
              f"{row[1]['gradient_mb']:.1f} MB of gradients alone {1000 * reduce:.1f} ms")
    return results


# ---------------------------------------------------------------------------------------------
# Printing
# ---------------------------------------------------------------------------------------------


def machine_info(args: argparse.Namespace) -> dict:
    info = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "dtype": args.dtype if args.dtype == "float32" else f"{args.dtype} autocast",
            "python": platform.python_version(), "cpu": cpu_model()}
    if transformers_version := hf_reference.version():
        info["transformers"] = transformers_version
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
        info["gpu_peak_bf16_tflops"] = timing.peak_tflops(info["gpu"])
    return info


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# Speed-table columns: (header, row key, format, scale)
COLUMNS = [("infer ms", "infer_s", "9.1f", 1000), ("img/s", "infer_img_per_s", "6.2f", 1),
           ("GFLOP/s", "infer_gflop_per_s", "8.1f", 1), ("peak MB", "infer_peak_mb", "8.0f", 1),
           ("train s", "train_s", "8.3f", 1), ("img/s", "train_img_per_s", "6.2f", 1),
           ("GFLOP/s", "train_gflop_per_s", "8.1f", 1), ("peak MB", "train_peak_mb", "8.0f", 1)]
MFU_COLUMNS = [("MFU inf %", "infer_mfu", "9.1f", 100), ("MFU train %", "train_mfu", "11.1f", 100),
               ("dense inf %", "infer_dense_share", "11.1f", 100), ("dense train %", "train_dense_share", "13.1f", 100)]


def print_speed_table(rows: list[dict], ratios: list[dict]) -> None:
    columns = COLUMNS + MFU_COLUMNS
    print(f"{'config':7} {'variant':27} " + " ".join(head.rjust(int(spec.split(".")[0]))
                                                      for head, _, spec, _ in columns))
    for row in rows:
        cells = [fmt(None if row.get(key) is None else row[key] * scale, spec) for _, key, spec, scale in columns]
        print(f"{row['config']:7} {row['variant']:27} " + " ".join(cells))
    if ratios:
        print("\nours / HF (time ratio, < 1: ours faster; training: 'ours (no aux loss)' vs HF; floor: ours' time"
              " in convolution and matmul kernels alone / HF's time, the best ratio reachable with those kernels):")
        for ratio in ratios:
            print(f"  {ratio['config']:7} vs {ratio['against']:27} inference {fmt(ratio['infer'], '5.2f')}"
                  f" (floor {fmt(ratio['infer_floor'], '4.2f')})   training step {fmt(ratio['train'], '5.2f')}"
                  f" (floor {fmt(ratio['train_floor'], '4.2f')})")


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), choices=list(maskformer.CONFIGS),
                        help="named configs to time (default: r50 swin_t tiny)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (the median is shown)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="float32, or autocast to bfloat16/float16 (default: float32 on CPU, bfloat16 on CUDA)")
    parser.add_argument("--batch", type=int, default=None, help="training batch (default: 2 on CPU, 16 on CUDA)")
    parser.add_argument("--size", type=int, default=None, help="image side (default: the crop, 512 or 640)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--compile", choices=["off", "on", "both"], default=None,
                        help="torch.compile the models (default: both on CUDA, off on CPU)")
    parser.add_argument("--no-hf", dest="hf", action="store_false", help="skip the Hugging Face port")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the CPU peak-memory probes (one extra process per row and mode)")
    parser.add_argument("--no-flops-table", dest="flops_table", action="store_false",
                        help="skip the params/FLOPs table of all configs")
    parser.add_argument("--data-workers", type=int, nargs="*", default=[0, 2],
                        help="DataLoader worker counts for the data-pipeline figure (none: skip it)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--probe", nargs=3, default=None, help=argparse.SUPPRESS)  # internal: peak_memory_cpu
    parser.add_argument("--ddp", type=int, default=None, metavar="N",
                        help="instead of the tables: the training step of N processes under DDP against 1 process")
    parser.add_argument("--time-to-accuracy", action="store_true",
                        help="instead of the tables: --runs fresh `python train.py` runs, the wall time each takes "
                             "to reach 0.70 and 0.80 validation mIoU, images/s, the medians, the time per phase")
    parser.add_argument("--runs", type=int, default=3,
                        help="--time-to-accuracy: training runs per seed (the median is shown)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="--time-to-accuracy: train.py --seed of the runs (each seed --runs times); every run "
                             "records its seed and torch version")
    parser.add_argument("--train-args", default="",
                        help="--time-to-accuracy: extra train.py flags, one string (default: none, the default run)")
    parser.add_argument("--profile-steps", type=int, default=20,
                        help="--time-to-accuracy: training steps timed phase by phase")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.runs < 1 or args.profile_steps < 1:
        parser.error("--runs and --profile-steps must be >= 1")
    if min(args.seeds) < 0 or "--seed" in args.train_args.split():
        parser.error("--seeds must be >= 0 (and give the seeds there, not as --train-args '--seed S')")
    if args.size is not None and (args.size < 32 or args.size % 32):
        parser.error(f"--size must be a multiple of 32 (the model's stride), got {args.size}")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.batch = args.batch or (16 if cuda else 2)
    args.compile = args.compile or ("both" if cuda else "off")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    if args.ddp is not None:
        gpus = torch.cuda.device_count() if cuda else None
        if args.ddp < 2 or (gpus is not None and args.ddp > gpus):
            parser.error(f"--ddp N needs 2 <= N{f' <= {gpus} (the GPUs here)' if gpus is not None else ''}, "
                         f"got {args.ddp}")
        # the same threads for every process of both runs, so that only the distributed path differs
        args.threads_per_process = max(1, args.threads // args.ddp) if not cuda else args.threads
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.probe:
        probe(args)
        return {}
    if args.time_to_accuracy:
        results = {"machine": machine_info(args), "time_to_accuracy": training_speed.time_to_accuracy(args)}
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        return results
    if args.ddp:
        results = {"machine": machine_info(args), "ddp": ddp_speed(args)}
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        return results
    results: dict = {"machine": machine_info(args), "notes": []}
    info = results["machine"]
    # MFU reference: the datasheet's dense bf16 peak on CUDA (as usually quoted), else (CPU, or a
    # GPU missing from GPU_PEAK_TFLOPS) the faster of a matmul and a convolution measured here in the run's dtype
    args.peak_tflops, info["mfu_reference"] = info.get("gpu_peak_bf16_tflops"), "datasheet dense bf16 peak"
    if args.peak_tflops is None:
        args.peak_tflops = timing.measured_peak_tflops(torch.device(args.device), getattr(torch, args.dtype))
        info["mfu_reference"] = (f"measured: the faster of a 2048^3 matmul and a 3x3 256-channel convolution, "
                                 f"{args.dtype}, {args.threads} threads")
    info["mfu_reference_tflops"] = args.peak_tflops
    print(f"machine: {info.get('gpu', info['cpu'])} | torch {info['torch']} | {info['threads']} threads | "
          f"{info['dtype']} | device {info['device']}" + (f" | transformers {info['transformers']}"
                                                          if "transformers" in info else ""))
    if args.flops_table:
        print("\nParams and FLOPs (G multiply-adds, one image at the crop size) beside the paper's Table 1:")
        results["flops_table"] = flops.flops_table()
        flops.print_flops_table(results["flops_table"])

    why_no_hf = hf_reference.why_unavailable() if args.hf else None
    use_hf = args.hf and why_no_hf is None
    if why_no_hf:
        results["notes"].append(f"Hugging Face rows skipped: {why_no_hf}")
    rows = []
    for name in args.configs:
        rows += measure_config(args, name, use_hf, results["notes"])
    results["speed"], results["ratios"] = rows, add_ratios(rows)
    sizes = sorted({crop_size(args, name) for name in args.configs})
    memory = ("torch.cuda.max_memory_allocated during one call" if args.device.startswith("cuda") else
              "RSS high-water of a fresh process running only that row, less its RSS before the model was built")
    print(f"\nSpeed: median of {args.repeats} timed runs after {args.warmup} warm-up, variants interleaved; "
          f"inference batch 1, training batch {args.batch}, at {' / '.join(f'{s}x{s}' for s in sizes)}.\n"
          f"  GFLOP/s: 2 x count_flops per image / time (training step = 3 forwards); MFU: GFLOP/s / "
          f"{1000 * args.peak_tflops:.0f} GFLOP/s ({info['mfu_reference']}).\n"
          f"  peak MB: {memory}.\n"
          f"  dense %: share of the time in convolution and matmul kernels (timed op by op in {args.repeats} more"
          f" calls, median of the per-call shares; CPU only).\n"
          f"  ours always runs channels-last (backbones.py); 'HF channels_last': the port with model and input"
          f" converted.")
    print_speed_table(rows, results["ratios"])

    if args.data_workers:
        pipeline = training_speed.data_pipeline(max(sizes), tuple(args.data_workers))
        results["data_pipeline"] = pipeline
        print("\nData pipeline (data_pipeline_speed, ADE20K-like images, training augmentation):")
        if isinstance(pipeline, str):
            print(f"  {pipeline}")
        else:
            for key, value in pipeline.items():
                if key.startswith("ade20k"):  # DataLoader rates; "<stage>_ms": one process, per image
                    print(f"  {key:22} {value:8.1f} samples/s")
                elif key.endswith("_ms"):
                    print(f"  {key:22} {value:8.1f} ms per image")
            consumed = ", ".join(f"{r['config']} {r['train_img_per_s']:.2f}" for r in rows if r["variant"] == "ours")
            print(f"  a training step consumes (ours, img/s): {consumed}")
    for note in results["notes"]:
        print(f"note: {note}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
