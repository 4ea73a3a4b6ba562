"""Where the serving engine's worker time goes under load: N concurrent in-process clients (no HTTP, so nothing else
competes for the CPU) ask the run's held-out questions for a while; the scheduler's steps are timed by wrapping its
methods. Reports tokens/s, time in decoding steps vs prefills (and their forward passes), rows per decoding step,
prefill tokens including left padding.

    .venv/bin/python bench/serve_worker_time.py [RUN] [--clients 16] [--seconds 20] [--decoder lean|transformers]
        [--compile] [--kv slots|concat] [--attention auto|written|fused] [--mix on|off] [--out FILE]

`--kv concat` runs the lean decoder's lanes on the concatenating DynamicCache instead of the in-place buffers
(serve/decoding/kv_slots.py), to measure what the buffers gain side by side; `--mix off` prefills arrivals in a pass
of their own instead of inside their lane's decoding step (LeanDecoder.mixed).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import sys
import time
from pathlib import Path


def main() -> None:
    from domain_expert.fsutil import write_json_atomic
    from domain_expert.hardware import cpu_summary
    from domain_expert.models.loader import load_for_inference
    from domain_expert.serve.decoding import batcher
    from domain_expert.serve.engine import GenerationRequest, TransformersEngine

    sys.path.insert(0, str(Path(__file__).parent))
    from serve_throughput import load_prompts

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", default="runs/medical-terms", type=Path)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--decoder", choices=["lean", "transformers"], default="lean")
    ap.add_argument("--compile", action="store_true", help="serve --compile: decoding steps compiled")
    ap.add_argument("--kv", choices=["slots", "concat"], default="slots", help="the lean lanes' key/value cache")
    ap.add_argument("--mix", choices=["on", "off"], default="on",
                    help="arrivals prefilled inside a decoding step (on) or in a pass of their own")  # fmt: skip
    ap.add_argument("--attention", choices=["auto", "written", "fused"], default="auto",
                    help="the lean decoder's CPU attention (auto: its probe's choice)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=Path("bench/results/serve_worker_time.json"))
    args = ap.parse_args()

    prompts = load_prompts(args.run)
    engine = TransformersEngine(lambda: load_for_inference(args.run), "run", max_queue=4 * args.clients,
                                max_batch=32, decoder=args.decoder, compile=args.compile)  # fmt: skip
    sched = engine.scheduler
    if args.attention != "auto":
        if sched.lean is None:
            ap.error("--attention needs the lean decoder")
        sched.lean.attention = args.attention  # read at every forward pass
    sched.mix_prefill = args.mix == "on"  # read at every admission
    if args.kv == "concat":
        sched.slots = False  # read at every join/step/drop; no lane exists yet
    seconds: dict[str, float] = collections.defaultdict(float)
    counts: collections.Counter = collections.Counter()
    rows_per_step: collections.Counter = collections.Counter()

    def timed(key, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                seconds[key] += time.perf_counter() - t
                counts[key] += 1

        return wrapper

    decode = sched._decode

    def counted_decode(lane):
        rows_per_step[len(lane.rows)] += 1
        return decode(lane)

    sched._decode = timed("decoding steps", counted_decode)
    sched._prefill_group = timed("prefills", sched._prefill_group)
    forward = sched._forward

    def split_forward(lane, ids, *a, **k):
        kind = "prefill forward" if ids.shape[1] > 1 else "decoding forward"
        if ids.shape[1] > 1:
            counts["prefill tokens (with padding)"] += ids.numel()
        return timed(kind, forward)(lane, ids, *a, **k)

    sched._forward = split_forward
    forward_mixed = sched._forward_mixed

    def counted_mixed(lane, step, prefill):  # a decoding step with arrivals' prefill in the same pass
        counts["prefill tokens (with padding)"] += prefill[0].numel()
        counts["prefills inside decoding steps"] += 1
        return timed("mixed forward", forward_mixed)(lane, step, prefill)

    sched._forward_mixed = counted_mixed
    batcher.sample = timed("sampling", batcher.sample)  # a module function the scheduler calls by its global name
    sched._append = timed("emit + drop rows", sched._append)

    async def client(i: int, until: float, tokens: list[int]) -> None:
        rnd = random.Random(i)
        while time.perf_counter() < until:
            q = rnd.choice(prompts)
            req = GenerationRequest(model="run", messages=[{"role": "user", "content": q}], max_tokens=args.max_tokens)
            tokens.append((await engine.generate(req)).completion_tokens)

    async def drive(n: int, secs: float) -> list[int]:
        tokens: list[int] = []
        until = time.perf_counter() + secs
        await asyncio.gather(*(client(i, until, tokens) for i in range(n)))
        return tokens

    asyncio.run(drive(2, 3))  # warm-up
    seconds.clear()
    counts.clear()
    rows_per_step.clear()
    t0 = time.perf_counter()
    tokens = asyncio.run(drive(args.clients, args.seconds))
    wall = time.perf_counter() - t0
    engine.close()
    out = {
        "clients": args.clients,
        "decoder": args.decoder,
        "compiled": args.compile,
        "attention": sched.lean.attention if sched.lean is not None else None,
        "cpu": cpu_summary(),
        "mix_prefill": sched.mix_prefill and sched.slots,
        "kv": args.kv if sched.slots or args.kv == "concat" else "concat (slots need the eager lean decoder)",
        "wall_s": wall,
        "tokens_per_s": sum(tokens) / wall,
        "requests": len(tokens),
        "mean_answer_tokens": sum(tokens) / max(1, len(tokens)),
        "seconds": dict(seconds),
        "counts": dict(counts),
        "rows_per_decoding_step": dict(sorted(rows_per_step.items())),
    }
    print(f"{out['tokens_per_s']:.1f} tokens/s, {len(tokens)} requests, answers {out['mean_answer_tokens']:.1f} "
          f"tokens, wall {wall:.1f} s")  # fmt: skip
    for k, v in seconds.items():
        print(f"  {k:20} {v:6.2f} s ({v / wall:4.0%} of wall) in {counts[k]} calls, {v / counts[k] * 1000:.1f} ms each")
    print(f"  prefill tokens (with padding): {counts['prefill tokens (with padding)']}")
    print(f"  rows per decoding step: {out['rows_per_decoding_step']}")
    from domain_expert.provenance import stamp

    write_json_atomic(args.out, {"stamp": stamp(), **out})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
