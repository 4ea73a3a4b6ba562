"""Data-parallel fine-tuning over several processes (`torchrun`, `accelerate launch`): one process per device.

The launchers set WORLD_SIZE, RANK and LOCAL_RANK. Without them (the usual single process) every helper here is a
no-op, so the training loop has one code path.

We all-reduce the LoRA gradients ourselves once per optimizer step instead of wrapping the model in
DistributedDataParallel: ranks may run different numbers of token-budget micro-batches per step (or none, on the
last short batch of an epoch), which DDP's per-backward hooks do not allow, and LoRA gradients are a few MB, so
overlapping their transfer with the backward pass would save little.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from domain_expert.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: str = "cpu"  # this process's device: "cpu", "cuda:<local rank>", ...
    owns_group: bool = False  # we started the process group, so we end it

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0 writes every file (checkpoints, logs, the adapter) and prints; the others only compute."""
        return self.rank == 0


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE") or 1)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def setup(device: str) -> Dist:
    """Join the process group a launcher prepared: gloo on CPU, nccl on CUDA, one GPU per local rank."""
    world = launched_world_size()
    sharded = [k for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED") if _env_true(k)]
    if sharded:  # accelerate launch sets these from an FSDP / DeepSpeed config
        raise ConfigError(
            f"finetune does not shard the model, but it was launched with accelerate's {' and '.join(sharded)}: "
            "it would silently run as plain data parallel with a full model copy per process",
            where="accelerate config (distributed_type)",
            fix="launch finetune with configs/accelerate/ddp.yaml or torchrun; the FSDP / ZeRO-3 configs are for "
            "accelerate-prepared loops such as the Hugging Face Trainer (docs/scale.md)",
        )
    if world <= 1:
        return Dist(device=device)
    if device not in ("cpu", "cuda"):
        raise ConfigError(
            f"multi-process training runs on CPU or CUDA, not {device}",
            where="train.device",
            fix="set train.device=cpu (or cuda), or launch a single process",
        )
    import torch
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", 0))
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {local} has no GPU: this machine has {torch.cuda.device_count()}",
                where="launcher (--nproc_per_node)",
                fix=f"launch at most {torch.cuda.device_count()} processes per node",
            )
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if int(os.environ.get("RANK", 0)) != 0:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one set of loading bars (rank 0's) is enough
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), device=device, owns_group=owns)


def teardown(d: Dist, *, ok: bool) -> None:
    if not d.owns_group:
        return
    import torch.distributed as dist

    if ok:
        dist.barrier()  # the job ends together: nobody reports success while rank 0 still writes the adapter
    dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as dist

        dist.barrier()


def main_first(d: Dist, fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0, then on the others: for work with a shared side effect (converting the built-in model
    into the cache). If rank 0 fails, the others are released and fail the same way instead of waiting."""
    if d.enabled and not d.main:
        barrier(d)
    try:
        return fn()
    finally:
        if d.enabled and d.main:
            barrier(d)


def check_fits(d: Dist, batch_size: int, n_examples: int) -> None:
    """Each global batch of `batch_size` rows is dealt out across the ranks: more ranks than rows leaves some idle
    on every step, which is a launch mistake, not a setting to run with."""
    rows = min(batch_size, n_examples)
    if d.world > rows:
        what = f"train.batch_size={batch_size}" if batch_size <= n_examples else f"{n_examples} training examples"
        raise ConfigError(
            f"{d.world} processes but each optimizer step has only {rows} example(s) to share ({what}): "
            "ranks would sit idle",
            where="launcher (--nproc_per_node)",
            fix=f"launch at most {rows} process(es), or raise train.batch_size (the batch of all ranks together)",
        )


def shard(batch: list[int], lengths: list[int], d: Dist) -> list[int]:
    """This rank's rows of one global batch: longest first, dealt round-robin, so ranks get similar token loads.
    With one process it is the whole batch."""
    if not d.enabled:
        return batch
    return sorted(batch, key=lambda i: lengths[i], reverse=True)[d.rank :: d.world]


def all_sum(d: Dist, values: list[float]) -> list[float]:
    if not d.enabled:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_float(d: Dist, value: float) -> float:
    """Rank 0's value everywhere: the wall clock differs a little per rank, and the learning rate and the decision
    to stop on the time budget must not."""
    if not d.enabled:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=d.device)
    dist.broadcast(t, src=0)
    return float(t.item())


def gather_objects(d: Dist, obj: Any) -> list[Any]:
    if not d.enabled:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def _flat_groups(tensors: list) -> list[list]:
    groups: dict = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    return list(groups.values())


def all_reduce_grads(d: Dist, params: list) -> None:
    """Sum the gradients of all ranks, in place. Each rank's loss is already divided by the labelled tokens of the
    whole global step, so the sum is exactly the single-process gradient."""
    if not d.enabled:
        return
    import torch
    import torch.distributed as dist

    for p in params:
        if p.grad is None:  # a rank with no rows this step still takes part
            p.grad = torch.zeros_like(p)
    for grads in _flat_groups([p.grad for p in params]):
        flat = torch.cat([g.reshape(-1) for g in grads])  # one transfer per dtype, not one per LoRA matrix
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def broadcast_params(d: Dist, params: list) -> None:
    """Start every rank from rank 0's trainable weights (the same seed gives the same LoRA init, but a resumed or
    differently-built rank must not silently diverge)."""
    if not d.enabled:
        return
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        for group in _flat_groups(list(params)):
            flat = torch.cat([p.detach().reshape(-1) for p in group])
            dist.broadcast(flat, src=0)
            offset = 0
            for p in group:
                p.copy_(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
