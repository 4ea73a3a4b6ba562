"""A lane's key/value cache kept in preallocated buffers, for the lean decoder (lean_decoder.py).

Why: with a `DynamicCache` every decoding step concatenates each layer's keys and values with the new column (a copy
of the whole cache), a finished row is dropped with an index-select (another whole copy), and a joining group is
concatenated in (a third). At 16 clients rows join or leave almost every step, so the cache was copied about three
times a step: ~13% of a 16-row fp32 step in the copies of the concatenation alone (bench/serve_decode_cost.py's
profile). Here:

- each layer's keys and values live in a buffer [row capacity, kv heads, column capacity, dim]; the lane's rows are
  its first `rows` rows, and its used columns a window [start, end), right-aligned as the engine's left-padded rows
  are (the engine's 0/1 mask has exactly the window's columns);
- a decoding step writes its column in place at `end` (`update`, called by the lean decoder layer by layer);
- a finished row is replaced by a row from the end of the batch (`keep`: one row copied per hole, not all), so the
  engine reorders its own per-row state the same way;
- columns that became padding in every row are dropped by moving `start` (`trim`: no copy);
- a joining group is written into the rows after the lane's (`join`); only when its prompts are longer than the
  window reaches back, or the buffer is full, is the window copied into a new buffer (rarely: capacities grow by
  doubling).

Columns outside a row's real tokens hold finite values (zeros or older keys), masked out by the attention's -inf
bias as before. tests/test_kv_slots.py checks it against the concatenating cache step by step, and
tests/test_serve_batching.py the engine's answers.
"""

from __future__ import annotations


class SlotKV:
    """Per-layer keys/values of a lane's rows in preallocated buffers; see the module's docstring."""

    def __init__(self, layers: list[tuple], spare_columns: int = 64) -> None:
        """`layers`: each layer's (keys, values) [rows, kv heads, columns, dim], as a prefill leaves them."""
        import torch

        k0 = layers[0][0]
        self.n_layers = len(layers)
        self.rows = k0.shape[0]
        self.start, self.end = 0, k0.shape[2]
        self.spare = spare_columns
        self.keys: list = []  # per layer: views into self.k_all / self.v_all
        self.values: list = []
        self._allocate(self.rows, self.end + spare_columns, like=k0)
        self.k_all[:, : self.rows, :, : self.end] = torch.stack([k for k, _ in layers])
        self.v_all[:, : self.rows, :, : self.end] = torch.stack([v for _, v in layers])

    @property
    def width(self) -> int:
        return self.end - self.start

    def _allocate(self, row_cap: int, col_cap: int, like) -> None:
        """Fresh zeroed buffers (zeros: masked columns must hold finite values, or -inf + NaN scores give NaN). All
        layers in one tensor [layers, rows, kv heads, columns, dim] for keys and one for values, so that moving rows
        or a window is one copy for all layers, not one per layer (60 small copies for SmolLM2 took ~1.5 ms)."""
        import torch

        shape = (self.n_layers, row_cap, like.shape[1], col_cap, like.shape[3])
        self.k_all = torch.zeros(shape, dtype=like.dtype, device=like.device)
        self.v_all = torch.zeros(shape, dtype=like.dtype, device=like.device)
        self.keys, self.values = list(self.k_all.unbind(0)), list(self.v_all.unbind(0))

    def _regrow(self, row_cap: int, col_cap: int, shift: int = 0) -> None:
        """Copy the window into new buffers of the given capacities, starting at column `shift`."""
        old_k, old_v, n, s, e = self.k_all, self.v_all, self.rows, self.start, self.end
        self._allocate(row_cap, col_cap, like=old_k[0])
        self.k_all[:, :n, :, shift : shift + e - s] = old_k[:, :n, :, s:e]
        self.v_all[:, :n, :, shift : shift + e - s] = old_v[:, :n, :, s:e]
        self.start, self.end = shift, shift + e - s

    def reserve(self, new_columns: int) -> None:
        """Room for `new_columns` more columns at the end (call before a forward pass adds them)."""
        cap = self.keys[0].shape[2]
        if self.end + new_columns > cap:
            need = self.width + new_columns
            self._regrow(self.keys[0].shape[0], max(cap, 2 * need, need + self.spare))

    def update(self, keys, values, layer: int):
        """Write the new columns [rows, kv heads, t, dim] at the window's end; return the layer's whole window (views).
        The window grows by t after the last layer (the lean decoder calls this once per layer, in order)."""
        t = keys.shape[2]
        end = self.end + t
        if end > self.keys[layer].shape[2]:
            raise RuntimeError("SlotKV.update without reserve(): no room for the new columns")
        k_buf, v_buf = self.keys[layer], self.values[layer]
        k_buf[: self.rows, :, self.end : end] = keys
        v_buf[: self.rows, :, self.end : end] = values
        window = k_buf[: self.rows, :, self.start : end], v_buf[: self.rows, :, self.start : end]
        if layer == self.n_layers - 1:
            self.end = end
        return window

    def join(self, layers: list[tuple]) -> None:
        """Append a prefilled group's rows (`layers` as in __init__), right-aligned with the lane's; the window widens
        to the longer of the two (the engine pads its mask the same way)."""
        import torch

        k0 = layers[0][0]
        m, w = k0.shape[0], k0.shape[2]
        row_cap, col_cap = self.keys[0].shape[0], self.keys[0].shape[2]
        rows = self.rows + m
        if rows > row_cap or w > self.end:  # more rows than the buffers hold, or the prompts reach before column 0
            shift = max(0, w - self.width)
            need = max(self.width, w)
            self._regrow(max(rows, 2 * row_cap) if rows > row_cap else row_cap, max(col_cap, need + self.spare), shift)
        self.start = min(self.start, self.end - w)
        self.k_all[:, self.rows : rows, :, self.end - w : self.end] = torch.stack([k for k, _ in layers])
        self.v_all[:, self.rows : rows, :, self.end - w : self.end] = torch.stack([v for _, v in layers])
        self.rows = rows

    def keep(self, keep: list[int]) -> list[int]:
        """Keep the rows `keep` (ascending indices): each hole below len(keep) is filled with a kept row from the end.
        Returns the new order (new row i was row order[i]) for the engine's per-row state."""

        n = len(keep)
        kept = set(keep)
        holes = [i for i in range(n) if i not in kept]
        movers = [i for i in keep if i >= n]  # as many as there are holes
        order = list(range(n))
        for h, m in zip(holes, movers, strict=True):
            order[h] = m
        s, e = self.start, self.end
        for h, m in zip(holes, movers, strict=True):
            # slice copies, not an advanced-index assignment: that one ran element by element (~1.4 ms a step here)
            for buf in (self.k_all, self.v_all):
                buf[:, h, :, s:e].copy_(buf[:, m, :, s:e])
        self.rows = n
        return order

    def trim(self, lead: int) -> None:
        """Drop the window's first `lead` columns (padding in every row): no copy."""
        self.start += lead
