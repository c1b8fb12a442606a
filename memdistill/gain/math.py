"""The memory gain, pure numpy (definitions in docs/gain.md).

At completion position t the teacher recorded its top-k (ids i, logprobs l_i). The cartridges distillation
loss of a student distribution q there is L_t(q) = -sum_i exp(l_i) log q(i); the memory gain is
G_t = L_t(q_without_memory) - L_t(teacher) = sum_i exp(l_i) (l_i - log q_without_memory(i)).

Arrays are dense [T, K]; a teacher row with fewer than K entries is padded with id -1 / logprob -inf (or
NaN). An id the engine gave no value for (NaN in `logq`) is replaced by the engine's `bound[t]`, an upper
bound on log q there, which can only make G_t smaller: the gain reported is then a lower bound, and the
entry is counted. A missing value with no bound leaves G_t unknown (NaN).
"""

from __future__ import annotations

import numpy as np


def token_gains(teacher_lp: np.ndarray, teacher_ids: np.ndarray, logq: np.ndarray, bound: np.ndarray) -> tuple[np.ndarray, int]:
    """(G_t float64 [T], how many teacher entries had no engine value and took the bound)."""
    teacher_lp = np.asarray(teacher_lp, dtype=np.float64)
    logq = np.asarray(logq, dtype=np.float64)
    present = (np.asarray(teacher_ids) >= 0) & np.isfinite(teacher_lp)
    missing = present & np.isnan(logq)
    lp = np.where(present, teacher_lp, 0.0)
    q = np.where(present, np.where(missing, np.asarray(bound, dtype=np.float64)[:, None], logq), 0.0)
    # q = 0 (log q = -inf) where the teacher put mass gives G_t = +inf: no student without memory can match it.
    with np.errstate(invalid="ignore"):
        terms = np.where(present, np.exp(lp) * (lp - q), 0.0)
    return terms.sum(axis=1), int(missing.sum())


def sample_gain(gains: np.ndarray) -> float | None:
    """Mean G_t over the known positions (nats/token); None for an empty completion or no known position."""
    known = np.asarray(gains, dtype=np.float64)
    known = known[~np.isnan(known)]
    return float(known.mean()) if known.size else None


def top1_agreement(top1_ids: np.ndarray, chosen_ids: np.ndarray) -> float | None:
    """Share of positions where the model without memory already puts its top-1 on the teacher's token
    (positions whose argmax is unknown, -1, are left out); None when there is none."""
    top1 = np.asarray(top1_ids, dtype=np.int64)
    known = top1 >= 0
    if not known.any():
        return None
    return float((top1[known] == np.asarray(chosen_ids, dtype=np.int64)[known]).mean())


def share_below(values: np.ndarray, threshold: float) -> float | None:
    """Share of the known (non-NaN) sample gains below `threshold`; None when none is known."""
    known = np.asarray(values, dtype=np.float64)
    known = known[~np.isnan(known)]
    return float((known < threshold).mean()) if known.size else None
