"""serve/decoding/kv_slots.py: the in-place key/value buffers hold what the concatenating cache holds, step by step."""

import random

import pytest
import torch

from domain_expert.serve.decoding.kv_slots import SlotKV

LAYERS, HEADS, DIM = 3, 2, 4


def _group(rows: int, width: int, gen) -> tuple[list, torch.Tensor]:
    """A prefilled group: per-layer (keys, values) and its 0/1 mask, left-padded to `width`."""
    mask = torch.ones(rows, width, dtype=torch.long)
    for r in range(rows):
        mask[r, : int(torch.randint(0, width, (1,), generator=gen))] = 0
    layers = [
        (torch.randn(rows, HEADS, width, DIM, generator=gen), torch.randn(rows, HEADS, width, DIM, generator=gen))
        for _ in range(LAYERS)
    ]
    return layers, mask


class Reference:
    """What the engine did with a DynamicCache: concatenate, pad left, index-select, slice."""

    def __init__(self, layers, mask):
        self.layers, self.mask = [list(x) for x in layers], mask

    def step(self, new):
        for i, (k, v) in enumerate(new):
            self.layers[i] = [torch.cat([self.layers[i][0], k], 2), torch.cat([self.layers[i][1], v], 2)]
        self.mask = torch.cat([self.mask, torch.ones(self.mask.shape[0], 1, dtype=torch.long)], 1)

    def join(self, layers, mask):
        w = max(self.mask.shape[1], mask.shape[1])

        def pad(x, dim):
            shape = list(x.shape)
            shape[dim] = w - x.shape[dim]
            return torch.cat([x.new_zeros(shape), x], dim)

        for i, (k, v) in enumerate(layers):
            old_k, old_v = self.layers[i]
            self.layers[i] = [torch.cat([pad(old_k, 2), pad(k, 2)]), torch.cat([pad(old_v, 2), pad(v, 2)])]
        self.mask = torch.cat([pad(self.mask, 1), pad(mask, 1)])

    def select(self, order):
        index = torch.tensor(order)
        self.layers = [[k[index], v[index]] for k, v in self.layers]
        self.mask = self.mask[index]
        lead = int((self.mask.cumsum(1) == 0).all(0).sum())
        self.mask = self.mask[:, lead:]
        self.layers = [[k[:, :, lead:], v[:, :, lead:]] for k, v in self.layers]
        return lead


def _same(slots: SlotKV, ref: Reference):
    assert slots.rows == ref.mask.shape[0] and slots.width == ref.mask.shape[1]
    real = ref.mask.bool()[:, None, :, None].expand(-1, HEADS, -1, DIM)
    for i in range(LAYERS):
        k = slots.keys[i][: slots.rows, :, slots.start : slots.end]
        v = slots.values[i][: slots.rows, :, slots.start : slots.end]
        assert torch.equal(k[real], ref.layers[i][0][real])
        assert torch.equal(v[real], ref.layers[i][1][real])
        assert torch.isfinite(k).all() and torch.isfinite(v).all()  # masked columns stay finite (no NaN scores)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_slots_hold_what_the_concatenating_cache_holds(seed):
    gen = torch.Generator().manual_seed(seed)
    rnd = random.Random(seed)
    layers, mask = _group(2, 5, gen)
    slots, ref = SlotKV(layers, spare_columns=3), Reference(layers, mask)
    _same(slots, ref)
    for _ in range(60):
        op = rnd.choice(["step", "step", "step", "join", "drop"])
        if op == "step" or slots.rows == 0:
            shape = (slots.rows, HEADS, 1, DIM)
            new = [(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)) for _ in range(LAYERS)]
            slots.reserve(1)  # grows or moves the window when the spare columns run out
            windows = [slots.update(k, v, i) for i, (k, v) in enumerate(new)]
            ref.step(new)
            for i, (k, _) in enumerate(windows):  # what the decoder attends to: the whole window, new column included
                assert k.shape[2] == ref.mask.shape[1] and torch.equal(k[:, :, -1:], new[i][0])
        elif op == "join":  # narrower or wider than the window: both happen
            g_layers, g_mask = _group(rnd.randint(1, 5), rnd.randint(1, slots.width + 6), gen)
            slots.join(g_layers)
            ref.join(g_layers, g_mask)
        elif slots.rows > 1:
            keep = sorted(rnd.sample(range(slots.rows), rnd.randint(1, slots.rows - 1)))
            order = slots.keep(keep)
            assert sorted(order) == keep  # the same rows, holes filled from the end
            slots.trim(ref.select(order))
        _same(slots, ref)


def test_update_without_reserve_is_refused():
    gen = torch.Generator().manual_seed(0)
    layers, _ = _group(1, 2, gen)
    slots = SlotKV(layers, spare_columns=0)
    k = torch.zeros(1, HEADS, 1, DIM)
    with pytest.raises(RuntimeError, match="reserve"):
        slots.update(k, k, 0)
