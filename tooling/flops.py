"""Parameters and FLOPs of every named config beside the paper's Table 1.

    python -m tooling.flops          # the table (built on the meta device: no memory, instant)

Not a part of the method: a measurement of it. `count_flops` counts the multiply-adds of one
eval-mode forward pass with torch's FlopCounterMode; tooling/benchmark.py divides by time for
GFLOP/s and MFU.

Reading order: count_flops -> PAPER_TABLE1 -> flops_table -> print_flops_table.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from maskformer import CONFIGS, build_model


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of the CPU attention kernel (the counter knows the CUDA kernels only): Q Kᵀ, then · V."""
    B, heads, Lq, d = query_shape
    Lk, dv = key_shape[2], value_shape[3]
    return 2 * B * heads * Lq * Lk * d + 2 * B * heads * Lq * Lk * dv


def count_flops(model: nn.Module, size: int | tuple[int, int]) -> float:
    """Multiply-adds in G of one eval-mode forward pass on one (size × size) image (Table 1's FLOPs).

    torch.utils.flop_counter.FlopCounterMode counts matmuls, convolutions and attention (2 FLOPs
    per multiply-add), so its total ÷ 2 is comparable to the paper's Table 1 (fvcore counts
    multiply-adds; it also counts norms and upsampling, so its numbers run a few % higher).
    Works on any device, including "meta" (shapes only, no arithmetic: instant).
    """
    height, width = (size, size) if isinstance(size, int) else size
    param = next(model.parameters())
    images = torch.zeros(1, 3, height, width, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    sdpa_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    counter = FlopCounterMode(display=False, custom_mapping={sdpa_cpu: _sdpa_cpu_flops})
    with torch.no_grad(), counter:
        model(images)
    model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9


PAPER_TABLE1 = {
    "r50": (512, 41, 53, 41.31), "r101": (512, 60, 73, 60.30), "r101c": (512, 60, 80, None),  # R101c: no HF port
    "swin_t": (512, 42, 55, 41.76), "swin_s": (512, 63, 79, 63.08), "swin_b": (640, 102, 195, 101.83),
    "swin_l": (640, 212, 375, 211.58),
}


def flops_table() -> list[dict]:
    """Params and FLOPs of every named config beside Table 1, built on the meta device (no memory,
    no arithmetic). One dict per config: config, crop, params_M, hf_params_M, paper_params_M,
    gflops (G multiply-adds of one crop x crop image), paper_gflops; None where there is no figure."""
    rows = []
    for name in CONFIGS:
        with torch.device("meta"):
            model = build_model(name)
        crop, paper_params, paper_flops, hf_params = PAPER_TABLE1.get(name, (512, None, None, None))
        rows.append({"config": name, "crop": crop, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
                     "hf_params_M": hf_params, "paper_params_M": paper_params,
                     "gflops": count_flops(model, crop), "paper_gflops": paper_flops})
    return rows


def print_flops_table(rows: list[dict]) -> None:
    """Print `flops_table()` rows with the relative differences to the HF port and to Table 1."""
    print(f"{'config':8} {'crop':>5} {'params M':>9} {'HF M':>8} {'diff':>7} {'paper M':>8}"
          f" {'GFLOPs':>8} {'paper G':>8} {'diff':>7}")
    for row in rows:
        params, flops = row["params_M"], row["gflops"]
        hf, paper_params, paper_flops = row["hf_params_M"], row["paper_params_M"], row["paper_gflops"]
        hf_part = f"{hf:8.2f} {100 * (params / hf - 1):+6.2f}%" if hf else f"{'–':>8} {'':>7}"
        paper_part = (f"{paper_params:8d} {flops:8.1f} {paper_flops:8d} {100 * (flops / paper_flops - 1):+6.1f}%"
                      if paper_flops else f"{'–':>8} {flops:8.1f} {'–':>8}")
        print(f"{row['config']:8} {row['crop']:5d} {params:9.2f} {hf_part} {paper_part}")


if __name__ == "__main__":
    print_flops_table(flops_table())
