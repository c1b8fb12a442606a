"""gain stage: prompts.jsonl + dataset.jsonl -> gain.parquet (each completion scored without the memory)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from memdistill.core import fileio, params
from memdistill.gain.engines import ScoringSettings
from memdistill.gain.gain_file import GainSummary
from memdistill.gain.scoring import GainOptions, run_gain

BACKENDS = ("auto", "local", "vllm", "openai", "none")


class GainConfig(params.StageParams):
    section: ClassVar[str] = "gain"
    # Scored exactly as convert will write the completion: with or without the end-of-turn it appends.
    borrowed: ClassVar[dict[str, str]] = {"append_eot": "convert", "model": "convert"}

    backend: Literal[BACKENDS] = Field(
        "auto", description="auto: the generating backend (local, vllm, openai with flavor vllm; others: not measured); none: skip"
    )
    batch_size: int = Field(8, ge=1, description="samples per forward batch (local) or per engine call (vllm)")
    base_url: list[str] = Field(default_factory=list, description="openai flavor vllm: server URL(s); empty = those recorded in the dataset")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key (the key is never written)")
    timeout: float = Field(120.0, gt=0, description="openai: seconds before a scoring request counts as timed out")
    max_retries: int = Field(5, ge=0, description="openai: retries per request on timeouts, connection errors, 429 and 5xx")
    concurrency: int = Field(16, ge=1, description="openai: scoring requests in flight")
    prompt_logprobs: int | None = Field(
        None, ge=1, description="vllm engines scoring top-K: ids returned per position (a vLLM server's --max-logprobs must allow it); "
        "wider leaves fewer teacher ids to the bound; null = the teacher's top-k width"
    )
    append_eot: bool = Field(True, description="score the end-of-turn convert appends (read from convert.append_eot)")
    model: str | None = Field(
        None, description="tokenizer of the student prompt, the one convert uses (read from convert.model); null = the teacher recorded in the dataset"
    )

    @field_validator("base_url", mode="before")
    @classmethod
    def _one_url_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @property
    def options(self) -> GainOptions:
        engine = ScoringSettings(batch_size=self.batch_size, base_url=tuple(self.base_url), api_key_env=self.api_key_env,
                                 timeout=self.timeout, max_retries=self.max_retries, concurrency=self.concurrency,
                                 prompt_logprobs=self.prompt_logprobs)
        return GainOptions(self.backend, engine, self.append_eot, self.model)


def run(config: GainConfig, prompts: Path, dataset: Path, output: Path) -> GainSummary:
    return run_gain(prompts, dataset, output, config.options)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", required=True, type=fileio.local_path, help="prompts.jsonl the dataset was generated from")
    parser.add_argument("--input", required=True, type=fileio.local_path, help="dataset.jsonl from generate (or its parquet form, or a shard directory)")
    parser.add_argument("--output", required=True, type=fileio.local_path, help="where to write gain.parquet")
    parser.add_argument("--params", type=fileio.local_path, help="params.yaml to read the 'gain' section (and convert.append_eot, convert.model) from")
    params.add_arguments(parser, GainConfig)


def main(args: argparse.Namespace) -> int:
    run(params.build(GainConfig, args.params, params.flag_values(args, GainConfig)), args.prompts, args.input, args.output)
    return 0
