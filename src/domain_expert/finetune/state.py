"""What a fine-tuning run holds between setup, fit and finish: the model with its optimizer, the tokenised data,
the step plan, the processes, the output logs, and the counters a checkpoint saves."""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from domain_expert.finetune import distributed
from domain_expert.finetune.distributed import Dist

if TYPE_CHECKING:
    from domain_expert.config import RunConfig
    from domain_expert.finetune.adapter_precision import MasterWeights
    from domain_expert.finetune.checkpoint import Checkpoint
    from domain_expert.finetune.outputs import RunLog
    from domain_expert.finetune.schedule import Plan
    from domain_expert.likelihood import Example
    from domain_expert.models.reference import ResolvedModel
    from domain_expert.prompts import PromptFormat


def say(d: Dist, msg: str) -> None:
    """Rank 0 prints; the other ranks run the same code silently."""
    if d.main:
        print(f"[domain-expert] {msg}", flush=True)


@dataclass
class Data:
    fmt: PromptFormat
    train: list[Example]
    val: list[Example]
    truncated: int  # training examples cut to train.max_seq_len
    lengths: list[int] = field(init=False)  # tokens per training example
    n_labels: list[int] = field(init=False)  # next-token targets per training example

    def __post_init__(self) -> None:
        self.lengths = [len(e.ids) for e in self.train]
        self.n_labels = [len(e.ids) - max(1, e.start) for e in self.train]


@dataclass
class Progress:
    """The counters a checkpoint saves (trainer_state.json, in this order) and a resumed run continues from."""

    step: int = 0
    epoch: int = 0
    next_batch: int = 0  # the current epoch's batch where the next step starts: data order is a function of epoch
    tokens: int = 0
    elapsed_s: float = 0.0  # the schedule's clock at the checkpoint; while training, Trainer.clock reads it
    eval_s: float = 0.0  # of elapsed_s, spent on validation: excluded from tokens/s
    first_val: float | None = None
    last_val: float | None = None

    @classmethod
    def from_state(cls, state: dict) -> Progress:
        return cls(**{f.name: state[f.name] for f in fields(cls)})

    def as_state(self) -> dict:
        return asdict(self)


@dataclass
class Trainer:
    """One rank's run: built by setup.setup, advanced by loop.fit, written out by finish.finish."""

    cfg: RunConfig
    d: Dist
    data_dir: Path
    out_dir: Path
    resolved: ResolvedModel
    device: str  # the kind ("cuda"); d.device is this rank's own ("cuda:1")
    dtype: Any  # torch.dtype of the base model
    settings: dict  # what a resume must match: config, dtype name, prepared data's manifest hash
    data: Data
    tokenizer: Any
    model: Any  # the PEFT model
    trainable: list  # the fp32 parameters the optimizer steps
    opt: Any
    mw: MasterWeights | None  # bf16 adapters in the model, `trainable` their fp32 master copy
    packing: bool
    n_trainable: int
    n_total: int
    plan: Plan
    log: RunLog
    ckpt: Checkpoint | None = None
    saved_rng: list[dict] | None = None  # the checkpoint's random state, one per rank of the run that wrote it
    progress: Progress = field(default_factory=Progress)
    t0: float = 0.0  # wall time at which the schedule's clock reads 0
    stopped_by: str = "steps"

    def say(self, msg: str) -> None:
        say(self.d, msg)

    def clock(self) -> float:
        """Seconds on the schedule's clock; under a time budget every rank takes rank 0's reading, so all of them
        stop after the same step."""
        elapsed = time.time() - self.t0
        return distributed.broadcast_float(self.d, elapsed) if self.plan.budget_s else elapsed

    def fp32_weights_in_model(self) -> contextlib.AbstractContextManager:
        """For saving: checkpoints and the adapter hold the fp32 weights, not their bf16 copies."""
        return self.mw.master_in_model() if self.mw else contextlib.nullcontext()

    def run_info(self) -> dict:
        """What a resume checks against (settings) or reports (plan): the same for every checkpoint of this run."""
        plan = {"total_steps": self.plan.total_steps, "budget_s": self.plan.budget_s, "world_size": self.d.world}
        return {**self.settings, **plan}
