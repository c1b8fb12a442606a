"""generate stage: prompts.jsonl -> dataset.jsonl (teacher completions with top-k logprobs)."""

from __future__ import annotations

import argparse
import functools
import json
import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from memdistill.core import fileio, params
from memdistill.core.executors import EXECUTORS
from memdistill.core.models import EMBEDDED_MODEL
from memdistill.core.prompt_file import read_prompts
from memdistill.core.shards import OUTPUT_FORMATS
from memdistill.generate.engine import generate_dataset
from memdistill.generate.teachers.base import SamplingParams, Teacher
from memdistill.generate.teachers.openai_compat import FLAVORS

log = logging.getLogger(__name__)

BACKENDS = ("local", "openai", "vllm")
LOGPROBS_MODES = ("tempered", "raw")


class GenerateConfig(params.StageParams):
    section: ClassVar[str] = "generate"

    backend: Literal[BACKENDS] = Field("local", description="local: embedded SmolLM2 on CPU; openai: a chat-completions server")
    model: str = Field(EMBEDDED_MODEL, description=f"teacher model name (local backend: {EMBEDDED_MODEL})")
    base_url: list[str] = Field(default_factory=list, description="openai backend: server URL(s), e.g. http://localhost:8000/v1")
    flavor: Literal[FLAVORS] = Field("openai", description="openai backend: how the server returns token ids and logprobs")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key (the key is never written)")
    max_tokens: int = Field(48, ge=1, description="maximum tokens generated per sample")
    temperature: float = Field(0.0, ge=0, description="sampling temperature (0 = greedy)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass, used when temperature > 0")
    top_logprobs: int = Field(20, ge=0, description="K alternatives recorded per generated token")
    seed: int = Field(0, description="sampling seed (repeatable sampling at temperature > 0)")
    logprobs: Literal[LOGPROBS_MODES] = Field(
        "tempered", description="tempered: softmax(logits/T); raw: softmax(logits); recorded in every row's metadata.teacher"
    )
    concurrency: int = Field(16, ge=1, description="openai backend: requests in flight")
    batch_size: int = Field(8, ge=1, description="local backend: prompts per forward batch")
    timeout: float = Field(120.0, gt=0, description="openai backend: seconds before a request counts as timed out")
    max_retries: int = Field(5, ge=0, description="retries per sample on timeouts, connection errors, 429 and 5xx")
    retry_backoff: float = Field(0.5, ge=0, description="first retry delay in seconds (doubles per retry, with jitter)")
    max_failure_rate: float = Field(0.0, ge=0, le=1, description="share of samples allowed to fail before the stage fails")
    cache_dir: str = Field(".memdistill/responses", description="request cache and resume journal folder")
    use_cache: bool = Field(True, description="reuse cached responses (an interrupted run still resumes its own work)")
    metrics: str | None = Field(None, description="write the run summary (requests, cache hits, tokens/s) as JSON here")

    executor: Literal[EXECUTORS] = Field("local", description="local: this process; ray: teacher actors on a Ray cluster")
    ray_address: str | None = Field(None, description="executor ray: an existing cluster (head:6379, auto; ray://head:10001 needs ray[client]); null = start a local one")
    num_workers: int = Field(2, ge=1, description="executor ray: teacher actors (one teacher each)")
    output_format: Literal[OUTPUT_FORMATS] = Field("jsonl", description="intermediate dataset as jsonl or parquet (same fields, columnar)")
    shards: int | None = Field(None, ge=1, description="output parts: 1 = one file, N = a directory of N part files; null = 1 locally, num_workers on ray")

    _local_paths = field_validator("cache_dir", "metrics")(params.local_path_field)

    @field_validator("base_url", mode="before")
    @classmethod
    def _one_url_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _backend_needs(self) -> "GenerateConfig":
        if self.backend == "openai" and self.flavor == "openai" and self.top_logprobs > 20:
            raise ValueError(f"top_logprobs: OpenAI servers accept 0..20, got {self.top_logprobs}")
        if self.backend == "openai" and not self.base_url:
            raise ValueError("base_url: the openai backend needs at least one server URL (--base-url)")
        return self

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(self.max_tokens, self.temperature, self.top_p, self.top_logprobs, self.seed, self.logprobs)

    @property
    def parts(self) -> int:
        if self.shards is not None:
            return self.shards
        return self.num_workers if self.executor == "ray" else 1


def make_teacher(config: GenerateConfig) -> Teacher:
    if config.backend == "local":
        from memdistill.generate.teachers.local import LocalTeacher

        return LocalTeacher(config.model, config.sampling, config.batch_size)
    if config.backend == "vllm":
        from memdistill.generate.teachers.vllm_inprocess import VLLMTeacher

        return VLLMTeacher(config.model, config.sampling, config.batch_size)
    from memdistill.generate.teachers.openai_compat import OpenAITeacher

    return OpenAITeacher(
        model=config.model,
        base_urls=config.base_url,
        flavor=config.flavor,
        sampling=config.sampling,
        api_key_env=config.api_key_env,
        concurrency=config.concurrency,
        timeout=config.timeout,
        max_retries=config.max_retries,
        retry_backoff=config.retry_backoff,
    )


def make_ray_pool(config: GenerateConfig, description: dict) -> Teacher:
    """Teachers on Ray actors; each openai-backend actor keeps its share of the requests in flight,
    each vllm-backend actor holds one engine on one GPU."""
    from memdistill.core.ray_runtime import absolute_if_local
    from memdistill.generate.ray import RayTeacherPool

    per_actor = config.model_copy(update={"concurrency": max(1, config.concurrency // config.num_workers),
                                          "model": absolute_if_local(config.model)})
    return RayTeacherPool(functools.partial(make_teacher, per_actor), description, config.num_workers,
                          config.batch_size, config.ray_address,
                          num_gpus_per_worker=1.0 if config.backend == "vllm" else 0.0)  # one vLLM engine per GPU


def run(config: GenerateConfig, input_path: Path, output: Path) -> dict:
    fileio.ensure_parent(output)
    fileio.refuse_input_as_output(output, input_path)
    if config.metrics:
        fileio.ensure_parent(Path(config.metrics))  # before the teacher runs, not after
        fileio.refuse_input_as_output(config.metrics, input_path, output)
    prompts = read_prompts(input_path)
    teacher = make_teacher(config)
    if config.executor == "ray":
        teacher = make_ray_pool(config, teacher.describe())
    summary = generate_dataset(
        prompts, teacher, output, Path(config.cache_dir), config.use_cache, config.max_failure_rate, config.parts,
        config.output_format,
    )
    metrics = summary.to_metrics()
    log.info("generate: %s", ", ".join(f"{k}={v}" for k, v in metrics.items()))
    if config.metrics:
        with fileio.atomic_output(config.metrics) as handle:
            json.dump(metrics, handle, indent=2)
            handle.write("\n")
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, type=fileio.local_path, help="prompts.jsonl from the snapshots stage")
    parser.add_argument("--output", required=True, type=fileio.local_path, help="where to write dataset.jsonl")
    parser.add_argument("--params", type=fileio.local_path, help="params.yaml to read the 'generate' section from")
    params.add_arguments(parser, GenerateConfig)
    parser.add_argument("--no-cache", dest="use_cache", action="store_false", default=argparse.SUPPRESS, help="same as --no-use-cache")


def main(args: argparse.Namespace) -> int:
    run(params.build(GenerateConfig, args.params, params.flag_values(args, GenerateConfig)), args.input, args.output)
    return 0
