"""Raw FSDP2 (no Lightning) under ``torchrun --nproc_per_node=2``: GradientStats on sharded DTensor gradients.

    torchrun --standalone --nproc_per_node=2 tests/raw_fsdp2_script.py OUT_DIR

Each rank writes ``OUT_DIR/rank<N>.json`` with GradientStats' per-layer numbers and the unsharded reference
(``full_tensor()``, gathered here only for the check).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from lightning_gradwatch.stats import GradientStats


def main(out_dir: str) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3), torch.nn.Linear(3, 1)
    )  # uneven shards (3x16, 3) and a layer smaller than the world (1x3, 1): empty on rank 1
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for module in net:
        if isinstance(module, torch.nn.Linear):
            fully_shard(module, mesh=mesh)
    fully_shard(net, mesh=mesh)
    torch.manual_seed(rank)
    x, y = torch.randn(4, 8), torch.randn(4, 1)
    torch.nn.functional.mse_loss(net(x), y).backward()
    stats = GradientStats(net.named_parameters()).collect(extended=True, histograms=True)
    reference: dict[str, dict[str, float]] = {}
    for name, p in net.named_parameters():
        layer = name.rpartition(".")[0]
        full = p.grad.full_tensor().double()
        entry = reference.setdefault(
            layer, {"sq": 0.0, "numel": 0, "max_abs": 0.0, "zeros": 0, "param_sq": 0.0, "log_lo": 99.0, "log_hi": -99.0}
        )
        entry["sq"] += float(full.pow(2).sum())
        entry["numel"] += full.numel()
        entry["max_abs"] = max(entry["max_abs"], float(full.abs().max()))
        entry["zeros"] += int((full == 0).sum())
        entry["param_sq"] += float(p.full_tensor().double().pow(2).sum())
        magnitudes = full[full != 0].abs().log10()  # the histogram of log10 |g| leaves exact zeros out
        entry["log_lo"] = min(entry["log_lo"], float(magnitudes.min()))
        entry["log_hi"] = max(entry["log_hi"], float(magnitudes.max()))
    result = {
        "layers": list(stats.layers),
        "grad_norm": list(stats.grad_norm),
        "total_norm": stats.total_norm,
        "param_norm": list(stats.param_norm),
        "max_abs": list(stats.max_abs),
        "zero_fraction": list(stats.zero_fraction),
        "numel": list(stats.numel),
        "hist_num": [h.num if h else None for h in stats.histograms],
        "hist_count": [sum(h.bucket_counts) if h else None for h in stats.histograms],
        "log_hist": [(h.num, sum(h.bucket_counts), h.min, h.max) if h else None for h in stats.log_histograms],
        "local_numel": {n: p.grad.to_local().numel() for n, p in net.named_parameters()},
        "reference": reference,
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump(result, fh)
    dist.barrier()  # both ranks done before either tears gloo down (a rank leaving early aborted the other, seen once)
    dist.destroy_process_group()
    # the results are on disk: leave without the interpreter's teardown, where the device mesh's and gloo's C++
    # objects are destroyed in no set order ("terminate called without an active exception" on 1 run in 6 here)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
