"""What the serving engine's text work costs per request on this CPU, next to a decoding step (~41 ms at batch 1,
~60 ms at batch 14 for SmolLM2 here): the chat template + tokenizer for a prompt (done twice per chat request: once
to check the prompt-token limit, once to generate), and the streamed text, which re-decodes the whole answer after
every token (quadratic in its length) rather than decoding incrementally.

    .venv/bin/python bench/serve_text_cost.py [--config medical-terms] [--answer-tokens 48]
"""

from __future__ import annotations

import argparse
import time


def _per_call_ms(fn, repeat: int) -> float:
    for _ in range(5):
        fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat * 1000


def main() -> None:
    from domain_expert.config import load_config
    from domain_expert.models.reference import resolve_model
    from domain_expert.models.tokenizer import load_tokenizer
    from domain_expert.prompts import from_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="medical-terms")
    ap.add_argument("--answer-tokens", type=int, default=48, help="the serving benchmark's max_tokens")
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()

    cfg = load_config(args.config)
    tok = load_tokenizer(resolve_model(cfg.model, progress=False).path)
    fmt = from_config(cfg.prompt.style, cfg.prompt.system, tok)
    messages = [{"role": "user", "content": "What is thrombocytopenia? Define it briefly."}]

    def encode():
        return tok(fmt.render_messages(tok, messages), add_special_tokens=False)["input_ids"]

    answer = tok("A decrease in the number of platelets in the blood, " * 8, add_special_tokens=False)["input_ids"]
    answer = answer[: args.answer_tokens]

    def stream_text():  # what the engine does: decode the answer so far after each token
        for n in range(1, len(answer) + 1):
            tok.decode(answer[:n], skip_special_tokens=True)

    enc = _per_call_ms(encode, args.repeat)
    dec = _per_call_ms(stream_text, max(1, args.repeat // 10))
    print(f"prompt encode (chat template + tokenizer): {enc:.3f} ms per call, {2 * enc:.3f} ms per chat request")
    print(f"streamed text for a {len(answer)}-token answer (re-decode after every token): {dec:.3f} ms per request")


if __name__ == "__main__":
    main()
