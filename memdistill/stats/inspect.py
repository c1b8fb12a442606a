"""`memdistill inspect`: one record of a JSONL or parquet dataset token by token, or file-level figures.

Reading one record never loads the file: a JSONL is streamed line by line up to the record, a
parquet is read one row group (found from the footer) in small batches.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich.color import Color
from rich.console import Console
from rich.style import Style
from rich.text import Text

from memdistill.core import fileio, shards
from memdistill.core.errors import UserError

log = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True)
class TokenRow:
    """One assistant token: what was chosen, how likely it was, and the alternatives recorded or kept."""

    position: int
    token: str  # decoded text (shown with repr), or the id when no tokenizer is available
    token_id: int | None
    prob: float | None  # None when the chosen token is not among the entries (parquet drops it then)
    alternatives: list[tuple[str, float]]


def _is_parquet(path: Path) -> bool:
    return path.suffix == ".parquet" or fileio.is_parquet(shards.part_files(path)[0])


def read_record(path: Path, sample: int) -> dict[str, Any]:
    """Record number `sample` (0-based) of a file or a shard directory, without loading the whole file."""
    parts = shards.part_files(path)
    if sample < 0:
        raise UserError(f"--sample must be 0 or more, got {sample}")
    seen = 0
    for part in parts:
        try:
            if _is_parquet(part):
                return _parquet_record(part, sample - seen)
            return _jsonl_record(part, sample - seen)
        except _OutOfRange as end:
            seen += end.records
    raise UserError(f"{path}: --sample {sample} is out of range (the {'shards hold' if len(parts) > 1 else 'file has'} {seen} records)")


class _OutOfRange(Exception):
    """The record asked for lies beyond this file (which holds `records`): look in the next part."""

    def __init__(self, records: int) -> None:
        self.records = records


def _parquet_record(path: Path, sample: int) -> dict[str, Any]:
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged footer
        raise UserError(f"{path}: not a readable parquet file ({exc})") from None
    seen = 0
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        if sample < seen + rows:
            offset = sample - seen
            for batch in parquet.iter_batches(batch_size=64, row_groups=[group]):
                if offset < batch.num_rows:
                    record = batch.slice(offset, 1).to_pylist()[0]
                    record["metadata"] = readable_metadata(record.get("metadata"))
                    return record
                offset -= batch.num_rows
        seen += rows
    raise _OutOfRange(seen)


PROMPTS_FILE = (
    "a prompts file from the snapshots stage (teacher_messages, student_messages), not a dataset; "
    "inspect shows what generate and convert write (dataset.jsonl, dataset.parquet)"
)


def _jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line; a line that is not UTF-8 is a UserError naming it."""
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(f"{path}:{lineno}: not UTF-8 text ({exc.reason} at byte {exc.start} of the line)") from None
            if line.strip():
                yield lineno, line


def _parse_line(path: Path, lineno: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise UserError(f"{path}:{lineno}: JSON nested too deeply to read") from None


def _refuse_prompts_file(path: Path, lineno: int, record: Any) -> None:
    if isinstance(record, dict) and "teacher_messages" in record and "messages" not in record:
        raise UserError(f"{path}:{lineno}: {PROMPTS_FILE}")


def _jsonl_record(path: Path, sample: int) -> dict[str, Any]:
    number = -1
    for lineno, line in _jsonl_lines(path):
        number += 1
        if number == sample:
            record = _parse_line(path, lineno, line)
            _refuse_prompts_file(path, lineno, record)
            if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
                raise UserError(f"{path}:{lineno}: expected an object with a 'messages' list")
            return record
    raise _OutOfRange(number + 1)


def readable_metadata(stored: Any) -> Any:
    """A parquet row's metadata as one object: convert's struct (typed fields plus the record's whole
    metadata in `json`), or the JSON text older files hold; anything else as it is."""
    text = stored.get("json") if isinstance(stored, dict) else stored
    if not isinstance(text, str):
        return stored
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return stored  # shown as the text it is
    if isinstance(stored, dict) and isinstance(parsed, dict):
        typed = {key: value for key, value in stored.items() if key != "json" and value is not None}
        return {**parsed, "convert": {**(parsed.get("convert") or {}), **typed}}
    return parsed


def recorded_teacher(record: dict[str, Any]) -> str | None:
    teacher = (record.get("metadata") or {}).get("teacher") if isinstance(record.get("metadata"), dict) else None
    return teacher.get("model") if isinstance(teacher, dict) else None


def id_decoder(name: str | None) -> Callable[[int], str] | None:
    """Per-id decoding with the named tokenizer; None (ids shown) when it cannot be loaded here."""
    if not name:
        return None
    from memdistill.core.models import load_tokenizer

    try:
        tokenizer = load_tokenizer(name)
    except (UserError, OSError, ValueError) as exc:
        log.warning("showing token ids: %s", exc)
        return None
    return lambda token_id: tokenizer.decode([token_id]) if token_id >= 0 else "<unmapped>"


def _prob(logprob: Any) -> float | None:
    return math.exp(logprob) if isinstance(logprob, (int, float)) and not isinstance(logprob, bool) else None


def vllm_token_id(token: str) -> int | None:
    """N of vLLM's `token_id:N` token strings (`return_tokens_as_token_ids`); None for any other string."""
    match = _VLLM_TOKEN.fullmatch(token)
    return int(match.group(1)) if match else None


_VLLM_TOKEN = re.compile(r"token_id:(\d+)")


def has_vllm_tokens(record: dict[str, Any]) -> bool:
    """Whether the record's recorded tokens are `token_id:N` strings (then a tokenizer shows them as text)."""
    for message in record.get("messages") or []:
        rows = jsonl_token_rows(message) if isinstance(message, dict) else []
        if rows:
            return vllm_token_id(rows[0].token) is not None
    return False


def jsonl_token_rows(message: dict[str, Any], decode: Callable[[int], str] | None = None) -> list[TokenRow]:
    """Token rows from the intermediate JSONL: the recorded strings and every recorded alternative;
    vLLM's `token_id:N` strings become their text when `decode` is given (and the id fills the id column)."""
    logprobs = message.get("logprobs")
    items = logprobs.get("content") if isinstance(logprobs, dict) else logprobs if isinstance(logprobs, list) else None

    def text(token: Any) -> tuple[str, int | None]:
        number = vllm_token_id(str(token))
        if number is None:
            return str(token), None
        return (decode(number) if decode else str(token)), number

    rows = []
    for t, item in enumerate(items or []):
        if not isinstance(item, dict):
            continue
        alternatives = [
            (text(alt.get("token"))[0], _prob(alt.get("logprob")) or 0.0)
            for alt in item.get("top_logprobs") or []
            if isinstance(alt, dict)
        ]
        token, number = text(item.get("token"))
        token_id = item.get("token_id")
        token_id = token_id if isinstance(token_id, int) else number
        rows.append(TokenRow(t, token, token_id, _prob(item.get("logprob")), alternatives))
    return rows


def parquet_token_rows(message: dict[str, Any], decode: Callable[[int], str] | None) -> list[TokenRow]:
    """Token rows from the cartridges parquet: the kept entries of each row; text decoded when possible."""
    ids = list(message.get("token_ids") or [])
    top = message.get("top_logprobs")
    if not top:
        return []
    name = decode or str
    kept: list[list[tuple[int, float]]] = [[] for _ in ids]
    for row, token_id, logprob in zip(top["token_idx"], top["token_id"], top["logprobs"]):
        if 0 <= row < len(ids):
            kept[row].append((token_id, math.exp(logprob)))
    rows = []
    for t, token_id in enumerate(ids):
        chosen = next((p for i, p in kept[t] if i == token_id), None)
        rows.append(TokenRow(t, name(token_id), token_id, chosen, [(name(i), p) for i, p in kept[t]]))
    return rows


def format_token_table(
    rows: Sequence[TokenRow], alternatives_title: str, max_alternatives: int | None = None, alternatives: bool = True
) -> list[str]:
    """An aligned table: position, chosen token, id, probability, and (when asked) the alternatives."""
    shown = [repr(r.token) for r in rows]
    width = max([len("token"), *map(len, shown)])
    id_width = max([2, *(len(str(r.token_id)) for r in rows if r.token_id is not None)])
    title = f"  {alternatives_title}" if alternatives else ""
    lines = [f"{'pos':>4}  {'token':<{width}}  {'id':>{id_width}}  {'prob':>6}{title}"]
    for row, token in zip(rows, shown):
        text = ""
        if alternatives:
            alts = row.alternatives if max_alternatives is None else row.alternatives[:max_alternatives]
            text = "  " + "  ".join(f"{name!r} {p:.3f}" for name, p in alts)
            if len(alts) < len(row.alternatives):
                text += f"  … {len(row.alternatives) - len(alts)} more"
        prob = "     —" if row.prob is None else f"{row.prob:6.3f}"
        token_id = "" if row.token_id is None else str(row.token_id)
        lines.append(f"{row.position:>4}  {token:<{width}}  {token_id:>{id_width}}  {prob}{text}".rstrip())
    return lines


# Probability -> colour of the token view: red (the teacher was unsure) through yellow to green (sure).
PROBABILITY_LEGEND = (0.05, 0.25, 0.5, 0.75, 0.95)


def probability_style(prob: float | None) -> Style:
    """Text colour for a token drawn with `prob`: a red-yellow-green ramp; grey when not known."""
    if prob is None:
        return Style(color="grey50", italic=True)
    p = min(max(prob, 0.0), 1.0)
    red = 255 if p < 0.5 else int(round(255 * (1 - p) * 2))
    green = int(round(215 * p * 2)) if p < 0.5 else 215  # 215, not 255: a pure green is hard to read on white
    return Style(color=Color.from_rgb(red, green, 0))


def token_view(rows: Sequence[TokenRow], gains: Sequence[float] | None = None) -> Text:
    """The assistant's tokens one after another, each in its probability's colour (with `gains`: its memory
    gain's colour)."""
    view = Text()
    for t, row in enumerate(rows):
        style = probability_style(row.prob) if gains is None else gain_style(gains[t] if t < len(gains) else None)
        view.append(row.token, style=style)
    return view


# Memory gain G_t (nats) -> colour: grey where the memory changes nothing, yellow to red where it teaches most.
GAIN_LEGEND = (0.0, 0.5, 1.0, 2.0, 4.0)


def gain_style(gain: float | None) -> Style:
    if gain is None or math.isnan(gain):
        return Style(color="grey50", italic=True)
    if gain < 0.1:
        return Style(color="grey62")
    share = min(gain, GAIN_LEGEND[-1]) / GAIN_LEGEND[-1]
    return Style(color=Color.from_rgb(255, int(round(215 * (1 - share))), 0), bold=gain >= 1.0)


def gain_legend() -> Text:
    return colour_legend("token colour = memory gain G_t (nats, docs/gain.md): ", GAIN_LEGEND, gain_style, 1)


def colour_legend(title: str, values: Sequence[float], style: Callable[[float | None], Style], digits: int) -> Text:
    """A row of swatches: each value in its colour, then the colour of "not known"."""
    legend = Text(title, style="dim")
    for value in values:
        legend.append(f" {value:.{digits}f} ", style=style(value) + Style(reverse=True))
        legend.append(" ")
    legend.append(" ? ", style=style(None) + Style(reverse=True))
    return legend


def probability_legend() -> Text:
    return colour_legend("token colour = probability: ", PROBABILITY_LEGEND, probability_style, 2)


def render_record(
    record: dict[str, Any],
    decode: Callable[[int], str] | None = None,
    max_chars: int = 2000,
    max_alternatives: int | None = None,
    alternatives: bool = False,
    color: bool = False,
    width: int = 120,
    gains: Sequence[float] | None = None,
) -> str:
    """The messages; per assistant message its tokens coloured by probability (with `color`: ANSI
    colours), then its token table, with the alternatives when asked; JSONL and parquet records alike."""
    console = Console(file=io.StringIO(), force_terminal=color, no_color=not color, color_system="truecolor" if color else None,
                      width=width, highlight=False, emoji=False, markup=False, soft_wrap=True)
    for line in _record_parts(record, decode, max_chars, max_alternatives, alternatives, color, gains):
        console.print(line)
    return console.file.getvalue().rstrip("\n")


def _record_parts(
    record: dict[str, Any], decode: Callable[[int], str] | None, max_chars: int, max_alternatives: int | None, alternatives: bool,
    color: bool,
    gains: Sequence[float] | None = None,
) -> list[str | Text]:
    lines: list[str | Text] = []
    metadata = record.get("metadata")
    if isinstance(metadata, dict):
        keys = ("sample_idx", "strategy", "finish_reason", "failed", "memory_size_entries", "memory_size_chars")
        lines.append("  ".join(f"{key}={metadata[key]}" for key in keys if key in metadata))
        teacher = recorded_teacher(record)
        if teacher:
            lines.append(f"teacher={teacher}")
    for message in record.get("messages") or []:
        content = message.get("content") or ""
        shown = content if len(content) <= max_chars else content[:max_chars] + f"… [{len(content) - max_chars} more chars]"
        lines += [f"── {message.get('role')} ──", shown]
        if message.get("role") != "assistant":
            continue
        if "logprobs" in message:
            rows, title = jsonl_token_rows(message, decode), "recorded alternatives"
        else:
            rows, title = parquet_token_rows(message, decode), "kept alternatives"
        if rows:
            # Uncoloured, the token view would only repeat the text above: shown in colour only.
            legend = probability_legend() if gains is None else gain_legend()
            lines += ["", token_view(rows, gains), legend, ""] if color else [""]
            table = format_token_table(rows, title, max_alternatives, alternatives or max_alternatives is not None)
            if gains is not None:  # G_t after each token's row: the gain file aligns with the assistant token ids
                table = [table[0] + "  G_t"] + [f"{line}  {gains[t]:.3f}" if t < len(gains) else line for t, line in enumerate(table[1:])]
            lines += table
        else:
            lines.append("(no logprobs recorded for this message)")
    return lines


def render_file_summary(path: Path) -> str:
    """File-level figures: the parquet's tokens and kept entries, or the JSONL's tokens and mass curve."""
    from memdistill.stats import file_figures as stats
    from memdistill.stats.scan import is_intermediate_parquet

    lines = [f"{path}  ({shards.total_bytes(path):,} bytes)"]
    cartridges = _is_parquet(path) and not is_intermediate_parquet(path)
    if cartridges:
        figures = stats.parquet_figures(path)
        samples, tokens = figures.samples, figures.assistant_tokens
        rows = [
            ("samples", samples.height),
            ("assistant tokens", f"{tokens:,} (mean {samples['tokens'].mean() or 0:.1f}, max {samples['tokens'].max() or 0})"),
            ("K", figures.top_k),
            ("kept entries", f"{figures.kept_entries:,} ({figures.kept_entries / tokens if tokens else 0:.2f} per token)"),
            ("mean probability mass kept", f"{figures.mean_mass_kept:.4f}"),
            ("unmapped ids (-1)", figures.unmapped),
            ("bytes per assistant token", f"{figures.file_bytes / tokens if tokens else 0:.1f}"),
        ]
    else:
        first = shards.part_files(path)[0]
        if not _is_parquet(first):
            for lineno, line in _jsonl_lines(first):
                _refuse_prompts_file(first, lineno, _parse_line(first, lineno, line))
                break
        figures = stats.jsonl_figures(path)
        samples = figures.samples
        rows = [
            ("samples", samples.height),
            ("assistant tokens", f"{int(samples['tokens'].sum()):,} ({figures.tokens_with_logprobs:,} with logprobs)"),
            ("K", figures.top_k),
            ("recorded top-K entries", f"{figures.recorded_entries:,}"),
        ]
    finish = samples.group_by("finish_reason").len().sort("finish_reason")
    rows.append(("finish reasons", ", ".join(f"{r}: {n}" for r, n in finish.iter_rows()) or "—"))
    rows.append(("failed reference samples", int(samples["failed"].sum())))
    width = max(len(name) for name, _ in rows)
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    if cartridges:
        from memdistill.core.lineage import describe

        lines += ["", *describe(path)]
    else:
        lines += ["", f"{'min_prob_mass':>13}  {'kept/token':>10}  {'rows below':>10}"]
        for r in figures.mass_curve.iter_rows(named=True):
            lines.append(f"{r['threshold']:>13}  {r['mean_kept_per_token']:>10.3f}  {r['share_rows_below']:>10.2%}")
    return "\n".join(lines)
