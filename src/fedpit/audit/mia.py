"""Membership inference: per-example scores, ROC AUC with a bootstrap 95% interval, and TPR at a low FPR.

Scores are *membership* scores: higher means "more likely a training member". The audit makes them from losses
(lower loss: more likely a member), so it passes ``-loss``:

- ``loss``: the response loss as a per-example mean over its response tokens (Yeom et al. 2018);
- ``ref``: the loss minus the bare backbone's loss on the same example (reference calibration, Carlini et al.
  2022 / Mireshghallah et al. 2022): what the fine-tuning, not the example's difficulty, did to it;
- ``zlib``: the loss divided by the zlib-compressed length of the response in bytes (Carlini et al. 2021).

AUC is scikit-learn's; the interval resamples members and non-members separately (stratified bootstrap) and takes
the 2.5th and 97.5th percentiles. TPR at x% FPR is the largest true-positive rate on the ROC curve whose
false-positive rate is at most x% (Carlini et al. 2022, "Membership Inference Attacks From First Principles").
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score, roc_curve

LOW_FPR_MIN_NONMEMBERS = 1000  # TPR at 1% FPR is reported only from this many non-members on


def zlib_bytes(text: str) -> int:
    """Length of ``text`` (UTF-8) compressed by zlib at the default level, in bytes (at least 1)."""
    return max(1, len(zlib.compress(text.encode("utf-8"))))


def _labels(members: Sequence[float], nonmembers: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    return y, np.r_[np.asarray(members, dtype=float), np.asarray(nonmembers, dtype=float)]


def auc(members: Sequence[float], nonmembers: Sequence[float]) -> float:
    """ROC AUC of membership scores (higher: member); 0.5 is chance, 1.0 a perfect separation."""
    y, s = _labels(members, nonmembers)
    return float(roc_auc_score(y, s))


def tpr_at_fpr(members: Sequence[float], nonmembers: Sequence[float], fpr: float) -> float:
    """The largest true-positive rate at a false-positive rate of at most ``fpr``."""
    y, s = _labels(members, nonmembers)
    f, t, _ = roc_curve(y, s)
    return float(t[f <= fpr + 1e-12].max())


def _auc_rows(m: np.ndarray, n: np.ndarray) -> np.ndarray:
    """AUC of each row pair (Mann-Whitney U with average ranks for ties: the same value as roc_auc_score)."""
    ranks = rankdata(np.concatenate([m, n], axis=1), axis=1)
    n1, n0 = m.shape[1], n.shape[1]
    return (ranks[:, :n1].sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def bootstrap_auc_ci(
    members: Sequence[float], nonmembers: Sequence[float], n: int = 1000, seed: int = 0, chunk: int = 100
) -> tuple[float, float]:
    """95% interval of the AUC: ``n`` stratified bootstrap resamples (members and non-members each with
    replacement), seeded."""
    m, x = np.asarray(members, dtype=float), np.asarray(nonmembers, dtype=float)
    rng = np.random.default_rng(seed)
    out = []
    for s in range(0, n, chunk):
        b = min(chunk, n - s)
        out.append(_auc_rows(m[rng.integers(0, len(m), (b, len(m)))], x[rng.integers(0, len(x), (b, len(x)))]))
    lo, hi = np.percentile(np.concatenate(out), [2.5, 97.5])
    return float(lo), float(hi)


def bootstrap_mean_ci(values: Sequence[float], n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean of ``values`` by ``n`` bootstrap resamples, seeded (nan, nan when empty)."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    means = v[np.random.default_rng(seed).integers(0, len(v), (n, len(v)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def report(members: Sequence[float], nonmembers: Sequence[float], *, bootstrap: int = 1000, seed: int = 0) -> dict:
    """The audit's record of one score: ``auc``, ``auc_ci``, ``tpr_at_10pct_fpr`` (and ``tpr_at_1pct_fpr`` from
    1,000 non-members on), ``n_members``, ``n_nonmembers``."""
    out = {
        "auc": auc(members, nonmembers),
        "auc_ci": list(bootstrap_auc_ci(members, nonmembers, bootstrap, seed)),
        "tpr_at_10pct_fpr": tpr_at_fpr(members, nonmembers, 0.10),
    }
    if len(nonmembers) >= LOW_FPR_MIN_NONMEMBERS:
        out["tpr_at_1pct_fpr"] = tpr_at_fpr(members, nonmembers, 0.01)
    return out | {"n_members": len(members), "n_nonmembers": len(nonmembers)}


__all__ = ["auc", "bootstrap_auc_ci", "bootstrap_mean_ci", "report", "tpr_at_fpr", "zlib_bytes"]
