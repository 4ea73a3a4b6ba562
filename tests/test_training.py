from __future__ import annotations

import math

import pytest
import torch

from domain_expert.data.records import Record
from domain_expert.finetune.batching import encode_records, length_grouped_batches
from domain_expert.finetune.schedule import lr_factor
from domain_expert.likelihood import IGNORE, Example, causal_lm_loss, collate
from domain_expert.models.tokenizer import load_tokenizer
from domain_expert.prompts import PromptFormat


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


def test_pad_differs_from_eos(tok):
    assert tok.pad_token_id != tok.eos_token_id


def test_example_masks_prompt_and_ends_with_eos(tok):
    fmt = PromptFormat("chat", "sys")
    [ex], _ = encode_records([Record("1", "g", "s", "define", "What is anemia?", "Low hemoglobin.")], fmt, tok, 256)
    assert ex.ids[-1] == tok.eos_token_id
    prompt_ids = fmt.encode_prompt(tok, "What is anemia?")
    assert ex.ids[: ex.start] == prompt_ids
    assert tok.decode(ex.ids[ex.start : -1]) == "Low hemoglobin."
    ids, mask, labels = collate([ex, Example([5, 6], 1)], tok.pad_token_id)
    assert (labels[0, : ex.start] == IGNORE).all()
    assert labels[0, len(ex.ids) - 1] == tok.eos_token_id  # EOS is a label: the model learns to stop
    assert labels[1, 0] == IGNORE and labels[1, 1] == 6 and (labels[1, 2:] == IGNORE).all()
    assert mask[1].tolist()[:2] == [1, 1] and mask[1, 2:].sum() == 0


def test_plain_style_renders_without_chat_template(tok):
    fmt = PromptFormat("plain", None)
    text = fmt.render_prompt(tok, "What is X?")
    assert text.endswith("### Answer:\n") and "What is X?" in text


def test_auto_style_follows_the_chat_template(tok):
    """`auto` (the default) is chat for a model with a template and plain for a base model such as gemma3-270m; the
    concrete style is what gets recorded, so later stages never see `auto`."""
    import copy

    from domain_expert.errors import ConfigError
    from domain_expert.prompts import from_config

    assert tok.chat_template
    assert from_config("auto", "sys", tok) == PromptFormat("chat", "sys")
    base = copy.deepcopy(tok)
    base.chat_template = None
    assert from_config("auto", None, base) == PromptFormat("plain", None)
    assert from_config("chat", None, base).style == "chat"  # an explicit style is kept (and refused at render)
    with pytest.raises(ConfigError, match="needs the model's tokenizer"):
        from_config("auto", None)


def test_truncation_is_counted(tok):
    fmt = PromptFormat("chat", None)
    recs = [Record("1", "g", "s", "define", "What is anemia?", "word " * 300)]
    exs, truncated = encode_records(recs, fmt, tok, 64)
    assert truncated == 1 and len(exs[0].ids) == 64


def test_selective_head_loss_equals_full_loss(tiny_model_dir, tok):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    fmt = PromptFormat("chat", "sys")
    recs = [Record(str(i), "g", "s", "define", f"What is term {i}?", "An answer " * (i + 1)) for i in range(3)]
    exs, _ = encode_records(recs, fmt, tok, 128)
    ids, mask, labels = collate(exs, tok.pad_token_id)
    ours = causal_lm_loss(model, ids, mask, labels)
    reference = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert torch.allclose(ours, reference, atol=1e-5)


def test_length_grouped_batches_cover_every_example_once():
    lengths = [i % 17 for i in range(103)]
    batches = length_grouped_batches(103, lengths, 8, seed=0, epoch=0)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(103))
    assert batches != length_grouped_batches(103, lengths, 8, seed=0, epoch=1)
    assert batches == length_grouped_batches(103, lengths, 8, seed=0, epoch=0)


def test_lr_schedule_warmup_cosine_and_time_budget():
    assert lr_factor(0, 100, 10, 0, None) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0, None) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, 0, None) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, 0, None) == pytest.approx(0.1)
    mid = lr_factor(55, 100, 10, 0, None)
    assert mid == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    # halfway through the time budget but only 20% of steps: time wins
    assert lr_factor(28, 100, 10, 50, 100) == pytest.approx(mid)


def test_sequence_nll_sums_match_per_sequence_losses(tiny_model_dir, tok):
    from transformers import AutoModelForCausalLM

    from domain_expert.likelihood import sequence_nll

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    fmt = PromptFormat("chat", None)
    recs = [Record(str(i), "g", "s", "define", f"What is term {i}?", "An answer " * (i + 1)) for i in range(3)]
    exs, _ = encode_records(recs, fmt, tok, 128)
    sums, counts = sequence_nll(model, *collate(exs, tok.pad_token_id))
    for ex, s, n in zip(exs, sums, counts, strict=True):
        one = collate([ex], tok.pad_token_id)
        assert n == len(ex.ids) - ex.start
        assert s / n == pytest.approx(float(model(input_ids=one[0], labels=one[2]).loss), rel=1e-4)


def test_split_by_tokens_bounds_padded_size_and_keeps_every_row():
    from domain_expert.finetune.batching import split_by_tokens

    lengths = [10, 200, 50, 256, 30, 120, 90, 5]
    batch = list(range(8))
    micro = split_by_tokens(batch, lengths, 300)
    assert sorted(i for mb in micro for i in mb) == batch
    for mb in micro:
        assert max(lengths[i] for i in mb) * len(mb) <= 300 or len(mb) == 1
    assert split_by_tokens(batch, lengths, 10**6, overhead=10**6) == [sorted(batch, key=lambda i: -lengths[i])]
    # no cap: one pass unless splitting saves more padding than a pass costs
    assert len(split_by_tokens(batch, lengths, None, overhead=10**6)) == 1
    assert len(split_by_tokens(batch, lengths, None, overhead=0)) > 1


def test_split_by_tokens_is_the_cheapest_contiguous_split():
    """Exhaustive check against every way to cut the sorted rows: padded tokens + overhead per pass, within the cap."""
    import itertools
    import random

    from domain_expert.finetune.batching import split_by_tokens

    rng = random.Random(0)
    for _ in range(40):
        lengths = [rng.randint(5, 120) for _ in range(rng.randint(1, 9))]
        cap, overhead = rng.choice([None, 150, 400]), rng.choice([0, 30, 128])
        rows = sorted(range(len(lengths)), key=lambda i: -lengths[i])

        def cost(groups, lengths=lengths, cap=cap, overhead=overhead):
            if any(cap and lengths[g[0]] * len(g) > cap and len(g) > 1 for g in groups):
                return float("inf")
            return sum(lengths[g[0]] * len(g) + overhead for g in groups)

        best = min(
            cost([rows[a:b] for a, b in itertools.pairwise((0, *cuts, len(rows)))])
            for k in range(len(rows))
            for cuts in itertools.combinations(range(1, len(rows)), k)
        )
        got = split_by_tokens(list(range(len(lengths))), lengths, cap, overhead)
        assert sorted(i for g in got for i in g) == list(range(len(lengths)))
        assert cost(got) == best


def test_token_split_does_not_change_the_step(tiny_model_dir, tok):
    """Accumulating micro-batches gives the same gradient as one big batch (loss normalised per step)."""
    from transformers import AutoModelForCausalLM

    from domain_expert.finetune.batching import split_by_tokens

    fmt = PromptFormat("chat", None)
    recs = [Record(str(i), "g", "s", "define", f"What is term {i}?", "An answer " * (i + 1)) for i in range(6)]
    exs, _ = encode_records(recs, fmt, tok, 128)
    lengths = [len(e.ids) for e in exs]

    def grads(max_tokens):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
        n_lab = sum(len(e.ids) - e.start for e in exs)
        for mb in split_by_tokens(list(range(6)), lengths, max_tokens):
            s, _ = causal_lm_loss(model, *collate([exs[i] for i in mb], tok.pad_token_id), reduction="sum")
            (s / n_lab).backward()
        return model.model.layers[0].self_attn.q_proj.weight.grad.clone()

    assert torch.allclose(grads(None), grads(max(lengths) * 2), atol=1e-6)
