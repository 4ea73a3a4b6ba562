"""Prompt formats: how a record becomes token ids. A registry looked up by name; the chosen format is written into
the run folder (prompt_format.json) and read back by every later stage, so training and inference cannot drift.

Encoder-decoder models (`kind="seq2seq"`, e.g. Flan-T5) use the same styles: the rendered prompt (chat template or the
plain Q/A frame) is the encoder's input, ended by EOS as T5's own tokenizer ends every input, with no BOS; the answer
plus one EOS is the decoder's labels. An example is still one `likelihood.Example`: `ids[:start]` is the encoder input
and `ids[start:]` the labels, so batching, lengths and checkpoints are shared with causal models. Raw text (documents,
the forgetting guard's general English) is the decoder's labels after an empty encoder input (EOS alone, what T5's
tokenizer gives for ""): the decoder's likelihood of the text on its own."""

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
    kind: str = "causal"  # models.kinds: "seq2seq" reads the prompt with the encoder (module docstring)

    @property
    def seq2seq(self) -> bool:
        return self.kind == "seq2seq"

    def _head(self, tokenizer) -> list[int]:
        plain = self.style == "plain" and not self.seq2seq
        return [tokenizer.bos_token_id] if plain and tokenizer.bos_token_id is not None else []

    def _tail(self, tokenizer) -> list[int]:
        return [tokenizer.eos_token_id] if self.seq2seq else []

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
        the example was cut to max_len (the answer keeps as many tokens as fit, EOS is then lost). For seq2seq the
        encoder input and the labels are each cut to max_len: they are separate sequences.
        """
        p_ids = self.encode_prompt(tokenizer, prompt)
        c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if self.seq2seq:
            enc, labels = p_ids[:max_len], c_ids[:max_len]
            return enc + labels, len(enc), len(p_ids) > max_len or len(c_ids) > max_len
        ids = p_ids + c_ids
        truncated = len(ids) > max_len
        return ids[:max_len], min(len(p_ids), max_len), truncated

    def encode_prompt(self, tokenizer, prompt: str) -> list[int]:
        ids = tokenizer(self.render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        return self._head(tokenizer) + ids + self._tail(tokenizer)

    def encode_messages(self, tokenizer, messages: list[dict]) -> list[int]:
        """Token ids of a conversation (render_messages) up to where the reply starts (the encoder's input)."""
        ids = tokenizer(self.render_messages(tokenizer, messages), add_special_tokens=False)["input_ids"]
        return self._head(tokenizer) + ids + self._tail(tokenizer)

    def encode_text(self, tokenizer, text: str) -> list[int]:
        """Raw text as an example whose first token is context and the rest is scored: causal models get BOS first
        in the plain style; seq2seq models get an empty encoder input (EOS) and the whole text as labels."""
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if self.seq2seq:
            return [tokenizer.eos_token_id] + ids
        return self._head(tokenizer) + ids

    def save(self, folder: str | Path) -> None:
        from domain_expert.fsutil import write_json_atomic

        data = asdict(self)
        if not self.seq2seq:
            del data["kind"]  # causal runs keep the file they always had
        write_json_atomic(Path(folder) / "prompt_format.json", data)

    @classmethod
    def load(cls, folder: str | Path) -> PromptFormat:
        path = Path(folder) / "prompt_format.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**data)
        except FileNotFoundError:
            from domain_expert.errors import RunFolderError

            raise RunFolderError("prompt_format.json missing", where=str(path), fix="re-run the stage") from None


def from_config(style: str, system: str | None, tokenizer=None, kind: str = "causal") -> PromptFormat:
    """The format a config asks for; `auto` becomes chat or plain here, from the tokenizer, and what is written into
    prompt_format.json is that concrete style."""
    if style == "auto":
        if tokenizer is None:
            raise ConfigError("prompt style 'auto' needs the model's tokenizer to choose", where="prompt.style")
        style = "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    return PromptFormat(style=style, system=system, kind=kind)
