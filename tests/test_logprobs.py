"""Properties of mass-based sparsification over random distributions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from memdistill.convert.mass import MISSING_ID, flatten_by_mass, keep_counts, reconstruct


@st.composite
def topk_rows(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """[T, K] logprobs in random order (a tail beyond K keeps some rows below any mass), -inf padding, unique ids."""
    T = draw(st.integers(1, 6))
    K = draw(st.integers(1, 8))
    logits = draw(arrays(np.float64, (T, K + 1), elements=st.floats(-12, 12, allow_nan=False)))
    tail = draw(st.floats(-10, 6))
    logits[:, -1] += tail  # the probability outside the top K
    logprobs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    logprobs = logprobs[:, :K]
    padding = draw(arrays(np.bool_, (T, K)))
    padding[:, 0] = False  # every row keeps at least one real entry
    logprobs[padding] = -np.inf
    ids = np.arange(T * K, dtype=np.int64).reshape(T, K) + 7
    return logprobs, ids


def kept_rows(flat) -> list[tuple[np.ndarray, np.ndarray]]:
    T, _ = flat.shape
    return [(flat.logprobs[flat.token_idx == t], flat.token_id[flat.token_idx == t]) for t in range(T)]


@settings(max_examples=300, deadline=None)
@given(rows=topk_rows(), mass=st.floats(0.05, 1.0))
def test_kept_set_is_the_shortest_mass_reaching_prefix_or_all(rows, mass) -> None:
    logprobs, ids = rows
    flat = flatten_by_mass(logprobs, ids, mass)
    assert flat.logprobs.dtype == np.float32 and flat.token_id.dtype == np.int64 and flat.token_idx.dtype == np.int64
    assert np.all(np.diff(flat.token_idx) >= 0)
    for t, (kept_lp, kept_ids) in enumerate(kept_rows(flat)):
        valid = np.isfinite(logprobs[t])
        expected_order = np.sort(logprobs[t][valid].astype(np.float32))[::-1]
        n = kept_lp.size
        assert 1 <= n <= valid.sum()
        # A sorted prefix of the row's real entries.
        np.testing.assert_array_equal(kept_lp, expected_order[:n])
        cumulative = np.cumsum(np.exp(expected_order.astype(np.float64)))
        if cumulative[-1] < mass:
            assert n == valid.sum(), "top-K never reaches the mass: all K must be kept"
        else:
            assert cumulative[n - 1] >= mass
            assert n == 1 or cumulative[n - 2] < mass, "a shorter prefix already reached the mass"


@settings(max_examples=200, deadline=None)
@given(rows=topk_rows(), mass=st.floats(0.05, 1.0))
def test_reconstruct_agrees_with_input_on_kept_entries(rows, mass) -> None:
    logprobs, ids = rows
    flat = flatten_by_mass(logprobs, ids, mass)
    dense_lp, dense_ids = reconstruct(flat)
    assert dense_lp.shape == logprobs.shape
    for t in range(logprobs.shape[0]):
        kept = dense_ids[t] != MISSING_ID
        assert kept.sum() == (flat.token_idx == t).sum()
        assert not kept[kept.sum():].any(), "kept entries come first in each row"
        for column in np.flatnonzero(kept):
            source = np.flatnonzero(ids[t] == dense_ids[t, column])
            assert source.size == 1, "ids round-trip: each kept id is one of the row's input ids"
            assert dense_lp[t, column] == np.float32(logprobs[t, source[0]])
        assert np.all(np.isneginf(dense_lp[t, ~kept]))


def test_flat_row_keeps_all_k_where_a_cumsum_argmax_keeps_one() -> None:
    # Mass 0.6 in the top 3: a naive argmax(cumsum >= 0.99) returns 0 here and keeps a single entry.
    logprobs = np.log(np.array([[0.3, 0.2, 0.1]]))
    flat = flatten_by_mass(logprobs, np.array([[5, 6, 7]]), 0.99)
    assert flat.token_id.tolist() == [5, 6, 7]


def test_unsorted_input_is_sorted_and_cut_at_the_mass() -> None:
    logprobs = np.log(np.array([[0.05, 0.9, 0.04, 0.01]]))
    flat = flatten_by_mass(logprobs, np.array([[10, 11, 12, 13]]), 0.94)
    assert flat.token_id.tolist() == [11, 10]
    assert flat.shape == (1, 4)


def test_keep_counts_for_a_certain_token_is_one() -> None:
    assert keep_counts(np.array([[0.0, -30.0]]), 0.99).tolist() == [1]


@pytest.mark.parametrize("mass", [0.0, -0.1, 1.5])
def test_mass_out_of_range_is_rejected(mass: float) -> None:
    with pytest.raises(ValueError, match="min_prob_mass"):
        flatten_by_mass(np.zeros((1, 1)), np.zeros((1, 1), dtype=np.int64), mass)


def test_mismatched_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="equal"):
        flatten_by_mass(np.zeros((2, 3)), np.zeros((2, 2), dtype=np.int64), 0.9)
