"""`domain-expert generate` (one shot) and `domain-expert chat` (terminal, streamed): ask the tuned model, or its
base with `--base`, in exactly the prompt format the model was trained with (read from the run folder)."""

from __future__ import annotations

import sys

from domain_expert.models.loader import LoadedModel, adapter_off


def generate_detailed(
    lm: LoadedModel,
    prompts: list[str],
    *,
    base: bool = False,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    progress: bool = False,
    desc: str | None = None,
) -> list[dict]:
    """Greedy answers, batched with left padding: [{"text", "stopped" (EOS before the limit), "tokens"}]. A seq2seq
    model's prompts are its encoder input (padding masked either side); its output is the answer alone after the
    decoder start token."""
    import torch
    from tqdm.auto import tqdm

    tok = lm.tokenizer
    out: list[dict] = []
    device = next(lm.model.parameters()).device
    chunks = range(0, len(prompts), batch_size)
    for b in tqdm(chunks, desc=desc or f"generate {lm.label}", disable=not progress, leave=False):
        encoded = [lm.fmt.encode_prompt(tok, p) for p in prompts[b : b + batch_size]]
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, e in enumerate(encoded):
            ids[i, width - len(e) :] = torch.tensor(e)
            mask[i, width - len(e) :] = 1
        with torch.no_grad(), adapter_off(lm, base):
            gen = lm.model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        for row in gen[:, 1 if lm.fmt.seq2seq else width :].tolist():
            stopped = tok.eos_token_id in row
            n = row.index(tok.eos_token_id) if stopped else len(row)
            out.append({"text": tok.decode(row[:n], skip_special_tokens=True).strip(), "stopped": stopped, "tokens": n})
    return out


def generate_batch(lm: LoadedModel, prompts: list[str], **kwargs) -> list[str]:
    """Greedy answers as text (see generate_detailed)."""
    return [g["text"] for g in generate_detailed(lm, prompts, **kwargs)]


def stream_answer(
    lm: LoadedModel, messages: list[dict], *, base: bool = False, max_new_tokens: int = 256, out=None
) -> str:
    """Generate one reply to a conversation, printing tokens as they come."""
    out = out or sys.stdout
    import threading

    import torch
    from transformers import TextIteratorStreamer

    tok = lm.tokenizer
    ids = torch.tensor([lm.fmt.encode_messages(tok, messages)], device=next(lm.model.parameters()).device)
    # skip_prompt: a causal model's first chunk is the prompt, a seq2seq model's the decoder start token
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    kwargs = dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        streamer=streamer,
    )

    def work():
        with torch.no_grad(), adapter_off(lm, base):
            lm.model.generate(**kwargs)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    parts = []
    for piece in streamer:
        parts.append(piece)
        out.write(piece)
        out.flush()
    thread.join()
    out.write("\n")
    return "".join(parts).strip()


def chat_loop(lm: LoadedModel, *, base: bool = False, max_new_tokens: int = 256, stdin=None, out=None) -> None:
    stdin = stdin or sys.stdin  # resolved at call time, so tests and callers can swap the streams
    out = out or sys.stdout
    who = f"{lm.label} (adapter disabled)" if base and lm.has_adapter else lm.label
    out.write(
        f"Chatting with {who}. Not a clinician: answers can be wrong; not medical advice.\n"
        "Type /reset to clear the conversation, /exit or Ctrl-D to quit.\n"
    )
    messages: list[dict] = []
    while True:
        out.write("\nyou> ")
        out.flush()
        line = stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            messages = []
            out.write("(conversation cleared)\n")
            continue
        messages.append({"role": "user", "content": line})
        out.write("model> ")
        reply = stream_answer(lm, messages, base=base, max_new_tokens=max_new_tokens, out=out)
        messages.append({"role": "assistant", "content": reply})
