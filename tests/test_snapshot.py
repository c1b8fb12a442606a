"""Snapshot discovery and parsing (memdistill/snapshots/checkpoint.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from memdistill.core.errors import UserError
from memdistill.snapshots.checkpoint import find_snapshot, load_observations, load_snapshot, parse_entries
from tests.conftest import write_jsonl


def episode(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "ep_000200"
    folder.mkdir()
    for name in names:
        write_jsonl(folder / name, [{"type": "Observation", "content": name}])
    return folder


# --- discovery ---------------------------------------------------------------------------------------


def test_latest_is_the_highest_numeric_id_not_the_last_name(tmp_path: Path) -> None:
    folder = episode(tmp_path, "memory_99.jsonl", "memory_100.jsonl", "memory_0042.jsonl")
    assert find_snapshot(folder).name == "memory_100.jsonl"


def test_a_file_name_picks_that_snapshot(tmp_path: Path) -> None:
    folder = episode(tmp_path, "memory_000100.jsonl", "memory_000200.jsonl")
    assert find_snapshot(folder, "memory_000100.jsonl").name == "memory_000100.jsonl"


def test_unknown_snapshot_name_lists_what_exists(tmp_path: Path) -> None:
    folder = episode(tmp_path, "memory_000100.jsonl")
    with pytest.raises(UserError, match=r"snapshot 'memory_7.jsonl' not found .*memory_000100\.jsonl"):
        find_snapshot(folder, "memory_7.jsonl")


def test_other_files_are_not_snapshots(tmp_path: Path) -> None:
    folder = episode(tmp_path, "memory_5.jsonl")
    (folder / "memory_9.json").write_text("{}")
    (folder / "memory_latest.jsonl").write_text("{}")
    (folder / "README.md").write_text("hi")
    assert find_snapshot(folder).name == "memory_5.jsonl"


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nowhere: checkpoint folder does not exist"):
        find_snapshot(tmp_path / "nowhere")


def test_empty_folder_has_the_exact_message(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as caught:
        find_snapshot(tmp_path / "empty")
    assert str(caught.value) == (
        f"No memory snapshots found in {tmp_path / 'empty'}: point checkpoint_dir at an episode checkpoint such as ep_000200"
    )


def test_folder_of_episodes_lists_them_and_names_the_one_to_use(tmp_path: Path) -> None:
    for name in ("ep_000100", "ep_000200", "ep_000050"):
        (tmp_path / name).mkdir()
        write_jsonl(tmp_path / name / "memory_1.jsonl", [{"type": "Observation", "content": "x"}])
    (tmp_path / "logs").mkdir()  # holds no snapshots, so it is not an episode
    with pytest.raises(UserError) as caught:
        find_snapshot(tmp_path)
    message = str(caught.value)
    assert "ep_000050, ep_000100, ep_000200" in message
    assert "logs" not in message
    assert message.endswith(f"e.g. {tmp_path / 'ep_000200'}")


def test_a_file_is_not_a_folder(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "memory_1.jsonl", [])
    with pytest.raises(UserError, match="expected a checkpoint folder, found a file"):
        find_snapshot(path)


# --- parsing -----------------------------------------------------------------------------------------


def test_parsing_keeps_types_and_groups_samples(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "memory_1.jsonl",
        [
            {"type": "note", "content": "before any observation"},
            {"type": "OBSERVATION", "content": "q1"},
            {"type": "action", "content": "a1"},
            {"type": "Thought", "content": "hmm"},
            {"type": " Feedback ", "content": {"correct": False}},
            {"type": "Observation", "content": {"question": "q2"}},
            {"type": "Feedback", "content": "no action was taken"},
            {"type": "Observation", "content": "q3"},
            {"type": "Action", "content": "a3"},
        ],
    )
    snapshot = load_snapshot(path)
    assert [e.type for e in snapshot.entries] == [
        "note", "OBSERVATION", "action", "Thought", " Feedback ", "Observation", "Feedback", "Observation", "Action"
    ]
    assert [(s.start, s.stop) for s in snapshot.samples] == [(1, 5), (5, 7), (7, 9)]
    first, second, third = snapshot.samples
    assert (first.action.content, first.feedback.content) == ("a1", {"correct": False})
    assert second.action is None and second.missing == ["action"]
    assert second.observation.content == {"question": "q2"}
    assert third.feedback is None and third.missing == ["feedback"]
    assert first.missing == []


def test_unknown_entry_types_are_counted_and_named_in_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_jsonl(
        tmp_path / "memory_1.jsonl",
        [
            {"type": "Observation", "content": "q1"},
            {"type": "Action", "content": "a1"},
            {"type": "Obsrevation", "content": "q2"},
            {"type": "Thought", "content": "hmm"},
            {"type": "Obsrevation", "content": "q3"},
        ],
    )
    with caplog.at_level(logging.WARNING, logger="memdistill.snapshots.checkpoint"):
        snapshot = load_snapshot(path)
    assert len(snapshot.samples) == 1 and len(snapshot.entries) == 5  # kept in the memory, no sample of their own
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = record.getMessage()
    assert "3 entries" in message and "'Obsrevation' x2 (first at line 3, did you mean Observation?)" in message
    assert "'Thought' x1 (first at line 4)" in message and "Thought' x1 (first at line 4, did" not in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="memdistill.snapshots.checkpoint"):
        found = load_observations(write_jsonl(tmp_path / "obs.jsonl", [{"content": "x"}, {"type": "Obsrevation", "content": "y"}]), 5)
    assert len(found) == 1
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "'Obsrevation' x1 (first at line 2" in record.getMessage() and "skipped" in record.getMessage()


def test_known_types_in_any_case_give_no_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_jsonl(tmp_path / "memory_1.jsonl", [{"type": " OBSERVATION", "content": "q"}, {"type": "feedback", "content": "ok"}])
    with caplog.at_level(logging.WARNING, logger="memdistill.snapshots.checkpoint"):
        load_snapshot(path)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_blank_lines_are_ignored_and_errors_count_real_lines(tmp_path: Path) -> None:
    path = tmp_path / "memory_1.jsonl"
    path.write_text('\n{"type": "Observation", "content": "q"}\n   \n\n{"type": "Action"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"memory_1\.jsonl:5: entry has no 'content' field"):
        load_snapshot(path)


def test_line_separators_inside_strings_do_not_split_lines(tmp_path: Path) -> None:
    # json.dumps(ensure_ascii=False) writes U+2028 and U+0085 raw; str.splitlines would break the line there.
    content = "first\u2028second\x85third"
    path = tmp_path / "memory_1.jsonl"
    path.write_text(json.dumps({"type": "Observation", "content": content}, ensure_ascii=False) + "\r\n", encoding="utf-8")
    assert load_snapshot(path).entries[0].content == content


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "memory_1.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"type": "Observation", "content": "q"}\n')
    assert load_snapshot(path).entries[0].content == "q"


def test_sha256_is_of_the_file_bytes(tmp_path: Path) -> None:
    import hashlib

    path = write_jsonl(tmp_path / "memory_1.jsonl", [{"type": "Observation", "content": "q"}])
    assert load_snapshot(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"type": "Observation", "content": "q"}\n{"type": "Action", "content": \n', r":2: not valid JSON"),
        ('{"type": "Observation", "content": "q"}\n{"content": "a"}\n', r":2: entry has no 'type' field"),
        ('{"type": "Observation"}\n', r":1: entry has no 'content' field"),
        ('{"type": "Observation", "content": ["a"]}\n', r":1: 'content' must be a string or an object, got list"),
        ('{"type": "Observation", "content": 3}\n', r":1: 'content' must be a string or an object, got int"),
        ('{"type": 7, "content": "q"}\n', r":1: 'type' must be a non-empty string"),
        ('{"type": "", "content": "q"}\n', r":1: 'type' must be a non-empty string"),
        ('["Observation", "q"]\n', r":1: expected an object with 'type' and 'content', got list"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "memory_1.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=r"memory_1\.jsonl" + message):
        load_snapshot(path)


def test_no_observation_is_an_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "memory_1.jsonl", [{"type": "Action", "content": "a"}, {"type": "Feedback", "content": "ok"}])
    with pytest.raises(UserError, match=r"memory_1\.jsonl: no Observation entries"):
        load_snapshot(path)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "memory_1.jsonl"
    path.write_text("\n\n")
    with pytest.raises(UserError, match="no Observation entries"):
        load_snapshot(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "memory_1.jsonl"
    path.write_bytes(b'{"type": "Observation", "content": "caf\xe9"}\n')
    with pytest.raises(UserError, match=r"memory_1\.jsonl: not UTF-8 text"):
        parse_entries(path.read_bytes(), path)


def test_bundled_example_checkpoint(example_checkpoint: Path) -> None:
    snapshot = load_snapshot(find_snapshot(example_checkpoint))
    assert snapshot.path.name == "memory_000200.jsonl"
    assert (len(snapshot.entries), len(snapshot.samples)) == (47, 16)
    assert snapshot.samples[-1].missing == ["feedback"]
