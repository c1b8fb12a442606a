"""generate stage: prompts.jsonl -> dataset.jsonl (teacher completions with top-k logprobs)."""

from __future__ import annotations

import argparse
import functools
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from memdistill import fileio, params
from memdistill.errors import UserError
from memdistill.executors import EXECUTORS
from memdistill.generation import generate_dataset
from memdistill.models import EMBEDDED_MODEL
from memdistill.prompt_file import read_prompts
from memdistill.shards import OUTPUT_FORMATS
from memdistill.teachers.base import SamplingParams, Teacher
from memdistill.teachers.openai_compat import FLAVORS

log = logging.getLogger(__name__)

BACKENDS = ("local", "openai", "vllm")
LOGPROBS_MODES = ("tempered", "raw")


@dataclass
class GenerateConfig:
    backend: str = "local"
    model: str = EMBEDDED_MODEL
    base_url: list[str] = field(default_factory=list)
    flavor: str = "openai"
    api_key_env: str = "OPENAI_API_KEY"
    max_tokens: int = 48
    temperature: float = 0.0
    top_p: float = 1.0
    top_logprobs: int = 20
    seed: int = 0
    logprobs: str = "tempered"  # raw | tempered (softmax(logits/T)); recorded in every row's metadata.teacher
    concurrency: int = 16
    batch_size: int = 8
    timeout: float = 120.0
    max_retries: int = 5
    retry_backoff: float = 0.5
    max_failure_rate: float = 0.0
    cache_dir: str = ".memdistill/responses"
    use_cache: bool = True
    metrics: str | None = None
    executor: str = "local"  # local: this process | ray: an actor pool on a Ray cluster
    ray_address: str | None = None  # executor ray: an existing cluster (e.g. ray://head:10001, auto); null = start a local one
    num_workers: int = 2  # executor ray: teacher actors (one teacher each)
    output_format: str = "jsonl"  # intermediate dataset as jsonl | parquet (same fields, columnar)
    shards: int | None = None  # output parts: 1 = one file; N = a directory of N part files; null = 1 locally, num_workers on ray

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise UserError(f"backend: expected one of {', '.join(BACKENDS)}, got '{self.backend}'")
        if self.flavor not in FLAVORS:
            raise UserError(f"flavor: expected one of {', '.join(FLAVORS)}, got '{self.flavor}'")
        if self.max_tokens < 1:
            raise UserError(f"max_tokens: must be at least 1, got {self.max_tokens}")
        if self.logprobs not in LOGPROBS_MODES:
            raise UserError(f"logprobs: expected one of {', '.join(LOGPROBS_MODES)}, got '{self.logprobs}'")
        if self.temperature < 0:
            raise UserError(f"temperature: must be >= 0, got {self.temperature}")
        if not 0 <= self.top_logprobs <= 20 and self.backend == "openai" and self.flavor == "openai":
            raise UserError(f"top_logprobs: OpenAI servers accept 0..20, got {self.top_logprobs}")
        if self.top_logprobs < 0:
            raise UserError(f"top_logprobs: must be >= 0, got {self.top_logprobs}")
        if self.concurrency < 1:
            raise UserError(f"concurrency: must be at least 1, got {self.concurrency}")
        if self.timeout <= 0:
            raise UserError(f"timeout: must be > 0 seconds, got {self.timeout}")
        if self.max_retries < 0:
            raise UserError(f"max_retries: must be >= 0, got {self.max_retries}")
        if self.retry_backoff < 0:
            raise UserError(f"retry_backoff: must be >= 0 seconds, got {self.retry_backoff}")
        if not 0 <= self.max_failure_rate <= 1:
            raise UserError(f"max_failure_rate: must be within 0..1, got {self.max_failure_rate}")
        if self.executor not in EXECUTORS:
            raise UserError(f"executor: expected one of {', '.join(EXECUTORS)}, got '{self.executor}'")
        if self.output_format not in OUTPUT_FORMATS:
            raise UserError(f"output_format: expected one of {', '.join(OUTPUT_FORMATS)}, got '{self.output_format}'")
        if self.num_workers < 1:
            raise UserError(f"num_workers: must be at least 1, got {self.num_workers}")
        if self.shards is not None and self.shards < 1:
            raise UserError(f"shards: must be at least 1 (or null), got {self.shards}")
        if self.backend == "openai" and not self.base_url:
            raise UserError("base_url: the openai backend needs at least one server URL (--base-url)")

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
        from memdistill.teachers.local import LocalTeacher

        return LocalTeacher(config.model, config.sampling, config.batch_size)
    if config.backend == "vllm":
        from memdistill.teachers.vllm_inprocess import VLLMTeacher

        return VLLMTeacher(config.model, config.sampling, config.batch_size)
    from memdistill.teachers.openai_compat import OpenAITeacher

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
    from memdistill.executors.ray_generate import RayTeacherPool

    per_actor = replace(config, concurrency=max(1, config.concurrency // config.num_workers))
    return RayTeacherPool(functools.partial(make_teacher, per_actor), description, config.num_workers,
                          config.batch_size, config.ray_address,
                          num_gpus_per_worker=1.0 if config.backend == "vllm" else 0.0)  # one vLLM engine per GPU


def run(config: GenerateConfig, input_path: Path, output: Path) -> dict:
    config.validate()
    fileio.ensure_parent(output)
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
    parser.add_argument("--input", required=True, type=Path, help="prompts.jsonl from the snapshots stage")
    parser.add_argument("--output", required=True, type=Path, help="where to write dataset.jsonl")
    parser.add_argument("--backend", choices=BACKENDS, help="local: embedded SmolLM2 on CPU; openai: a chat-completions server; vllm: vllm.LLM in-process")
    parser.add_argument("--base-url", nargs="+", help="server URL(s), e.g. http://localhost:8000/v1; requests spread across them")
    parser.add_argument("--flavor", choices=FLAVORS, help="how the server returns token ids and logprobs")
    parser.add_argument("--model", help=f"teacher model name (local backend: {EMBEDDED_MODEL})")
    parser.add_argument("--top-logprobs", type=int, help="K alternatives recorded per generated token")
    parser.add_argument("--max-tokens", type=int, help="maximum tokens generated per sample")
    parser.add_argument("--temperature", type=float, help="sampling temperature (0 = greedy)")
    parser.add_argument("--logprobs", choices=LOGPROBS_MODES, help="tempered: softmax(logits/T) (default) | raw: softmax(logits)")
    parser.add_argument("--concurrency", type=int, help="requests in flight (openai backend)")
    parser.add_argument("--timeout", type=float, help="seconds before a request counts as timed out (openai backend)")
    parser.add_argument("--max-retries", type=int, help="retries per sample on timeouts, connection errors, 429 and 5xx")
    parser.add_argument("--max-failure-rate", type=float, help="share of samples allowed to fail before the stage fails")
    parser.add_argument("--api-key-env", help="environment variable holding the API key (the key is never written)")
    parser.add_argument("--cache-dir", help="request cache and resume journal folder")
    parser.add_argument("--metrics", help="write the run summary (requests, cache hits, tokens/s) as JSON here")
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="ask the teacher again instead of reusing cached responses (an interrupted --no-cache run still resumes its own work)",
    )
    parser.add_argument("--executor", choices=EXECUTORS, help="local: this process; ray: teacher actors on a Ray cluster")
    parser.add_argument("--ray-address", help="executor ray: address of an existing cluster (default: start a local one)")
    parser.add_argument("--num-workers", type=int, help="executor ray: number of teacher actors")
    parser.add_argument("--shards", type=int, help="write the output as a directory of this many part files")
    parser.add_argument("--output-format", choices=OUTPUT_FORMATS, help="intermediate dataset as jsonl (default) or parquet")
    parser.add_argument("--params", type=Path, help="params.yaml to read the 'generate' section from")


def main(args: argparse.Namespace) -> int:
    flags = {
        "backend": args.backend,
        "base_url": args.base_url,
        "flavor": args.flavor,
        "model": args.model,
        "top_logprobs": args.top_logprobs,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "logprobs": args.logprobs,
        "concurrency": args.concurrency,
        "timeout": args.timeout,
        "max_retries": args.max_retries,
        "max_failure_rate": args.max_failure_rate,
        "api_key_env": args.api_key_env,
        "cache_dir": args.cache_dir,
        "metrics": args.metrics,
        "use_cache": False if args.no_cache else None,
        "executor": args.executor,
        "ray_address": args.ray_address,
        "num_workers": args.num_workers,
        "shards": args.shards,
        "output_format": args.output_format,
    }
    source = f"{args.params} [generate]" if args.params else "generate flags"
    merged = params.merge(asdict(GenerateConfig()), params.load_section(args.params, "generate"), flags)
    if isinstance(merged.get("base_url"), str):
        merged["base_url"] = [merged["base_url"]]
    config = params.build_config(GenerateConfig, merged, source)
    run(config, args.input, args.output)
    return 0
