"""Pure math over dense [T, K] top-k arrays: sorting, mass-based sparsification, reconstruction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MISSING_ID = -1


@dataclass(frozen=True, slots=True)
class FlatLogprobs:
    """The sparse form cartridges trains on: entries of row `token_idx[n]`, first n columns of each row."""

    token_idx: np.ndarray  # int64 [N]
    token_id: np.ndarray  # int64 [N]
    logprobs: np.ndarray  # float32 [N]
    shape: tuple[int, int]  # (T, K)


def keep_counts(logprobs: np.ndarray, min_prob_mass: float, valid: np.ndarray | None = None) -> np.ndarray:
    """Per row, how many of the (descending-sorted) entries form the shortest prefix reaching the mass.

    Rows whose valid entries never reach `min_prob_mass` keep all of them: a cumulative-sum argmax would
    fall to one column there, which throws away exactly the rows where the teacher was unsure.
    """
    T, K = logprobs.shape
    if K == 0:
        return np.zeros(T, dtype=np.int64)
    probs = np.exp(logprobs.astype(np.float64, copy=False))
    if valid is not None:
        probs = np.where(valid, probs, 0.0)
    cumulative = np.cumsum(probs, axis=1)
    counts = (cumulative < min_prob_mass).sum(axis=1) + 1
    available = valid.sum(axis=1) if valid is not None else np.full(T, K)
    return np.minimum(counts, available).astype(np.int64)


def sort_rows(logprobs: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by logprob, descending; ties keep their original order."""
    order = np.argsort(-logprobs, axis=1, kind="stable")
    return np.take_along_axis(logprobs, order, axis=1), np.take_along_axis(ids, order, axis=1)


def flatten_by_mass(logprobs: np.ndarray, ids: np.ndarray, min_prob_mass: float) -> FlatLogprobs:
    """Keep per row the shortest sorted prefix whose probability mass reaches `min_prob_mass` (or all K).

    Entries with logprob -inf (or NaN) are padding for rows that had fewer than K alternatives and are
    never kept.
    """
    if logprobs.shape != ids.shape or logprobs.ndim != 2:
        raise ValueError(f"logprobs {logprobs.shape} and ids {ids.shape} must be equal [T, K] arrays")
    if not 0.0 < min_prob_mass <= 1.0:
        raise ValueError(f"min_prob_mass must be in (0, 1], got {min_prob_mass}")
    T, K = logprobs.shape
    # Decide on the float32 values that get stored, so a reader recomputing the mass from the file
    # finds exactly the prefix we kept (deciding in float64 can differ at the boundary).
    clean = np.where(np.isfinite(logprobs), logprobs, -np.inf).astype(np.float32)
    sorted_lp, sorted_ids = sort_rows(clean, ids)
    valid = np.isfinite(sorted_lp)
    counts = keep_counts(sorted_lp, min_prob_mass, valid)
    mask = np.arange(K)[None, :] < counts[:, None]
    return FlatLogprobs(
        token_idx=np.repeat(np.arange(T, dtype=np.int64), counts),
        token_id=sorted_ids[mask].astype(np.int64, copy=False),
        logprobs=sorted_lp[mask],
        shape=(T, K),
    )


def reconstruct(flat: FlatLogprobs, fill_logprob: float = -np.inf) -> tuple[np.ndarray, np.ndarray]:
    """Dense [T, K] arrays back from the flat form; missing cells hold `fill_logprob` and id -1."""
    T, K = flat.shape
    dense_lp = np.full((T, K), fill_logprob, dtype=np.float32)
    dense_ids = np.full((T, K), MISSING_ID, dtype=np.int64)
    if flat.token_idx.size:
        starts = np.searchsorted(flat.token_idx, np.arange(T))
        column = np.arange(flat.token_idx.size) - starts[flat.token_idx]
        dense_lp[flat.token_idx, column] = flat.logprobs
        dense_ids[flat.token_idx, column] = flat.token_id
    return dense_lp, dense_ids
