"""Several processes, one model: the few torch.distributed calls the project makes.

Not a part of the paper (§4 trains on 8 GPUs with batch 16): `torchrun` starts one process per
GPU and sets RANK / WORLD_SIZE / LOCAL_RANK; DistributedDataParallel (train.py) averages the
gradients; the rest is here.

Reading order: `setup_distributed` (device, rank, world size) -> `world_size` ->
`sum_over_processes` (the one all-reduce, used by the loss's num_masks, train.py's logged
averages and the metrics' confusion matrix and PQ counts).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup_distributed(device_flag: str | None) -> tuple[torch.device, int, int]:
    """Returns (device, rank, world_size); initialises the process group under torchrun."""
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
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device, rank, world_size


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """The number of processes (1 when torch.distributed is not running)."""
    return dist.get_world_size() if is_distributed() else 1


def sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over all processes when torch.distributed is running, else itself.

    NCCL reduces CUDA tensors only, so a CPU tensor makes a round trip through the GPU there.
    """
    if not is_distributed():
        return tensor
    on_device = tensor.cuda() if dist.get_backend() == "nccl" else tensor.clone()
    dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
    return on_device.to(tensor.device)
