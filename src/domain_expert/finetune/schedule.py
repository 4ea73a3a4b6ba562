"""How long a run trains and how fast it learns: the step count, the wall-clock budget, the loss scale of a step,
and the learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

from domain_expert.config import TrainConfig


@dataclass(frozen=True)
class Plan:
    steps_per_epoch: int
    total_steps: int
    budget_s: float | None  # train.max_minutes in seconds
    label_scale: float  # each step's summed loss is divided by this (labelled tokens of an average step)


def plan(t: TrainConfig, n_labels: list[int]) -> Plan:
    """`n_labels`: next-token targets of each training example."""
    n = len(n_labels)
    # Each step's summed loss is divided by the labelled tokens an average step has, not by its own count: with
    # length-grouped batches a step of short answers would otherwise weigh each of its tokens several times more
    # than a step of long ones. Measured (bench/train_throughput.py, 60 steps): val loss 2.155 -> 2.140 (seed 0),
    # 2.176 -> 2.153 (seed 1). Over all ranks and micro-batches the gradients still add up to the one-process one.
    label_scale = sum(n_labels) / n * t.batch_size * t.grad_accum
    batches_per_epoch = math.ceil(n / t.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / t.grad_accum)
    total_steps = max(1, math.ceil(t.epochs * steps_per_epoch))
    if t.max_steps:
        total_steps = min(total_steps, t.max_steps)
    budget_s = t.max_minutes * 60 if t.max_minutes else None
    return Plan(steps_per_epoch, total_steps, budget_s, label_scale)


def lr_factor(step: int, total: int, warmup: int, elapsed: float, budget_s: float | None) -> float:
    """Linear warmup then cosine decay to 10%. Progress is the further of steps and time, so a run stopped by the
    wall-clock budget still ends with a decayed learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if budget_s:
        progress = max(progress, elapsed / budget_s)
    progress = min(1.0, progress)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
