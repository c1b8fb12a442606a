"""The `memdistill` command line: one subcommand per pipeline stage, plus `inspect`."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path
from typing import NoReturn

from memdistill import __version__
from memdistill.core.errors import UserError
from memdistill.core.fileio import local_path

DESCRIPTION = """Turn an agent's memory into a cartridge training dataset by context distillation.

Pipeline: snapshots -> generate -> gain -> convert -> stats (see `dvc.yaml`; `dvc repro` runs it all)."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the flag (`memdistill generate: error: --max-tokens:
    expected an integer, got 'abc'`), like every other input error, and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message.removeprefix('argument ')}\n")


def _inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=local_path, help="dataset.jsonl or dataset.parquet")
    parser.add_argument("--sample", type=int, default=0, help="record number to show (0-based, default 0)")
    parser.add_argument("--summary", action="store_true", help="print file-level figures instead of a record")
    parser.add_argument(
        "--tokenizer",
        help="parquet: tokenizer to decode token ids (default: the teacher recorded in the record's metadata; ids if it cannot load)",
    )
    parser.add_argument("--no-decode", action="store_true", help="parquet: show token ids, load no tokenizer")
    parser.add_argument("--max-chars", type=int, default=2000, help="longest message text shown (default 2000)")
    parser.add_argument("--alternatives", action="store_true", help="show each token's recorded (JSONL) or kept (parquet) alternatives")
    parser.add_argument("--max-alternatives", type=int, help="alternatives shown per token (implies --alternatives; default: all)")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="colour tokens by probability: auto (when printing to a terminal), always, never")
    parser.add_argument("--gain", nargs="?", const=True, type=local_path, metavar="GAIN_PARQUET",
                        help="colour tokens by their memory gain G_t and show it per token (default file: gain.parquet beside FILE)")


def _inspect_main(args: argparse.Namespace) -> int:
    from memdistill.stats.inspect import (
        has_vllm_tokens,
        id_decoder,
        read_record,
        recorded_teacher,
        render_file_summary,
        render_record,
    )

    if args.summary:
        print(render_file_summary(args.file))
        return 0
    record = read_record(args.file, args.sample)
    needs_ids = any(isinstance(m, dict) and "logprobs" not in m and m.get("role") == "assistant" for m in record.get("messages") or [])
    needs_ids = needs_ids or has_vllm_tokens(record)  # vLLM's `token_id:N` strings are shown as their text
    decode = None if args.no_decode or not needs_ids else id_decoder(args.tokenizer or recorded_teacher(record))
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    gains = None
    if args.gain is not None:
        from memdistill.gain.gain_file import token_gains_of

        metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
        gains = token_gains_of(args.file.parent / "gain.parquet" if args.gain is True else args.gain, metadata.get("sample_idx"))
    print(render_record(record, decode, max_chars=args.max_chars, max_alternatives=args.max_alternatives,
                        alternatives=args.alternatives, color=color, width=shutil.get_terminal_size().columns, gains=gains))
    return 0


# The snapshots parameters that decide how feedback is read (and where the snapshot is); the same fields and flags.
FEEDBACK_FIELDS = ("checkpoint_dir", "snapshot", "failure_patterns", "success_patterns", "feedback_keys", "redact_patterns")


def _feedback_arguments(parser: argparse.ArgumentParser) -> None:
    from memdistill.core.params import add_argument
    from stages.snapshots import SnapshotsConfig

    parser.add_argument("--params", type=local_path, help="params.yaml to read the 'snapshots' section from")
    for name in FEEDBACK_FIELDS:
        add_argument(parser, SnapshotsConfig, name)
    parser.add_argument("--max-chars", type=int, default=80, help="longest feedback text shown per form (default 80)")


def _feedback_main(args: argparse.Namespace) -> int:
    from memdistill.core.params import build, flag_values
    from memdistill.snapshots.feedback.audit import audit_feedback
    from stages.snapshots import SnapshotsConfig

    config = build(SnapshotsConfig, args.params, flag_values(args, SnapshotsConfig))
    width = max(100, shutil.get_terminal_size().columns)
    print(audit_feedback(config.checkpoint_dir, config.snapshot, config.feedback_reader(), config.redact_patterns, args.max_chars, width))
    return 0


def _export_teacher_main(args: argparse.Namespace) -> int:
    from memdistill.core.models import export_teacher

    folder = export_teacher(args.dir)
    print(folder)
    return 0


def _push_arguments(parser: argparse.ArgumentParser) -> None:
    from memdistill.core import params
    from memdistill.publish.push import PushConfig

    parser.add_argument("--data-dir", type=local_path, default=Path("data"), help="folder holding README.md (the card), dataset.parquet and validation.parquet (default data)")
    parser.add_argument("--plots-dir", type=local_path, default=Path("plots"), help="folder whose *.svg go to plots/ in the repo (default plots)")
    parser.add_argument("--dry-run", action="store_true", help="list what would go (paths in the repo, sizes) and upload nothing; needs no token")
    parser.add_argument("--params", type=local_path, help="params.yaml to read the 'push' section from")
    params.add_arguments(parser, PushConfig)


def _push_main(args: argparse.Namespace) -> int:
    from memdistill.core import params
    from memdistill.publish import push

    config = params.build(push.PushConfig, args.params, params.flag_values(args, push.PushConfig))
    if config.repo_id is None:
        raise UserError("--repo-id: expected ORG/NAME, the Hub dataset repo to push to (or push.repo_id in params.yaml)")
    files = push.plan_files(args.data_dir, args.plots_dir)
    token = None if args.dry_run else push.read_token()  # before the DVC check, which takes seconds
    git_revision = push.check_fresh(files)
    if token is None:
        print(push.render_plan(files, config.repo_id, config.revision))
    else:
        print(push.push(config, files, token, git_revision))
    return 0


def _params_main(args: argparse.Namespace) -> int:
    from memdistill.core.params import check_file
    from stages import stage_configs

    sections = check_file(args.check, stage_configs())
    print(f"{args.check}: ok ({', '.join(sections)})")
    return 0


# The pipeline's stages: command (its module is stages/<command>.py) and summary. A stage's module, and so
# its imports (the teachers, pyarrow, pygal...), is loaded only when that command runs or shows its help.
STAGES = (
    ("snapshots", "read a checkpoint's memory, apply a strategy, write teacher and student prompts"),
    ("generate", "ask the teacher for every prompt; record tokens and top-k logprobs"),
    ("gain", "score every answer without the memory: the memory gain per token and per sample"),
    ("convert", "write the cartridges parquet, keeping the top-k entries that reach min_prob_mass"),
    ("stats", "compute dataset metrics and plot data"),
)


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named on the command line: the first word that is not an option."""
    return next((word for word in argv if not word.startswith("-")), None)


def _dvc_push_main(args: argparse.Namespace) -> int:
    from memdistill.publish.dvc_remote import push

    report = push(args.remote, args.jobs)
    restored = f"; {report.restored} were missing and are now uploaded" if report.restored else ""
    print(f"remote '{report.remote}': {report.pushed} object(s) pushed; all {report.checked} the outputs need are there{restored}")
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the arguments of `command` only when it is a stage (its module is imported)."""
    import importlib

    parser = Parser(prog="memdistill", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"memdistill {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, summary in STAGES:
        if name != command:
            commands.add_parser(name, help=summary)
            continue
        module = importlib.import_module(f"stages.{name}")
        sub = commands.add_parser(name, help=summary, description=(module.__doc__ or summary).strip())
        module.add_arguments(sub)
        sub.set_defaults(handler=module.main)
    inspect = commands.add_parser("inspect", help="show one record token by token", description="Show one record of a JSONL or parquet dataset.")
    _inspect_arguments(inspect)
    inspect.set_defaults(handler=_inspect_main)
    feedback = commands.add_parser(
        "feedback", help="show how each distinct feedback of a snapshot is read (failed/passed, and the rule)",
        description="Print a table of the snapshot's distinct feedback forms: how many samples have each, the verdict "
        "(failed, passed, unknown) and the rule that decided it, read with the snapshots parameters.",
    )
    if command == "feedback":  # its flags come from the snapshots model: imported only when it runs
        _feedback_arguments(feedback)
    feedback.set_defaults(handler=_feedback_main)
    check = commands.add_parser(
        "params", help="validate a params file without running anything", description="Validate every stage section of a params file."
    )
    check.add_argument("--check", required=True, type=local_path, metavar="PARAMS_YAML", help="the params file to validate, e.g. params.yaml")
    check.set_defaults(handler=_params_main)
    export = commands.add_parser(
        "export-teacher", help="write the embedded SmolLM2 as a Hugging Face model folder (serve it with vLLM)",
        description="Write the embedded teacher as a Hugging Face model folder: float32 safetensors with tied embeddings "
        "stored under model.embed_tokens.weight, config, generation config, tokenizer and chat template.",
    )
    export.add_argument("dir", type=local_path, help="folder to write (created if missing)")
    export.set_defaults(handler=_export_teacher_main)
    push = commands.add_parser(
        "push", help="upload the dataset card, parquet files and plots to a Hugging Face dataset repo",
        description="Upload data/README.md, data/dataset.parquet, data/validation.parquet (files or shard directories) and "
        "plots/*.svg to a Hugging Face dataset repo, refusing outputs DVC reports stale. The token is read from HF_TOKEN.",
    )
    if command == "push":  # its flags come from PushConfig (pydantic); other commands need not load it
        _push_arguments(push)
        push.set_defaults(handler=_push_main)
    dvc_push = commands.add_parser(
        "dvc-push", help="dvc push, safe after an interrupted push: then checks every needed object is on the remote",
        description="Run `dvc push` after dropping DVC's cached list of what earlier pushes collected (an interrupted "
        "push leaves it partial, and a plain `dvc push` then skips files and reports success), then ask the remote for "
        "every object the outputs need, uploading any it lacks. See docs/versioning.md.",
    )
    dvc_push.add_argument("-r", "--remote", help="DVC remote name (default: the repository's default remote)")
    dvc_push.add_argument("-j", "--jobs", type=int, help="parallel uploads (default: DVC's)")
    dvc_push.set_defaults(handler=_dvc_push_main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        build_parser().print_help(sys.stderr)
        return 2
    command = _command_of(argv)
    try:
        args = build_parser(command).parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (one line: Parser.error)
        return int(exc.code or 0)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        if args.verbose:
            raise
        print(f"memdistill {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # Disk full, read-only folder, file too large: the environment, not a bug; outputs stay untouched.
        if args.verbose:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"memdistill {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"memdistill {args.command}: interrupted; outputs were left as they were", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
