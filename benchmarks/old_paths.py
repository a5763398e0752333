"""The benchmarks' own copy of the generator's old paths (the library ships only the new ones).

``fedpit.generate.generate`` always decodes with :func:`fedpit.generate.fast_decoding` (a static KV cache and the
one-query decode attention, where the model qualifies) and a stop-string criterion built once per tokenizer. The
benchmarks that measure what those gave (``generation.py``, ``selfgen_throughput.py``) put the old paths back for the
duration of :func:`old_paths`:

  fast_decode=False   HF ``generate``'s defaults: a KV cache grown by concatenation, SDPA for every step
  cache_stop=False    HF builds its ``StopStringCriteria`` inside every ``generate`` call (from ``stop_strings`` and
                      ``tokenizer``), about 0.2 s each: it walks the whole vocabulary
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def _plain_decoding(model) -> Iterator[dict]:
    yield {}  # no extra HF generate arguments: its default cache and attention


def _hf_stop_kwargs(new):
    def kwargs(tokenizer, max_new_tokens, do_sample, temperature, top_p, repetition_penalty, stop_strings):
        kw = new(tokenizer, max_new_tokens, do_sample, temperature, top_p, repetition_penalty, None)
        if stop_strings:
            kw.update(stop_strings=list(stop_strings), tokenizer=tokenizer)
        return kw

    return kwargs


@contextlib.contextmanager
def old_paths(fast_decode: bool = True, cache_stop: bool = True) -> Iterator[None]:
    """For the duration, ``fedpit.generate.generate`` (and everything that calls it, such as self-generation) decodes
    with the old path wherever a flag is False; restored afterwards."""
    from fedpit import generate as gen

    saved = gen.fast_decoding, gen._generate_kwargs
    try:
        if not fast_decode:
            gen.fast_decoding = _plain_decoding
        if not cache_stop:
            gen._generate_kwargs = _hf_stop_kwargs(saved[1])
        yield
    finally:
        gen.fast_decoding, gen._generate_kwargs = saved
