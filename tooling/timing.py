"""Measuring a step: interleaved timing, peak memory, model-FLOPs utilisation, dense-kernel share.

Not a part of the paper: infrastructure of tooling/benchmark.py (speed against the Hugging Face port and
Table 1's FLOPs) and tooling/training_speed.py (the classroom run's time to accuracy). Each figure is taken
so that a shared, noisy machine moves all compared variants alike: the variants run interleaved,
one call of each per round, and the median of the rounds is reported.

Reading order: `synchronize` -> `time_interleaved` (seconds per call, variants interleaved) ->
`rss_now_mb` / `rss_high_water_mb` / `peak_memory_cuda` (peak memory) -> `measured_peak_tflops` /
`peak_tflops` (the MFU reference: measured on CPU, the datasheet's on a GPU) -> `DenseKernelTimer` /
`dense_kernel_share` (the share of a step spent in convolution and matmul kernels) -> `fmt`.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(steps: dict[str, Callable[[], None]], repeats: int, warmup: int,
                     device: torch.device, notes: list[str]) -> dict[str, list[float]]:
    """Seconds per call of every step: `warmup` untimed rounds, then `repeats` timed rounds, each
    round calling every step once in turn (so load drift on a shared machine hits all alike).
    A step that fails in the first warm-up round (e.g. torch.compile on the HF port) is dropped
    with a note."""
    steps = dict(steps)
    for round_ in range(warmup):
        for label, step in list(steps.items()):
            try:
                step()
            except Exception as error:
                if round_ > 0:
                    raise
                notes.append(f"{label} dropped: its first run failed ({type(error).__name__}: {error})"[:400])
                del steps[label]
    times: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(repeats):
        for label, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times[label].append(time.perf_counter() - start)
    return times


def rss_now_mb() -> float:
    """This process's resident memory now, in MB (0 where /proc is absent)."""
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**10
    return 0.0


def rss_high_water_mb() -> float:
    """This process's peak resident memory so far, in MB.

    resource.getrusage's ru_maxrss (KiB on Linux, bytes on macOS), except on Linux, where a process
    started by fork + exec inherits its parent's ru_maxrss: there VmHWM of /proc/self/status, the
    same high-water mark for this process's own address space only.
    """
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # "VmHWM:  123456 kB"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def peak_memory_cuda(step: Callable[[], None], device: torch.device) -> float:
    """torch.cuda.max_memory_allocated (MB) over one call of `step`."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def measured_peak_tflops(device: torch.device, dtype: torch.dtype, repeats: int = 10) -> float:
    """TFLOP/s of the faster of two dense kernels in `dtype`, each the best of `repeats` calls: a
    2048^3 matmul and the model's largest convolution (3x3, 256 -> 256 channels on a 128 x 128 map,
    channels-last: the pixel decoder at stride 4 for a 512 image). The practical peak of this
    machine (the MFU reference on CPU, where no datasheet figure applies); the convolution is in
    because oneDNN's convolutions run faster than its 2048^3 matmul on some CPUs."""
    a, b = (torch.randn(2048, 2048, device=device).to(dtype) for _ in range(2))
    x = torch.randn(1, 256, 128, 128, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    kernels = [(lambda: a @ b, 2 * 2048**3), (lambda: F.conv2d(x, w, padding=1), 2 * 256 * 256 * 9 * 128 * 128)]
    best_tflops = 0.0
    for kernel, flops in kernels:
        kernel()  # warm-up
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            kernel()
            synchronize(device)
            best_tflops = max(best_tflops, flops / (time.perf_counter() - start) / 1e12)
    return best_tflops


# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' datasheets (V100 and T4
# have no bf16: their fp16 peak). Matched in order against torch.cuda.get_device_name(); a GPU not
# listed gets a matmul measured on the spot as its MFU reference instead.
GPU_PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0), ("V100", 125.0),
                   ("T4", 65.0)]


def peak_tflops(gpu_name: str) -> float | None:
    """Dense bf16 peak TFLOP/s of a GPU by its name (first GPU_PEAK_TFLOPS key in it), None if unknown."""
    return next((peak for key, peak in GPU_PEAK_TFLOPS if key in gpu_name), None)


# Convolution and matrix-multiply ops (forward and backward) as the dispatcher sees them below autograd:
# the model's dense arithmetic. Fused attention (SDPA) is left out, as it also holds a softmax:
# leaving an op out can only lower the floor it sets (dense_kernel_share), never raise it.
DENSE_KERNELS = {torch.ops.aten.convolution, torch.ops.aten.convolution_backward, torch.ops.aten.mm,
                 torch.ops.aten.bmm, torch.ops.aten.addmm, torch.ops.aten.baddbmm}


class DenseKernelTimer(TorchDispatchMode):
    """Adds up the wall time of every DENSE_KERNELS call made while it is active (the autograd
    engine's backward calls included). On CPU an op returns when its kernel is done, so this is
    the kernels' time; on CUDA it would be launch time only."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket not in DENSE_KERNELS:
            return func(*args, **(kwargs or {}))
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.seconds += time.perf_counter() - start
        return out


def dense_kernel_share(step: Callable[[], None]) -> float:
    """The fraction of one call of `step` spent inside convolution and matmul kernels (CPU).

    Numerator and denominator come from the same call, so a load spike on a shared machine moves
    both. The per-op dispatch adds a little time outside the kernels, which can only lower the share.
    share x the step's time is a floor under that time that no change outside those kernels can go
    below: ours_share x ours_time / HF_time is the best ratio ours could reach with the same kernels,
    had every other op (norms, activations, losses, optimizer, copies) taken no time."""
    start = time.perf_counter()
    with DenseKernelTimer() as timer:
        step()
    return timer.seconds / (time.perf_counter() - start)


def dense_kernel_share_interleaved(steps: dict[str, Callable[[], None]], labels: list[str],
                                   repeats: int) -> dict[str, float]:
    """{label: median dense_kernel_share over `repeats` rounds}, one call of each step per round as
    in time_interleaved."""
    shares: dict[str, list[float]] = {label: [] for label in labels}
    for _ in range(repeats):
        for label in labels:
            shares[label].append(dense_kernel_share(steps[label]))
    return {label: statistics.median(values) for label, values in shares.items()}


def fmt(value: float | None, spec: str) -> str:
    """format(value, spec), or a dash as wide as the field when there is no value."""
    return format(value, spec) if value is not None else "–".rjust(int(spec.split(".")[0]))
