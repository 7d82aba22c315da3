"""Several processes, one model: the few torch.distributed calls the project makes.

Not a part of the paper (§4 trains on 8 GPUs with batch 16): `torchrun` starts one process per
GPU and sets RANK / WORLD_SIZE / LOCAL_RANK; DistributedDataParallel (train.py) averages the
gradients; the rest is here.

Reading order: `setup_distributed` (device, rank, world size, the process group's timeout) ->
`world_size` -> `sum_over_processes` (the one all-reduce, used by the loss's normalisers, train.py's
logged averages and the metrics' confusion matrix and PQ counts) -> `lost_contact` (a process that
died or hangs stops the others with one line) -> `wrap_for_training` (train.py's model under
DistributedDataParallel) -> `mean_over_processes` (train.py's logged averages).

One process or many, the numbers are the same: the data order is cut into per-process chunks of the
same global batch (data.TrainBatchSampler), the losses divide by global counts (losses.py), DDP
averages the gradients, and validation sums its counts over processes (metrics.py). Several machines
are several torchrun "nodes" meeting at one rendezvous address (docs/training.md):

    torchrun --nnodes 2 --nproc_per_node 8 --node_rank 0 --rdzv_backend c10d \
        --rdzv_endpoint HOST:29400 --rdzv_id RUN train.py ...     # node_rank 1 on the other machine
"""

from __future__ import annotations

import datetime
import os
import re

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

DEFAULT_TIMEOUT_S = 600  # train.py --dist-timeout: the longest wait for another process in a collective


def setup_distributed(device_flag: str | None,
                      timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[torch.device, int, int]:
    """Returns (device, rank, world_size); initialises the process group under torchrun.

    timeout_s: a collective (all-reduce, broadcast, barrier) that waits longer than this for another
    process, killed or hung, raises instead of hanging forever (see `lost_contact`)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_flag:
        device = torch.device(device_flag)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        # TF32 matmuls/convs on Ampere+: ~free speed, accuracy unaffected for this model.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world_size > 1:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return device, rank, world_size


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """The number of processes (1 when torch.distributed is not running)."""
    return dist.get_world_size() if is_distributed() else 1


def sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over all processes when torch.distributed is running, else itself.

    The caller's tensor is left as it is: the sum goes into a copy, on the GPU for NCCL (which reduces
    CUDA tensors only, so a CPU tensor makes a round trip through the GPU there).
    """
    if not is_distributed():
        return tensor
    reduced = tensor.to("cuda" if dist.get_backend() == "nccl" else tensor.device, copy=True)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced.to(tensor.device)


# what gloo/NCCL say when a peer process is gone or does not answer
LOST_CONTACT_WORDS = ("Connection closed by peer", "Connection reset by peer", "Timed out waiting", "Socket Timeout",
                      "Broken pipe", "NCCL communicator was aborted", "Watchdog caught collective operation timeout")


def lost_contact(error: BaseException) -> bool:
    """Whether `error` is a collective that failed because another process died or stopped answering."""
    if isinstance(error, dist.DistError):
        return True
    return is_distributed() and any(word in str(error) for word in LOST_CONTACT_WORDS)


def lost_contact_message(error: BaseException, timeout_s: float) -> str:
    """One line for `lost_contact` errors: which process noticed, and what to do."""
    rank, world = os.environ.get("RANK", "?"), os.environ.get("WORLD_SIZE", "?")
    # gloo: "[.../pair.cc:537] Read error [127.0.0.1]:30113: Connection reset by peer. This is ..."
    detail = re.sub(r"^\[[^\]]*\]\s*", "", (str(error).strip().splitlines() or [""])[0]).split(". ")[0]
    first_line = detail[:160] or type(error).__name__
    return (f"error: process {rank} of {world}: another process stopped or did not answer within "
            f"--dist-timeout {timeout_s:g} s ({first_line}); stopping. Continue from the run's last "
            f"checkpoint with --resume once every process can run")


def wrap_for_training(model: nn.Module, device: torch.device, world_size: int, compile_model: bool) -> nn.Module:
    """Channels-last weights, DistributedDataParallel over several processes, then torch.compile if asked.

    The convolutions run channels-last (backbones.py), so their weight gradients come out channels-last.
    DDP lays its gradient buckets out like the parameters: with contiguous weights every such gradient
    was re-laid out into its bucket by a strided copy each step ("grad strides do not match bucket view
    strides"). With the weights channels-last too, gradients and buckets share one layout, and with
    gradient_as_bucket_view the gradients are views into the buckets, all-reduced in place (no second
    copy of all gradients in memory). Same values; a checkpoint loads into a model of either layout.
    """
    model.to(memory_format=torch.channels_last)  # 4-d tensors (conv weights) only; the optimiser keeps them
    if world_size > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                        gradient_as_bucket_view=True)
    return torch.compile(model) if compile_model else model


def mean_over_processes(values: dict[str, float], world_size: int) -> dict[str, float]:
    """Averages logged scalars over processes so that rank 0 logs the global figure."""
    if world_size == 1 or not values:
        return values
    keys = sorted(values)
    total = sum_over_processes(torch.tensor([values[k] for k in keys], dtype=torch.float64))
    return {k: v / world_size for k, v in zip(keys, total.tolist())}
