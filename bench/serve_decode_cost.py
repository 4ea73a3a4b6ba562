"""One decoding step and one prefill of the serving engine, through the transformers forward + head vs the lean
decoder + its head (serve/lean_decoder.py), side by side on the run's merged model: ms per step at 1, 4 and 16
rows, and the ratio.

Same inputs for both: rows of a 100-token cached context (left-padded to mixed lengths, as the engine's lanes are),
the same DynamicCache contents, decoder + head on the last position as the engine calls them. Interleaved rounds so
drift hits both alike.

    .venv/bin/python bench/serve_decode_cost.py [RUN] [--rounds 3] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    import torch
    from transformers import DynamicCache

    from domain_expert.generate import load_for_inference
    from domain_expert.serve.lean_decoder import LeanDecoder

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", default="runs/medical-terms")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20, help="timed decoding steps per batch size and round")
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    lm = load_for_inference(args.run)
    model = lm.model.merge_and_unload() if lm.has_adapter else lm.model
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    lean = LeanDecoder(model)
    print(f"{model.config.model_type}, {next(model.parameters()).dtype}, attention {model.config._attn_implementation}")

    def hf(ids, mask, pos, cache):
        return decoder(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, past_key_values=cache
                       ).last_hidden_state  # fmt: skip

    def context(rows: int, width: int = 100):
        g = torch.Generator().manual_seed(rows)
        ids = torch.randint(100, 1000, (rows, width), generator=g)
        mask = torch.ones(rows, width, dtype=torch.long)
        for r in range(rows):
            mask[r, : (r * 7) % 40] = 0  # left padding of mixed widths
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids, mask, pos

    def prefill(fn, rows, head):
        ids, mask, pos = context(rows)
        cache = DynamicCache()
        t = time.perf_counter()
        h = fn(ids, mask, pos, cache)
        head(h[:, -1, :].contiguous())
        return cache, mask, pos[:, -1:] + 1, time.perf_counter() - t

    def decode(fn, rows, steps, head):
        cache, mask, pos, _ = prefill(fn, rows, head)
        last = torch.full((rows, 1), 500)
        times = []
        for k in range(steps + 2):
            t = time.perf_counter()
            mask = torch.cat([mask, torch.ones(rows, 1, dtype=torch.long)], dim=1)
            h = fn(last, mask, pos, cache)
            last = head(h[:, -1, :].contiguous()).argmax(-1, keepdim=True)
            pos = pos + 1
            if k >= 2:  # the first steps pay one-off set-up
                times.append(time.perf_counter() - t)
        return statistics.mean(times)

    paths = {"transformers": hf, "lean": lambda ids, mask, pos, cache: lean(ids, mask, pos, cache)}
    heads = {"transformers": lambda h: head(h).float(), "lean": lean.logits}
    results: dict[str, dict[str, list[float]]] = {p: {} for p in paths}
    for _ in range(args.rounds):
        for name, fn in paths.items():
            for rows in (1, 4, 16):
                results[name].setdefault(f"decode {rows}", []).append(decode(fn, rows, args.steps, heads[name]) * 1000)
            prefill(fn, 4, heads[name])
            results[name].setdefault("prefill 4x100", []).append(
                statistics.mean(prefill(fn, 4, heads[name])[3] for _ in range(3)) * 1000
            )
    print(f"\nmedian over {args.rounds} rounds, ms (lower is better):")
    print(f"{'':16}{'transformers':>14}{'lean':>10}{'ratio':>8}")
    table = {}
    for key in results["transformers"]:
        a, b = statistics.median(results["transformers"][key]), statistics.median(results["lean"][key])
        table[key] = {"transformers_ms": a, "lean_ms": b, "ratio": a / b}
        print(f"{key:16}{a:14.1f}{b:10.1f}{a / b:7.2f}x")
    out = Path("bench/results/serve_decode_cost.json")
    out.write_text(json.dumps({"rounds": args.rounds, "steps": args.steps, "median": table, "all": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
