"""The memory gain's math against a dense computation on random distributions."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from memdistill.gain import math as gain_math

VOCAB = 12


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@st.composite
def distributions(draw):
    """A teacher and a student distribution over VOCAB ids at T positions, and the teacher's top-k."""
    T = draw(st.integers(1, 6))
    K = draw(st.integers(1, VOCAB))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    teacher = log_softmax(rng.normal(0, draw(st.floats(0.1, 5)), (T, VOCAB)))
    student = log_softmax(rng.normal(0, draw(st.floats(0.1, 5)), (T, VOCAB)))
    top_ids = np.argsort(-teacher, axis=1)[:, :K]
    return teacher, student, top_ids


def dense_gain(teacher: np.ndarray, student: np.ndarray, top_ids: np.ndarray) -> np.ndarray:
    """L_t(student) - L_t(teacher) with L_t(q) = -sum over the top-k of p(i) log q(i), one position at a time."""
    out = []
    for t in range(teacher.shape[0]):
        p = np.exp(teacher[t, top_ids[t]])
        loss_student = -(p * student[t, top_ids[t]]).sum()
        loss_teacher = -(p * teacher[t, top_ids[t]]).sum()
        out.append(loss_student - loss_teacher)
    return np.array(out)


@given(distributions())
@settings(max_examples=100, deadline=None)
def test_token_gains_equal_the_dense_loss_difference(case):
    teacher, student, top_ids = case
    lp = np.take_along_axis(teacher, top_ids, axis=1)
    logq = np.take_along_axis(student, top_ids, axis=1)
    gains, missing = gain_math.token_gains(lp, top_ids, logq, np.full(len(lp), np.nan))
    np.testing.assert_allclose(gains, dense_gain(teacher, student, top_ids), rtol=1e-9, atol=1e-12)
    assert missing == 0
    assert gain_math.sample_gain(gains) == np.mean(gains)


@given(distributions())
@settings(max_examples=100, deadline=None)
def test_the_same_model_gains_nothing_and_the_full_vocabulary_gain_is_a_kl(case):
    teacher, student, _ = case
    everything = np.tile(np.arange(VOCAB), (teacher.shape[0], 1))
    same, _ = gain_math.token_gains(teacher, everything, teacher, np.full(len(teacher), np.nan))
    np.testing.assert_allclose(same, 0.0, atol=1e-12)
    kl, _ = gain_math.token_gains(teacher, everything, student, np.full(len(teacher), np.nan))
    assert (kl >= -1e-12).all()  # with every id, G_t is KL(teacher || student)


@given(distributions(), st.integers(0, 2**32 - 1))
@settings(max_examples=100, deadline=None)
def test_missing_entries_take_the_bound_and_give_a_lower_bound(case, seed):
    teacher, student, top_ids = case
    lp = np.take_along_axis(teacher, top_ids, axis=1)
    logq = np.take_along_axis(student, top_ids, axis=1)
    exact, _ = gain_math.token_gains(lp, top_ids, logq, np.full(len(lp), np.nan))
    hidden = np.random.default_rng(seed).random(logq.shape) < 0.5
    # What an engine that returns its top-n gives: the bound is at least every value it left out.
    bound = np.where(hidden, logq, -np.inf).max(axis=1)
    gains, missing = gain_math.token_gains(lp, top_ids, np.where(hidden, np.nan, logq), bound)
    assert missing == int(hidden.sum())
    assert (gains <= exact + 1e-12).all()


def test_padding_is_not_an_entry_and_an_unbounded_miss_is_unknown():
    lp = np.array([[-0.1, -np.inf], [-0.2, -2.0]])
    ids = np.array([[3, -1], [4, 5]])
    logq = np.array([[-1.0, np.nan], [np.nan, -3.0]])
    gains, missing = gain_math.token_gains(lp, ids, logq, np.array([np.nan, np.nan]))
    assert gains[0] == np.exp(-0.1) * (-0.1 + 1.0)
    assert np.isnan(gains[1]) and missing == 1
    assert gain_math.sample_gain(gains) == gains[0]


def test_empty_completion_has_no_gain_and_no_agreement():
    gains, missing = gain_math.token_gains(np.empty((0, 0)), np.empty((0, 0), dtype=np.int64), np.empty((0, 0)), np.empty(0))
    assert gains.shape == (0,) and missing == 0
    assert gain_math.sample_gain(gains) is None
    assert gain_math.top1_agreement(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)) is None


def test_top1_agreement_counts_known_positions_only():
    assert gain_math.top1_agreement(np.array([1, 2, -1, 4]), np.array([1, 3, 9, 4])) == 2 / 3
    assert gain_math.share_below(np.array([0.05, 0.5, np.nan]), 0.1) == 0.5
