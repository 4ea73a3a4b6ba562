"""An Ollama `Modelfile` for the GGUF target: FROM the GGUF, the chat template in Ollama's Go template syntax, the
trained system prompt, stop tokens and greedy decoding (as evaluated).

Translation rule: a Jinja chat template cannot be translated in general. The template is rendered on a probe
conversation and compared with ChatML (`<|im_start|>{role}\\n{content}<|im_end|>\\n` per message, then
`<|im_start|>assistant\\n`), the format SmolLM2, Qwen2 and many others use; when they match, the ChatML Go template
below is written (it renders the same text). Any other template is left out of the Modelfile and Ollama falls back to
its own reading of the GGUF's `tokenizer.chat_template`; stage.json says which happened.
"""

from __future__ import annotations

# Ollama passes the system prompt both as .System and as a system entry of .Messages (as its own ChatML templates
# assume): the range skips system entries so the prompt appears once, first, as in training.
CHATML_GO = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    '{{- range .Messages }}{{- if ne .Role "system" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
    "{{- end }}<|im_start|>assistant\n"
)
_PROBE = [
    {"role": "system", "content": "S1"},
    {"role": "user", "content": "U1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "U2"},
]


def chatml(messages: list[dict]) -> str:
    """What CHATML_GO renders for `messages` (a system message first becomes .System)."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


def is_chatml(tokenizer) -> bool:
    """True when the tokenizer's chat template renders the probe conversation exactly as ChatML."""
    if not getattr(tokenizer, "chat_template", None):
        return False
    try:
        rendered = tokenizer.apply_chat_template(_PROBE, tokenize=False, add_generation_prompt=True)
    except Exception:  # a template that refuses the probe (e.g. no system role) is not ChatML
        return False
    return rendered == chatml(_PROBE)


def modelfile(gguf_name: str, tokenizer, system: str | None) -> tuple[str, dict]:
    """(the Modelfile's text, what it decided) for a GGUF next to it."""
    template = is_chatml(tokenizer)
    stops = []
    if template:
        stops.append("<|im_end|>")
    eos = tokenizer.eos_token
    if eos and eos not in stops:
        stops.append(eos)
    lines = [f"FROM ./{gguf_name}", ""]
    if template:
        lines += [f'TEMPLATE """{CHATML_GO}"""', ""]
    if system:
        lines += [f'SYSTEM """{system}"""', ""]
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines.append("PARAMETER temperature 0")  # greedy, as the run was evaluated; raise it for varied answers
    info = {
        "template": "ChatML (checked by rendering)" if template else "none written: Ollama reads the GGUF's template",
        "system": system,
        "stop": stops,
    }
    return "\n".join(lines) + "\n", info
