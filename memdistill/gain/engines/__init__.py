"""Which engine scores a dataset: the generating backend's own (gain.backend auto), chosen here.

The vLLM engines are imported only in their branch, so the embedded teacher needs no vLLM install.
"""

from __future__ import annotations

from memdistill.gain.engines.base import GainScorer, ScoreRequest, ScoreResult, ScoringSettings

__all__ = ["GainScorer", "ScoreRequest", "ScoreResult", "ScoringSettings", "make_scorer", "SCORING_BACKENDS"]

SCORING_BACKENDS = "local (the embedded teacher), vllm (in-process), openai with flavor vllm"
"""The backends that can score prompts, named in the one line a non-scoring teacher gets."""


def make_scorer(backend: str, flavor: str | None, model: str, config: ScoringSettings) -> GainScorer | None:
    """The engine for the generating `backend` (and openai `flavor`), or None when it cannot score prompts
    (the stage then writes a "not measured" result)."""
    if backend == "local":
        from memdistill.gain.engines.local import LocalScorer

        return LocalScorer(model, config)
    if backend == "vllm":
        from memdistill.gain.engines.vllm_inprocess import VLLMScorer

        return VLLMScorer(model, config)
    if backend == "openai" and flavor == "vllm":
        from memdistill.gain.engines.openai_vllm import OpenAIVLLMScorer

        return OpenAIVLLMScorer(model, config)
    return None
