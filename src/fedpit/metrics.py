"""Offline answer metrics against a reference: Rouge-L F, embedding cosine, exact match."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from rouge_score import rouge_scorer

_scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """Rouge-L F1 (rouge-score, rougeL with stemming, as in AlpaCare's and the platform's measurements)."""
    if not prediction.strip() or not reference.strip():
        return 0.0
    return _scorer.score(reference, prediction)["rougeL"].fmeasure


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def exact_match(prediction: str, reference: str) -> bool:
    """Verbatim after whitespace normalization; a prediction that continues past the reference still counts."""
    p, r = normalize(prediction), normalize(reference)
    return bool(r) and p.startswith(r)


def embedding_cosine(predictions: Sequence[str], references: Sequence[str], embed=None) -> list[float]:
    """Cosine similarity of sentence embeddings (the packaged all-MiniLM-L6-v2 by default), one per pair."""
    if embed is None:
        from .embed import minilm_embed as embed
    if not predictions:
        return []
    a = np.asarray(embed(list(predictions)), dtype=np.float64)
    b = np.asarray(embed(list(references)), dtype=np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True).clip(min=1e-12)
    b /= np.linalg.norm(b, axis=1, keepdims=True).clip(min=1e-12)
    return (a * b).sum(axis=1).tolist()
