"""GPU smoke check of the CUDA path: prepare (file source) -> finetune (device auto, dtype auto) -> export (bf16) ->
generate, on a random 8-layer Llama built from config (no download). Prints device, dtype, throughput, fidelity.

    PYTHONPATH=src python3 bench/gpu_smoke.py [OUT_DIR]

Not a benchmark: it checks that the GPU code paths run (device placement, bf16, merge, reload, generation).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from domain_expert.cli import main as cli

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    print(
        "cuda available:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    )
    tok = AutoTokenizer.from_pretrained(ROOT / "tests" / "assets" / "tiny-tokenizer")
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=8,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model_dir = out / "random-llama"
    LlamaForCausalLM(cfg).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = out / "qa.jsonl"
    with open(data, "w") as f:
        for i in range(400):
            f.write(
                json.dumps({"question": f"What is term {i}?", "answer": f"Term {i} is a sign {i % 7} of blood."}) + "\n"
            )
    ov = [
        f"model={model_dir}",
        f"output_dir={out / 'run'}",
        "train.max_steps=30",
        "train.max_minutes=null",
        "train.eval_every=10",
        "train.batch_size=16",
        f"data.sources=[{{kind: file, path: '{data}', columns: {{prompt: question, completion: answer}}}}]",
    ]
    assert cli(["prepare", *ov]) == 0
    assert cli(["finetune", *ov]) == 0
    assert cli(["export", str(out / "run"), "--dtype", "bf16"]) == 0
    assert cli(["generate", str(out / "run"), "What is term 3?", "--max-new-tokens", "12"]) == 0
    assert cli(["generate", str(out / "run"), "What is term 3?", "--max-new-tokens", "12", "--base"]) == 0
    stage = json.loads((out / "run" / "finetune" / "stage.json").read_text())
    fid = json.loads((out / "run" / "export" / "stage.json").read_text())["fidelity"]
    print(json.dumps({"device": stage["device"], "dtype": stage["dtype"], "summary": stage["summary"],
                      "fidelity": fid}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
