"""Differences between transformers versions that callers must not guess at."""

from __future__ import annotations

import functools


def cache_kwarg(decoder) -> str:
    """The keyword a decoder's forward takes its key/value cache by: transformers 5.x renames `past_key_values` to
    `cache` (the old name goes in 5.40). Passing the wrong one is silent (**kwargs swallows it and the model starts
    a fresh cache), so callers ask rather than guess. Looked up once per decoder class."""
    return _cache_kwarg(type(decoder))


@functools.cache
def _cache_kwarg(cls) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"
