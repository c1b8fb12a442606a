"""The command line loads only what the command it runs needs, and a usage error is one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from memdistill.cli import main
from tests.conftest import REPO_ROOT


def _modules_after(code: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                          cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_a_command_imports_only_its_own_stage() -> None:
    loaded = _modules_after("from memdistill.cli import build_parser; build_parser('convert').parse_args(['convert', '--input', 'a', '--output', 'b'])")
    assert "stages.convert" in loaded
    assert not {"stages.generate", "stages.snapshots", "stages.stats", "torch", "pygal"} & loaded


def test_every_command_is_listed_without_importing_any_stage() -> None:
    code = ("import sys\nfrom memdistill.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sys.modules), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.startswith("    ") and line.split()}
    assert {"snapshots", "generate", "convert", "stats", "inspect", "feedback", "params", "export-teacher", "push", "dvc-push"} <= listed
    assert not [name for name in done.stderr.split() if name.startswith("stages.")]


def test_arrow_without_pandas_keeps_pandas_unloaded_and_importable(tmp_path: Path) -> None:
    loaded = _modules_after(
        "from memdistill.core.fileio import arrow_without_pandas; arrow_without_pandas()\n"
        "import numpy as np, pyarrow as pa, pyarrow.parquet as pq\n"
        f"pq.write_table(pa.table({{'a': pa.array(np.arange(3))}}), {str(tmp_path / 'a.parquet')!r})\n"
        f"assert pq.read_table({str(tmp_path / 'a.parquet')!r}).column('a').to_numpy(zero_copy_only=False).tolist() == [0, 1, 2]"
    )
    assert "pandas" not in loaded
    # pandas itself still imports, and pyarrow's explicit pandas conversions still work.
    _modules_after(
        "from memdistill.core.fileio import arrow_without_pandas; arrow_without_pandas()\n"
        "import pandas as pd, pyarrow as pa\n"
        "assert pa.Table.from_pandas(pd.DataFrame({'x': [1, 2]})).to_pandas()['x'].tolist() == [1, 2]"
    )


def test_arrow_without_pandas_changes_nothing_once_pandas_is_loaded() -> None:
    _modules_after(
        "import pandas as pd, pyarrow as pa\n"
        "from memdistill.core.fileio import arrow_without_pandas; arrow_without_pandas()\n"
        "assert pa.array(pd.Series([1, None], dtype='Int64')).to_pylist() == [1, None]"
    )


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["generate", "--input", "p.jsonl", "--output", "d.jsonl", "--max-tokens", "abc"],
         "memdistill generate: error: --max-tokens: expected an integer, got 'abc'"),
        (["convert", "--output", "d.parquet"], "memdistill convert: error: the following arguments are required: --input"),
        (["inspect", "d.parquet", "--color", "pink"],
         "memdistill inspect: error: --color: invalid choice: 'pink' (choose from auto, always, never)"),
        (["distill"], "memdistill: error: COMMAND: invalid choice: 'distill' (choose from snapshots, generate, gain, convert, stats, "
                      "inspect, feedback, params, export-teacher, push, dvc-push)"),
    ],
)
def test_a_usage_error_is_one_line_naming_the_flag(argv: list[str], line: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    # Python before 3.12 quotes the choices argparse lists.
    assert [text.replace("', '", ", ").replace("from '", "from ").replace("')", ")") for text in captured.err.splitlines()] == [line]
    assert captured.out == ""


def test_no_command_prints_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "Pipeline: snapshots -> generate -> gain -> convert -> stats" in capsys.readouterr().err
