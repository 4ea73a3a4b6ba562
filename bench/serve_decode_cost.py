"""One decoding step and one prefill of the serving engine, through the transformers forward + head vs the lean
decoder + its head (serve/decoding/lean_decoder.py), side by side on the run's merged model: ms per step at 1, 4 and 16
rows, and the ratio.

Same inputs for both: rows of a 100-token cached context (left-padded to mixed lengths, as the engine's lanes are),
the same DynamicCache contents, decoder + head on the last position as the engine calls them. Interleaved rounds so
drift hits both alike.

    .venv/bin/python bench/serve_decode_cost.py [RUN] [--rounds 3] [--steps 20] [--compile | --frozen]
    .venv/bin/python bench/serve_decode_cost.py [RUN] --products

`--products` measures only the lean decoder's matrix products (all layers' q/k/v, o, gate/up and down, packed
weights, bf16 or the run's dtype) at 1 to 256 rows: ms per pass over all layers and GFLOP/s, the cost a decoding step
and a prefill share when they run in one pass (LeanDecoder.mixed).

`--frozen` adds `serve --compile`'s decoding step (serve/decoding/compiled_step.py: compiled with the weights frozen as
constants; its compilation time is reported). `--compile` adds the lean decoding step under
`torch.compile(dynamic=True)` with the weights as graph inputs (prefills stay eager). Inductor cannot
take the oneDNN-packed weights as graph inputs, so the compiled step runs plain weights; the table then also shows
the lean step eager with plain weights ("lean plain"), to tell the packing's share from the compiler's, and the
seconds the first compiled calls took.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path


def main() -> None:
    import torch
    from transformers import DynamicCache

    from domain_expert.fsutil import write_json_atomic
    from domain_expert.hardware import cpu_summary
    from domain_expert.models.loader import load_for_inference
    from domain_expert.serve.decoding.lean_decoder import LeanDecoder

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", default="runs/medical-terms")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20, help="timed decoding steps per batch size and round")
    ap.add_argument("--compile", action="store_true", help="also the lean decoding step under torch.compile")
    ap.add_argument("--frozen", action="store_true", help="also `serve --compile`'s step (compiled_step.py)")
    ap.add_argument("--products", action="store_true", help="only the layers' matrix products, by rows")
    args = ap.parse_args()
    if args.compile and args.frozen:
        ap.error("--compile and --frozen are measured in separate runs (--frozen sets inductor's freezing globally)")

    torch.set_grad_enabled(False)
    lm = load_for_inference(args.run)
    model = lm.model.merge_and_unload() if lm.has_adapter else lm.model
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    lean = LeanDecoder(model)
    print(f"{model.config.model_type}, {next(model.parameters()).dtype}, attention {model.config._attn_implementation}")
    print(f"lean decoder's attention probe: {lean.attention} ({lean.attention_probe_us})")
    if args.products:
        return products_by_rows(lean, args.rounds, cpu_summary(), write_json_atomic)

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
    # the two CPU attentions the lean decoder's probe chooses between, each forced (the packed weights shared)
    for choice in ("written", "fused"):
        forced = copy.copy(lean)
        forced.attention = choice
        paths[f"lean {choice}"], heads[f"lean {choice}"] = forced, forced.logits
    compile_s = {}
    if args.compile:
        plain = copy.copy(lean)
        plain.packed = {}  # F.linear on the plain weights
        paths["lean plain"], heads["lean plain"] = plain, plain.logits

        class ListCache:  # DynamicCache.update on plain lists, so the compiled step is a function of tensors
            def __init__(self, keys, values):
                self.keys, self.values = list(keys), list(values)

            def update(self, k, v, i):
                self.keys[i] = torch.cat([self.keys[i], k], dim=2)
                self.values[i] = torch.cat([self.values[i], v], dim=2)
                return self.keys[i], self.values[i]

        def step(ids, mask, pos, keys, values):
            c = ListCache(keys, values)
            return plain(ids, mask, pos, c), c.keys, c.values

        cstep = torch.compile(step, dynamic=True)

        def compiled(ids, mask, pos, cache):
            if ids.shape[1] > 1:  # prefills eager
                return plain(ids, mask, pos, cache)
            t = time.perf_counter()
            h, keys, values = cstep(ids, mask, pos, [x.keys for x in cache.layers], [x.values for x in cache.layers])
            for layer, k, v in zip(cache.layers, keys, values, strict=True):
                layer.keys, layer.values = k, v
            kind = "one row" if ids.shape[0] == 1 else "several rows"  # dynamic shapes still specialise on 1
            compile_s.setdefault(kind, time.perf_counter() - t)
            return h

        paths["lean compiled"], heads["lean compiled"] = compiled, plain.logits
    if args.frozen:
        from domain_expert.serve.decoding.compiled_step import CompiledStep

        frozen = CompiledStep(lean)
        compile_s["warm-up (one row and several)"] = frozen.warm_up()

        def frozen_step(ids, mask, pos, cache):  # logits as the "hidden" state, the head then the identity
            return lean(ids, mask, pos, cache) if ids.shape[1] > 1 else frozen(ids, mask, pos, cache)[:, None]

        paths["serve --compile"], heads["serve --compile"] = frozen_step, lambda h: h
    results: dict[str, dict[str, list[float]]] = {p: {} for p in paths}
    for _ in range(args.rounds):
        for name, fn in paths.items():
            for rows in (1, 4, 16):
                results[name].setdefault(f"decode {rows}", []).append(decode(fn, rows, args.steps, heads[name]) * 1000)
            if name in ("lean compiled", "serve --compile"):
                continue  # their prefills are eager
            prefill(fn, 4, heads[name])
            results[name].setdefault("prefill 4x100", []).append(
                statistics.mean(prefill(fn, 4, heads[name])[3] for _ in range(3)) * 1000
            )
    print(f"\nmedian over {args.rounds} rounds, ms (lower is better):")
    extra = [p for p in paths if p not in ("transformers", "lean")]
    print(f"{'':16}{'transformers':>14}{'lean':>10}{'ratio':>8}" + "".join(f"{p:>17}" for p in extra))
    table = {}
    for key in results["transformers"]:
        a, b = statistics.median(results["transformers"][key]), statistics.median(results["lean"][key])
        table[key] = {"transformers_ms": a, "lean_ms": b, "ratio": a / b}
        more = {p: statistics.median(results[p][key]) for p in extra if key in results[p]}
        table[key].update({f"{p}_ms": v for p, v in more.items()})
        print(f"{key:16}{a:14.1f}{b:10.1f}{a / b:7.2f}x" + "".join(f"{more.get(p, float('nan')):17.1f}" for p in extra))
    if compile_s:
        print("first compiled calls (compilation): " + ", ".join(f"{k} {v:.0f} s" for k, v in compile_s.items()))
    out = Path("bench/results/serve_decode_cost.json")
    out = out.with_name("serve_decode_compile.json") if args.compile else out
    out = out.with_name("serve_decode_frozen.json") if args.frozen else out
    from domain_expert.provenance import stamp

    write_json_atomic(out, {"stamp": stamp(), "rounds": args.rounds, "steps": args.steps, "median": table,
                            "all": results, "first_compiled_call_s": compile_s, "attention_probe": lean.attention,
                            "attention_probe_us": lean.attention_probe_us, "cpu": cpu_summary()})  # fmt: skip
    print(f"wrote {out}")


def products_by_rows(lean, rounds: int, cpu: dict, write_json) -> None:
    """All layers' products (as the lean decoder calls them) on [rows, in] inputs: best of `rounds` x 5 passes.
    Every layer's weights are used once per pass, so they come from memory as in a real step, not from cache."""
    import torch

    dtype = lean.layers[0].qkv.dtype
    weights = [w for L in lean.layers for w in (L.qkv, L.o, L.gu, L.down)]
    table = {}
    for rows in (1, 16, 32, 64, 128, 256):
        g = torch.Generator().manual_seed(rows)
        xs = {n: torch.randn(rows, n, generator=g).to(dtype) for n in {w.shape[1] for w in weights}}

        def one_pass(xs=xs):
            for w in weights:
                lean._linear(xs[w.shape[1]], w)

        one_pass()  # first calls pay one-off set-up
        best = float("inf")
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(5):
                one_pass()
            best = min(best, (time.perf_counter() - t) / 5)
        flops = sum(2 * rows * w.numel() for w in weights)
        table[rows] = {"ms": best * 1000, "gflop_s": flops / best / 1e9}
        print(f"{rows:4} rows: {best * 1000:6.2f} ms per pass over all layers, {flops / best / 1e9:5.0f} GFLOP/s")
    from domain_expert.provenance import stamp

    out = Path("bench/results/serve_product_rows.json")
    write_json(out, {"stamp": stamp(), "dtype": str(dtype), "rounds": rounds, "by_rows": table, "cpu": cpu})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
