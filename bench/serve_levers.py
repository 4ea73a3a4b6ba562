"""The two CPU findings behind the serving engine's design, measured side by side on the run's merged model:

1. prefill logits: the full model with `logits_to_keep=1` vs the decoder + the head on a contiguous last position
   (the former hands the head a strided view, which on CPU takes a batched-matmul path copying the tied embedding);
2. decoding on the thread that loaded the model vs on another thread (OpenMP thread teams are per calling thread).

    .venv/bin/python bench/serve_levers.py [RUN]
"""

from __future__ import annotations

import sys
import threading
import time


def main(run: str = "runs/medical-terms") -> int:
    import torch
    from transformers import DynamicCache

    from domain_expert.models.loader import load_for_inference

    lm = load_for_inference(run)
    model = lm.model.merge_and_unload() if lm.has_adapter else lm.model
    torch.set_grad_enabled(False)
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    ids = torch.randint(100, 1000, (4, 20), generator=torch.Generator().manual_seed(0))

    def timed(fn, n=5):
        fn()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n * 1000

    full = timed(lambda: model(input_ids=ids, logits_to_keep=1))
    split = timed(lambda: head(decoder(input_ids=ids).last_hidden_state[:, -1, :].contiguous()))
    print(f"prefill 4x20, last-position logits: full model {full:.0f} ms, decoder + head {split:.0f} ms "
          f"({full / split:.1f}x)")  # fmt: skip

    def decode_ms(out: dict, key: str, steps: int = 40):
        torch.set_grad_enabled(False)
        cache = DynamicCache()
        x = ids[:1]
        nxt = model(input_ids=x, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1:].argmax(-1)
        t = time.perf_counter()
        for _ in range(steps):
            nxt = model(input_ids=nxt, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
        out[key] = (time.perf_counter() - t) / steps * 1000

    res: dict = {}
    for r in range(2):
        decode_ms(res, f"same{r}")
        th = threading.Thread(target=decode_ms, args=(res, f"other{r}"))
        th.start()
        th.join()
    same = min(res["same0"], res["same1"])
    other = min(res["other0"], res["other1"])
    print(f"decoding step, batch 1: loading thread {same:.1f} ms, another thread {other:.1f} ms ({other / same:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
