"""The GPU check: one command that proves the CUDA paths in a few minutes of device time (issue #32).

    bash tooling/gpu_check.sh OUT --device cuda          # on a CUDA machine: <= 8 minutes by its time boxes
    bash tooling/gpu_check.sh OUT --device cpu --quick   # the same steps, tiny sizes: CI, so it cannot rot

No line of the CUDA paths (autocast, NCCL, torch.compile, pinned-memory loaders, the full-scale recipe's
memory) had run on a GPU when this was written, and a lent GPU comes with minutes of device time: so the
check is one script, written and tested on CPU, waiting. Each step runs in its own subprocess under its
own time box (coreutils `timeout`, then the step's whole process group is killed), so one failure or
hang still leaves the other steps' figures. Everything goes to OUT/gpu_check.json (one entry per step:
name, command, status, wall seconds, box, parsed figures) and OUT/gpu_check.log (every step's output);
one summary line per step is printed. docs/speed.md, "The GPU check", says what each step measures.

The steps (`STEPS`): the CUDA tests; tooling.benchmark in fp32 and bf16; the ADE20K recipe at full scale
(crop 512, 2 images per GPU, bf16) on synthetic ADE-shaped data for r50 and swin_t; torchrun with exact
resume after a kill, torch.compile on and off, two processes where two GPUs exist; infer.py on a
2000 x 3000 photo, single scale and --tta. A step that cannot run here is "skipped: needs CUDA".

Reading order: `Step` / `STEPS` (what runs, its time box) -> `run_step` (one step under its box) ->
`run_steps` / `main` (the driver: the JSON, the log, the summary) -> the step bodies (`step_*`), each run
as `python -m tooling.gpu_check --step NAME OUT ...` and ending with one `FIGURES` line the driver parses.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tooling.training_speed import write_ade_like_fixture

REPO = Path(__file__).resolve().parents[1]
FIGURES = "GPU_CHECK_FIGURES "  # a step's last stdout line starting with this: its figures as JSON
PEAK = "GPU_CHECK_PEAK "        # the infer wrapper's line: wall time and peak memory of one infer.py run
OFFICIAL_R50_GB = 4.3           # the official model zoo's training memory per GPU, MaskFormer R50 on ADE20K
CUDA_BOX_LIMIT_S = 480          # the default boxes on CUDA must sum to at most 8 minutes


# -----------------------------------------------------------------------------------------------
# The steps and their time boxes
# -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One step: its name, what it needs ("" / "cuda" / "2 gpus"), its box on CUDA and with --quick on CPU.

    "cuda" marks what is possible on a CPU but takes minutes on two cores: bf16 kernels in the benchmark (the
    recipe step still trains in bf16 there) and inductor's compile of the model."""
    name: str
    needs: str
    box_cuda_s: int
    box_quick_s: int
    what: str


STEPS = [
    Step("cuda_tests", "", 30, 90, "the tests named *cuda* (pytest -k cuda): CUDA against CPU"),
    Step("benchmark_fp32", "", 70, 90, "tooling.benchmark, fp32: inference and training step, img/s, MFU, peak"),
    Step("benchmark_bf16", "cuda", 70, 0, "tooling.benchmark, bf16 autocast: the same"),
    Step("recipe_r50", "", 45, 90, "ADE20K recipe at full scale, r50, bf16: loss, step time, peak memory"),
    Step("recipe_swin_t", "", 45, 90, "ADE20K recipe at full scale, swin_t, bf16: the same"),
    Step("resume", "", 50, 90, "torchrun, 1 process: N iterations straight vs killed at N/2 and --resume"),
    Step("compile", "cuda", 90, 0, "torchrun, 1 process: torch.compile on vs off, the same losses"),
    Step("ddp2", "2 gpus", 30, 30, "torchrun, 2 processes (NCCL): loss finite"),
    Step("infer", "", 40, 90, "infer.py on a 2000 x 3000 photo, single scale and --tta: wall time, peak memory"),
]


def gpu_count() -> int:
    """CUDA devices here (0 without CUDA); torch.cuda is only asked once it says it is available."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def why_skipped(step: Step, device: str, gpus: int) -> str | None:
    """'needs CUDA' / 'needs 2 GPUs' when the step cannot run here; None when it can."""
    if step.needs == "cuda" and not device.startswith("cuda"):
        return "needs CUDA"
    if step.needs == "2 gpus":
        if not device.startswith("cuda"):
            return "needs CUDA"
        if gpus < 2:
            return "needs 2 GPUs"
    return None


# -----------------------------------------------------------------------------------------------
# The driver: each step in its own subprocess under its own box
# -----------------------------------------------------------------------------------------------
def parse_figures(text: str) -> dict:
    """The last FIGURES line of a step's output as a dict ({} if none or unreadable)."""
    for line in reversed(text.splitlines()):
        if line.startswith(FIGURES):
            try:
                return json.loads(line[len(FIGURES):])
            except ValueError:
                return {}
    return {}


def run_step(name: str, command: list[str], box_s: float, log_path: Path) -> dict:
    """Run `command` under `timeout box_s` in its own session, its output to log_path; then kill whatever of
    its process group is left (torchrun's workers). Returns the step's entry for the JSON."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["timeout", "-k", "5", str(box_s), *command], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=box_s + 30)
        except subprocess.TimeoutExpired:  # timeout itself stuck: the group goes
            rc = 124
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
    wall = time.perf_counter() - start
    figures = parse_figures(log_path.read_text(errors="replace"))
    status = "timed_out" if rc in (124, 137) else "ok" if rc == 0 else "failed"
    return {"name": name, "command": " ".join(command), "status": status, "returncode": rc,
            "wall_s": round(wall, 2), "box_s": box_s, "figures": figures}


def summary_line(entry: dict) -> str:
    """One line per step: name, status, wall time against the box, the step's own summary."""
    ran = entry.get("box_s") and not entry["status"].startswith("skipped")
    wall = f"{entry['wall_s']:6.1f}s / {entry['box_s']}s" if ran else ""
    return f"{entry['name']:15} {entry['status']:22} {wall:16} {entry['figures'].get('summary', '')}".rstrip()


def run_steps(steps: list[tuple[str, list[str] | None, float, str | None]], out: Path,
              echo: Callable[[str], None] = print) -> list[dict]:
    """Run (name, command, box_s, skip_reason) in order; skipped steps run nothing. Writes OUT/steps/NAME.log,
    appends every step's output to OUT/gpu_check.log, and echoes one summary line per step."""
    (out / "steps").mkdir(parents=True, exist_ok=True)
    entries = []
    for name, command, box_s, skip in steps:
        if skip:
            entry = {"name": name, "command": " ".join(command or []), "status": f"skipped: {skip}",
                     "returncode": None, "wall_s": 0.0, "box_s": box_s, "figures": {}}
        else:
            entry = run_step(name, command, box_s, out / "steps" / f"{name}.log")
        with open(out / "gpu_check.log", "a") as log:
            log.write(f"===== {name}: {entry['status']} ({entry['wall_s']} s of {box_s} s)\n$ {entry['command']}\n")
            if not skip:
                log.write((out / "steps" / f"{name}.log").read_text(errors="replace") + "\n")
        echo(summary_line(entry))
        entries.append(entry)
    return entries


def step_command(name: str, out: Path, device: str, quick: bool) -> list[str]:
    """How the driver runs step `name`: this module again, with --step."""
    return [sys.executable, "-m", "tooling.gpu_check", str(out), "--step", name, "--device", device] + (
        ["--quick"] if quick else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder for gpu_check.json, gpu_check.log and the steps' files")
    parser.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (default: cuda)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (config tiny, few iterations): CI on CPU")
    parser.add_argument("--only", nargs="+", choices=[s.name for s in STEPS], help="run only these steps")
    parser.add_argument("--box", action="append", default=[], metavar="STEP=SECONDS", help="override a time box")
    parser.add_argument("--step", choices=[s.name for s in STEPS], help=argparse.SUPPRESS)  # one step's body
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    if args.step:
        return STEP_BODIES[args.step](StepContext(args.out / "work" / args.step, args.device, args.quick))

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device here (use --device cpu --quick)")
    boxes = {s.name: s.box_quick_s if args.quick else s.box_cuda_s for s in STEPS}
    for item in args.box:
        name, _, seconds = item.partition("=")
        if name not in boxes or not seconds.replace(".", "", 1).isdigit():
            parser.error(f"--box {item}: expected STEP=SECONDS with STEP one of {', '.join(boxes)}")
        boxes[name] = float(seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.log").write_text("")
    gpus = gpu_count()
    chosen = [s for s in STEPS if not args.only or s.name in args.only]
    plan = [(s.name, step_command(s.name, args.out, args.device, args.quick), boxes[s.name],
             why_skipped(s, args.device, gpus)) for s in chosen]
    total_box = sum(box for _, _, box, skip in plan if not skip)
    print(f"GPU check: {len(plan)} steps on {args.device}{' (quick)' if args.quick else ''}, time boxes "
          f"{total_box:.0f} s in all; output in {args.out}")
    start, started = time.perf_counter(), time.strftime("%Y-%m-%d %H:%M:%S")
    entries = run_steps(plan, args.out)
    report = {"device": args.device, "quick": args.quick, "gpus": gpus,
              "gpu": torch.cuda.get_device_name(0) if gpus else None, "torch": torch.__version__,
              "started": started, "total_s": round(time.perf_counter() - start, 1),
              "boxes_total_s": total_box, "steps": entries}
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    bad = [e["name"] for e in entries if e["status"] in ("failed", "timed_out")]
    print(f"total {report['total_s']} s; wrote {args.out / 'gpu_check.json'}" +
          (f"; not ok: {', '.join(bad)}" if bad else "; every step ok or skipped"))
    return 1 if bad else 0


# -----------------------------------------------------------------------------------------------
# The step bodies: each runs its commands, prints one FIGURES line, exits 0 only if its checks pass
# -----------------------------------------------------------------------------------------------
@dataclass
class StepContext:
    """Where a step works (its own folder), on which device, at which sizes."""
    work: Path
    device: str
    quick: bool

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")


def run(command: list[str], commands: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run one command of a step from the repository root, its output passed through line by line and kept
    (`.stdout`); noted in `commands`."""
    commands.append(" ".join(command))
    print(f"$ {commands[-1]}", flush=True)
    lines = []
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          **kwargs) as proc:
        for line in proc.stdout:  # passed through as it comes: a step killed by its box keeps what it printed
            print(line, end="", flush=True)
            lines.append(line)
    return subprocess.CompletedProcess(command, proc.returncode, "".join(lines))


def finish(figures: dict, ok: bool) -> int:
    """Print the FIGURES line; the step's exit status."""
    print(FIGURES + json.dumps({**figures, "ok": ok}), flush=True)
    return 0 if ok else 1


def step_cuda_tests(ctx: StepContext) -> int:
    """(1) The CUDA tests: every test named *cuda* (they skip themselves without a CUDA device)."""
    commands: list[str] = []
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", "tests"]
    result = run(cmd + (["-m", "not slow"] if ctx.quick else []), commands)
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)",
                                                       result.stdout.splitlines()[-1] if result.stdout else "")}
    figures = {"commands": commands, **counts,
               "summary": ", ".join(f"{n} {w}" for w, n in counts.items() if w != "deselected") or "no result"}
    return finish(figures, result.returncode == 0 and counts.get("passed", 0) > 0)


def step_benchmark(ctx: StepContext, dtype: str) -> int:
    """(2) tooling.benchmark: inference (batch 1) and a training step, ours beside the HF port where installed."""
    commands: list[str] = []
    ctx.work.mkdir(parents=True, exist_ok=True)
    path = ctx.work / f"benchmark_{dtype}.json"
    cmd = [sys.executable, "-m", "tooling.benchmark", "--device", ctx.device, "--dtype", dtype, "--compile", "off",
           "--no-flops-table", "--data-workers", "--json", str(path)]
    if ctx.quick:
        cmd += ["--configs", "tiny", "--size", "64", "--batch", "1", "--repeats", "1", "--warmup", "0", "--no-hf",
                "--no-memory"]
    else:
        cmd += ["--configs", "r50", "swin_t", "--repeats", "3", "--warmup", "1"]
    result = run(cmd, commands)
    rows = []
    if path.is_file():
        rows = [{k: v for k, v in row.items() if isinstance(v, (int, float, str, bool)) or v is None}
                for row in json.loads(path.read_text()).get("speed", [])]
    ours = [r for r in rows if r.get("variant") == "ours"]
    numbers = [r.get(k) for r in ours for k in ("infer_img_per_s", "train_img_per_s")]
    ok = result.returncode == 0 and bool(ours) and all(isinstance(x, (int, float)) and x > 0 for x in numbers)
    summary = "; ".join(f"{r['config']} infer {r.get('infer_img_per_s', 0):.1f} img/s, train "
                        f"{r.get('train_img_per_s', 0):.2f} img/s" + (f", peak {r['train_peak_mb']:.0f} MB"
                                                                     if r.get("train_peak_mb") else "")
                        for r in ours)
    return finish({"commands": commands, "dtype": dtype, "rows": rows, "summary": summary or "no rows"}, ok)


def read_metrics(path: Path) -> dict[int, dict]:
    """metrics.jsonl as step -> the last training record of that step (the ones with a loss)."""
    records: dict[int, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                if "loss" in record:
                    records[record["step"]] = record
    return dict(sorted(records.items()))


def train_command(ctx: StepContext, output: Path, *flags: str, processes: int = 0) -> list[str]:
    """python train.py (or torchrun with `processes` processes) into `output`, progress bar off."""
    launcher = [sys.executable, "train.py"] if not processes else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), "train.py"]
    return [*launcher, *flags, "--device", ctx.device, "--output", str(output), "--no-progress", "--log-period", "1"]


def step_recipe(ctx: StepContext, config: str) -> int:
    """(3) The ADE20K recipe at full scale on synthetic ADE-shaped data: crop 512, the recipe's 2 images per GPU
    (global batch 2: one GPU's share of the official 8 x 2, no accumulation), bf16, ~30 iterations, from scratch
    (no download) and without the Swin warm-up (so that the loss can fall within 30 iterations)."""
    commands: list[str] = []
    ctx.work.mkdir(parents=True, exist_ok=True)
    root = write_ade_like_fixture(ctx.work / "ade", num_images=4 if ctx.quick else 16,
                                  size=(96, 128) if ctx.quick else (512, 683))
    iters = 8 if ctx.quick else 30
    flags = ["--data", "ade20k", "--data-root", str(root), "--config", "tiny" if ctx.quick else config,
             "--weights", "none", "--amp", "bf16", "--iters", str(iters), "--batch-size", "2",
             "--per-device-batch", "2", "--warmup-iters", "0", "--val-images", "2", "--seed", "0"]
    flags += ["--crop-size", "64"] if ctx.quick else ["--crop-size", "512"]
    result = run(train_command(ctx, ctx.work / "run", *flags), commands)
    records = read_metrics(ctx.work / "run" / "metrics.jsonl")
    losses = [r["loss"] for r in records.values()]
    k = max(1, len(losses) // 4)
    first, last = (statistics.mean(losses[:k]), statistics.mean(losses[-k:])) if losses else (math.nan, math.nan)
    timed = [2 / r["img_per_s"] for r in list(records.values())[3:] if r.get("img_per_s")]
    figures = {"commands": commands, "config": "tiny" if ctx.quick else config, "iters": iters, "losses": losses,
               "loss_first": first, "loss_last": last, "finite": bool(losses) and all(map(math.isfinite, losses)),
               "falling": last < first, "step_s": statistics.median(timed) if timed else None,
               "max_mem_mb": max((r.get("max_mem_mb", 0) for r in records.values()), default=None) or None}
    if config == "r50" and not ctx.quick:
        figures["official_r50_mb_per_gpu"] = OFFICIAL_R50_GB * 1000
    mem = f", peak {figures['max_mem_mb']} MB" if figures["max_mem_mb"] else ""
    if "official_r50_mb_per_gpu" in figures:
        mem += f" (official zoo {OFFICIAL_R50_GB} GB)"
    step_s = f", {figures['step_s']:.3f} s/step" if figures["step_s"] else ""
    figures["summary"] = f"{figures['config']}: loss {first:.3f} -> {last:.3f} over {len(losses)} steps{step_s}{mem}"
    ok = result.returncode == 0 and len(losses) == iters and figures["finite"] and figures["falling"]
    return finish(figures, ok)


def tiny_run_flags(ctx: StepContext, iters: int, *extra: str) -> list[str]:
    """The small torchrun training of steps 4: tiny config on `shapes`, bf16 on CUDA."""
    return ["--data", "shapes", "--config", "tiny", "--iters", str(iters), "--eval-period", str(iters),
            "--val-images", "4", "--seed", "0", "--threads", "1" if not ctx.cuda else "4",
            *(["--amp", "bf16"] if ctx.cuda else []), *extra]


def final_weights(output: Path) -> dict[str, torch.Tensor]:
    return torch.load(output / "last.pt", map_location="cpu", weights_only=True)["model"]


def step_resume(ctx: StepContext) -> int:
    """(4a) Exact resume under torchrun: N iterations straight, against a run SIGKILLed once its N/2 checkpoint
    exists and continued with --resume to N: the losses of every step and the final weights."""
    commands: list[str] = []
    ctx.work.mkdir(parents=True, exist_ok=True)
    n = 6 if ctx.quick else 20
    flags = tiny_run_flags(ctx, n, "--checkpoint-period", str(n // 2))
    straight, parted = ctx.work / "straight", ctx.work / "parted"
    first = run(train_command(ctx, straight, *flags, processes=1), commands)

    cmd = train_command(ctx, parted, *flags, processes=1)
    commands.append(" ".join(cmd) + "   # SIGKILLed once last.pt exists")
    print(f"$ {commands[-1]}", flush=True)
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)
    while proc.poll() is None and not (parted / "last.pt").exists():
        time.sleep(0.02)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(parted / "last.pt", map_location="cpu", weights_only=True)["step"] if (
        parted / "last.pt").exists() else None
    resumed = run(cmd + ["--resume"], commands)

    a, b = read_metrics(straight / "metrics.jsonl"), read_metrics(parted / "metrics.jsonl")
    loss_a, loss_b = [r["loss"] for r in a.values()], [r["loss"] for r in b.values()]
    max_loss_diff = max((abs(x - y) for x, y in zip(loss_a, loss_b)), default=math.nan)
    weight_diff = math.nan
    if (straight / "last.pt").exists() and (parted / "last.pt").exists():
        wa, wb = final_weights(straight), final_weights(parted)
        weight_diff = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    exact = loss_a == loss_b and weight_diff == 0.0
    # CPU: bit for bit. CUDA: some kernels are not deterministic, so a tolerance
    close = len(loss_a) == len(loss_b) == n and (exact or ctx.cuda and max_loss_diff <= 1e-2 * max(loss_a))
    figures = {"commands": commands, "iters": n, "killed": killed, "killed_at_step": killed_at,
               "losses_straight": loss_a, "losses_resumed": loss_b, "max_loss_diff": max_loss_diff,
               "max_weight_diff": weight_diff, "bit_exact": exact,
               "summary": f"killed at step {killed_at} of {n}, resumed: "
                          + ("bit-exact" if exact else f"max loss diff {max_loss_diff:.2e}, weights {weight_diff:.2e}")}
    ok = first.returncode == 0 and resumed.returncode == 0 and killed and killed_at == n // 2 and close
    return finish(figures, ok)


def step_compile(ctx: StepContext) -> int:
    """(4b) torch.compile on and off under torchrun: the same losses at every step, to a tolerance."""
    commands: list[str] = []
    ctx.work.mkdir(parents=True, exist_ok=True)
    n = 3 if ctx.quick else 10
    results, losses = [], {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        start = time.perf_counter()
        results.append(run(train_command(ctx, ctx.work / name, *tiny_run_flags(ctx, n, *extra), processes=1),
                           commands))
        losses[name] = [r["loss"] for r in read_metrics(ctx.work / name / "metrics.jsonl").values()]
        losses[name + "_wall_s"] = round(time.perf_counter() - start, 1)
    pairs = list(zip(losses["eager"], losses["compiled"]))
    rel = max((abs(x - y) / max(abs(x), 1e-6) for x, y in pairs), default=math.nan)
    tolerance = 5e-2 if ctx.cuda else 1e-2  # bf16 on CUDA; fp32 on CPU
    figures = {"commands": commands, "iters": n, "losses_eager": losses["eager"],
               "losses_compiled": losses["compiled"], "max_rel_loss_diff": rel, "tolerance": tolerance,
               "wall_s_eager": losses["eager_wall_s"], "wall_s_compiled": losses["compiled_wall_s"],
               "summary": f"max relative loss difference {rel:.2e} over {len(pairs)} steps (tolerance {tolerance}); "
                          f"runs {losses['eager_wall_s']} s eager, {losses['compiled_wall_s']} s compiled"}
    ok = all(r.returncode == 0 for r in results) and len(pairs) == n and rel <= tolerance
    return finish(figures, ok)


def step_ddp2(ctx: StepContext) -> int:
    """(4c) Two processes under torchrun (NCCL): the run finishes, every loss finite."""
    commands: list[str] = []
    ctx.work.mkdir(parents=True, exist_ok=True)
    result = run(train_command(ctx, ctx.work / "run", *tiny_run_flags(ctx, 10), processes=2), commands)
    losses = [r["loss"] for r in read_metrics(ctx.work / "run" / "metrics.jsonl").values()]
    finite = bool(losses) and all(map(math.isfinite, losses))
    summary = f"2 processes: {len(losses)} steps, losses {'finite' if finite else 'NOT finite'}"
    return finish({"commands": commands, "losses": losses, "finite": finite, "summary": summary},
                  result.returncode == 0 and finite)


# infer.py in a fresh process, then its wall time and peak memory (RSS; CUDA allocator where CUDA was used)
INFER_WRAPPER = f"""
import json, resource, runpy, sys, time
import torch
sys.argv = sys.argv[1:]
start = time.perf_counter()
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    peak = {{"wall_s": round(time.perf_counter() - start, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peak["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    print({PEAK!r} + json.dumps(peak), flush=True)
"""


def write_photo(path: Path, height: int, width: int, seed: int = 0) -> Path:
    """A photo-like JPEG (smooth colours and noise) of height x width."""
    rng = np.random.default_rng(seed)
    low = Image.fromarray(rng.integers(0, 256, (6, 9, 3)).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    image = np.clip(np.asarray(low, np.float32) + rng.normal(0, 10, (height, width, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(path, quality=90)
    return path


def step_infer(ctx: StepContext) -> int:
    """(5) infer.py on a 2000 x 3000 photo (random r50 weights: speed and memory, not accuracy), single scale and
    --tta (0.5-1.75 x, flipped): wall time of the whole command and peak memory."""
    commands: list[str] = []
    ctx.work.mkdir(parents=True, exist_ok=True)
    height, width = (200, 300) if ctx.quick else (2000, 3000)
    photo = write_photo(ctx.work / "photo.jpg", height, width)
    figures: dict = {"commands": commands, "photo": [height, width]}
    ok = True
    for mode, extra in (("single", []), ("tta", ["--tta"])):
        cmd = [sys.executable, "-c", INFER_WRAPPER, "infer.py", "--random-init", "--config",
               "tiny" if ctx.quick else "r50", "--input", str(photo), "--output", str(ctx.work / mode),
               "--device", ctx.device, *(["--size", "128"] if ctx.quick else []), *extra]
        result = run(cmd, commands)
        peaks = [json.loads(line[len(PEAK):]) for line in result.stdout.splitlines() if line.startswith(PEAK)]
        figures[mode] = peaks[-1] if peaks else None
        ok = ok and result.returncode == 0 and bool(peaks) and any((ctx.work / mode).glob("*.png"))

    def describe(mode: str) -> str:
        peak = figures[mode] or {}
        mem = f"{peak['peak_cuda_mb']} MB CUDA" if "peak_cuda_mb" in peak else f"{peak.get('peak_rss_mb')} MB RSS"
        return f"{mode} {peak.get('wall_s')} s, {mem}"

    figures["summary"] = f"{height}x{width}: {describe('single')}; {describe('tta')}"
    return finish(figures, ok)


STEP_BODIES: dict[str, Callable[[StepContext], int]] = {
    "cuda_tests": step_cuda_tests,
    "benchmark_fp32": lambda ctx: step_benchmark(ctx, "float32"),
    "benchmark_bf16": lambda ctx: step_benchmark(ctx, "bfloat16"),
    "recipe_r50": lambda ctx: step_recipe(ctx, "r50"),
    "recipe_swin_t": lambda ctx: step_recipe(ctx, "swin_t"),
    "resume": step_resume,
    "compile": step_compile,
    "ddp2": step_ddp2,
    "infer": step_infer,
}


if __name__ == "__main__":
    sys.exit(main())
