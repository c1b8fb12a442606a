"""Prompt rendering (the HistoryAgent shape), the agent's system prompt and the token counters (memdistill/snapshots/prompts.py)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from memdistill.core.errors import UserError
from memdistill.snapshots.checkpoint import MemoryEntry
from memdistill.snapshots.prompts import (
    DEFAULT_SYSTEM_PROMPT,
    FunctionCounter,
    Message,
    TokenizerCounter,
    estimate_tokens,
    render_content,
    render_entry,
    resolve_system_prompt,
    student_messages,
    teacher_messages,
    view_cost,
)


def test_dict_content_renders_as_compact_json_with_unicode_kept() -> None:
    assert render_content({"correct": False, "given": "€49.5", "n": [1, 2]}) == '{"correct":false,"given":"€49.5","n":[1,2]}'
    assert render_content("Zoë\nline two") == "Zoë\nline two"


def test_entry_lines_upper_case_the_type_as_written() -> None:
    assert render_entry(MemoryEntry(0, "observation", "q")) == "OBSERVATION: q"
    assert render_entry(MemoryEntry(1, " Feedback ", {"ok": True})) == 'FEEDBACK: {"ok":true}'
    assert render_entry(MemoryEntry(2, "Tool result", "42")) == "TOOL RESULT: 42"


def test_teacher_prompt_has_the_history_agent_shape() -> None:
    system, user = teacher_messages("You are an agent.", ["OBSERVATION: q1", "ACTION: a1"], "q2")
    assert system == Message(
        "system",
        "You are an agent.\n\nYou will be given the previous experiences you've had and their feedback. "
        "You should use this feedback to improve your performance in the subsequent actions.",
    )
    assert user == Message(
        "user",
        "Here is a list of your previous experiences:\n\nOBSERVATION: q1\nACTION: a1\n\n"
        "Here is the current observation:\n\nq2",
    )


def test_empty_memory_says_so() -> None:
    _, user = teacher_messages("S", [], "q")
    assert user.content == "Here is a list of your previous experiences:\n\nNo previous experiences.\n\nHere is the current observation:\n\nq"


def test_student_sees_system_prompt_and_observation_only() -> None:
    assert [m.to_dict() for m in student_messages("S", "q")] == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "q"},
    ]


def test_estimate_is_four_characters_per_token_rounded_up() -> None:
    assert [estimate_tokens("x" * n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_function_counter_adds_a_template_cost_per_message() -> None:
    counter = FunctionCounter(len, name="chars", per_message=3)
    assert counter.texts(["ab", ""]) == [2, 0]
    assert counter.messages([Message("system", "abc"), Message("user", "de")]) == 3 + 3 + 2 + 3


class FakeTokenizer:
    """One token per whitespace-separated word; a chat template that adds two marker tokens per message."""

    chat_template = "fake"

    def __call__(self, texts, add_special_tokens=False):  # noqa: ANN001 - mimics transformers' call
        single = isinstance(texts, str)
        ids = [[0] * len(text.split()) for text in ([texts] if single else texts)]
        return {"input_ids": ids[0] if single else ids}

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):  # noqa: ANN001
        assert tokenize is False and add_generation_prompt is True
        return " ".join(f"<start> {m['role']} {m['content']} <end>" for m in messages) + " <start> assistant"


def test_tokenizer_counter_counts_through_the_chat_template() -> None:
    counter = TokenizerCounter(FakeTokenizer(), name="fake", batch_size=2)
    assert counter.texts(["a b", "c", "", "d e f"]) == [2, 1, 0, 3]
    # system: 3 + 2 words, user: 3 + 1 word, generation prompt: 2
    assert counter.messages([Message("system", "x y"), Message("user", "z")]) == 5 + 4 + 2


def running(costs: list[int]) -> list[int]:
    return [0, *itertools.accumulate(costs)]


def test_view_cost_sums_the_ranges() -> None:
    cumulative = running([5, 1, 1, 4, 2, 3])  # entries 0..5
    assert view_cost(((0, 2), (3, 6)), cumulative) == 15
    assert view_cost((), cumulative) == 0


# --- the agent's system prompt --------------------------------------------------------------------


def test_system_prompt_comes_from_text_file_checkpoint_or_default(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ep_1"
    checkpoint.mkdir()
    assert resolve_system_prompt(None, None, checkpoint) == (DEFAULT_SYSTEM_PROMPT, "default")
    (checkpoint / "system_prompt.txt").write_text("You are a web agent.\n", encoding="utf-8")
    assert resolve_system_prompt(None, None, checkpoint) == ("You are a web agent.", f"checkpoint:{checkpoint / 'system_prompt.txt'}")
    own = tmp_path / "prompt.txt"
    own.write_text("\ufeffYou are a chess agent.", encoding="utf-8")
    assert resolve_system_prompt(None, str(own), checkpoint) == ("You are a chess agent.", f"file:{own}")
    assert resolve_system_prompt("You are a tutor.", None, checkpoint) == ("You are a tutor.", "system_prompt")


def test_bad_system_prompts_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"missing\.txt: system_prompt_file not found"):
        resolve_system_prompt(None, str(tmp_path / "missing.txt"), tmp_path)
    (tmp_path / "system_prompt.txt").write_text("  \n")
    with pytest.raises(UserError, match=r"system_prompt\.txt: system_prompt\.txt is empty"):
        resolve_system_prompt(None, None, tmp_path)
    with pytest.raises(UserError, match=r"^system_prompt: is empty"):
        resolve_system_prompt(" ", None, tmp_path)
