"""`domain-expert finetune`: LoRA (PEFT) on a causal LM, loss on answer tokens only, EOS learned.

Writes into the run's finetune folder: the adapter, tokenizer, resolved config, prompt format, metrics.jsonl,
TensorBoard logs, checkpoints, and stage.json last (its presence marks the folder complete).

`--resume` continues from the newest complete checkpoint (checkpoint.py); under torchrun or accelerate launch the
same loop runs data-parallel (distributed.py). docs/training.md has the commands and what each one guarantees.

A run is setup.setup (model, data, optimizer, checkpoint restored: a state.Trainer), loop.fit (the steps), then
finish.finish (adapter, summary, stage.json). Serving, evaluation and data preparation never import this package:
what they share with training lives in domain_expert.likelihood, domain_expert.lora_math and domain_expert.models.
"""

from __future__ import annotations

from pathlib import Path

from domain_expert.config import RunConfig

__all__ = ["run"]


def run(
    cfg: RunConfig, data_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False, resume: bool = False
) -> Path:
    """Fine-tune into `out_dir`. `resume` continues from its newest complete checkpoint. Under a multi-process
    launcher (torchrun, accelerate launch) every rank runs this; rank 0 alone writes files."""
    from domain_expert.finetune import distributed
    from domain_expert.finetune.finish import finish
    from domain_expert.finetune.loop import fit
    from domain_expert.finetune.setup import setup
    from domain_expert.hardware import resolve_device

    d = distributed.setup(resolve_device(cfg.train.device))
    ok = False
    try:
        trainer = setup(cfg, Path(data_dir), Path(out_dir), overwrite=overwrite, resume=resume, d=d)
        fit(trainer)
        result = finish(trainer)
        ok = True
        return result
    finally:
        distributed.teardown(d, ok=ok)
