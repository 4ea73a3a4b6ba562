"""Prompt formats: how a record becomes token ids. A registry looked up by name; the chosen format is written into
the run folder (prompt_format.json) and read back by every later stage, so training and inference cannot drift."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from domain_expert.errors import ConfigError

PLAIN_TEMPLATE = "### Question:\n{prompt}\n\n### Answer:\n"


@dataclass(frozen=True)
class PromptFormat:
    style: str  # "chat" | "plain"
    system: str | None = None

    def render_prompt(self, tokenizer, prompt: str) -> str:
        """Text the model sees before its answer (ends where generation starts)."""
        if self.style == "chat":
            if not getattr(tokenizer, "chat_template", None):
                raise ConfigError(
                    "prompt style 'chat' needs a tokenizer with a chat template, and this one has none",
                    where="prompt.style",
                    fix="set prompt.style=auto or plain for base (non-chat) models such as Llama-2-7b-hf",
                )
            messages = [{"role": "system", "content": self.system}] if self.system else []
            messages.append({"role": "user", "content": prompt})
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if self.style == "plain":
            prefix = (self.system + "\n\n") if self.system else ""
            return prefix + PLAIN_TEMPLATE.format(prompt=prompt)
        raise ConfigError(f"unknown prompt style '{self.style}'", where="prompt.style", fix="use chat or plain")

    def render_messages(self, tokenizer, messages: list[dict]) -> str:
        """Multi-turn form of render_prompt, for chat sessions: messages alternate user/assistant, last is user."""
        if self.style == "chat":
            head = [{"role": "system", "content": self.system}] if self.system else []
            return tokenizer.apply_chat_template(head + messages, tokenize=False, add_generation_prompt=True)
        text = (self.system + "\n\n") if self.system else ""
        for m in messages:
            if m["role"] == "user":
                text += PLAIN_TEMPLATE.format(prompt=m["content"])
            else:
                text += m["content"] + "\n\n"
        return text

    def encode_example(self, tokenizer, prompt: str, completion: str, max_len: int) -> tuple[list[int], int, bool]:
        """Token ids of prompt+completion+EOS and the index where the answer starts (loss is on the answer only).

        EOS is appended and trained on, so the tuned model learns to stop (a tuned model that never stops is a
        common complaint when pad == EOS masks that label). Returns truncated=True when
        the example was cut to max_len (the answer keeps as many tokens as fit, EOS is then lost).
        """
        p_ids = tokenizer(self.render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        bos = [tokenizer.bos_token_id] if self.style == "plain" and tokenizer.bos_token_id is not None else []
        p_ids = bos + p_ids
        c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = p_ids + c_ids
        truncated = len(ids) > max_len
        return ids[:max_len], min(len(p_ids), max_len), truncated

    def encode_prompt(self, tokenizer, prompt: str) -> list[int]:
        ids = tokenizer(self.render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        if self.style == "plain" and tokenizer.bos_token_id is not None:
            ids = [tokenizer.bos_token_id] + ids
        return ids

    def save(self, folder: str | Path) -> None:
        from domain_expert.fsutil import write_json_atomic

        write_json_atomic(Path(folder) / "prompt_format.json", asdict(self))

    @classmethod
    def load(cls, folder: str | Path) -> PromptFormat:
        path = Path(folder) / "prompt_format.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**data)
        except FileNotFoundError:
            from domain_expert.errors import RunFolderError

            raise RunFolderError("prompt_format.json missing", where=str(path), fix="re-run the stage") from None


def from_config(style: str, system: str | None, tokenizer=None) -> PromptFormat:
    """The format a config asks for; `auto` becomes chat or plain here, from the tokenizer, and what is written into
    prompt_format.json is that concrete style."""
    if style == "auto":
        if tokenizer is None:
            raise ConfigError("prompt style 'auto' needs the model's tokenizer to choose", where="prompt.style")
        style = "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    return PromptFormat(style=style, system=system)
