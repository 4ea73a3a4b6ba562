"""Rebuild tests/assets/tiny-tokenizer: a 1,000-token byte-level BPE with a ChatML chat template, trained on HPO
names and definitions. Kept in the repo so fast tests need neither the hub nor the 49k-token SmolLM2 tokenizer.

    .venv/bin/python tests/assets/make_tiny_tokenizer.py
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>'"
    " + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def main() -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from domain_expert.data.hpo import hpo_obo_path, parse_obo

    terms = parse_obo(hpo_obo_path())
    texts = [f"What is {t.name}? {t.definition}" for t in list(terms.values())[:4000] if t.definition]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=1000, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    out = Path(__file__).parent / "tiny-tokenizer"
    fast.save_pretrained(out)
    print(f"wrote {out} ({len(fast)} tokens)")


if __name__ == "__main__":
    main()
