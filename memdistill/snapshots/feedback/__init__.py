"""Reading whether a sample failed from its feedback: a small ordered rule set.

Every rule is a pure function of the feedback and the reader's configuration that either decides (a
`Verdict`: failed or passed, with the rule's name) or passes to the next rule. Dict feedback is read from
its keys first (`DICT_RULES`, at the top level, then one nested object down), and then, like text
feedback, from its text (`TEXT_RULES`, over the dict's values). The first rule that decides wins; when
none does the verdict is unknown (`failed: None`, rule `none`), which counts as not failed.

Text rules, in order: fractions ("3/5 tests passed"), counts ("2 failed", "0 errors"), exit codes ("exit
status 1"), tracebacks (a last line such as `TypeError: ...`), then the failure patterns, negated success
patterns ("not all tests pass"), success patterns, negated failure patterns ("no errors"). A pattern match
right after a negation word ("no", "without", "sin", "keine", "aucune", "没有", ...) with at most two words
between is negated; a failure word right after a repair word ("fixed the failing test") does not count.

Modules: `reader` (FeedbackReader, default patterns and keys), `dict_rules`, `text_rules`, `verdict`,
`literals` (the shortcut that skips a pattern's scan), `audit` (`memdistill feedback`'s table).
"""

from memdistill.snapshots.feedback.dict_rules import DICT_RULES
from memdistill.snapshots.feedback.reader import (
    DEFAULT_FAILURE_PATTERNS,
    DEFAULT_FEEDBACK_KEYS,
    DEFAULT_SUCCESS_PATTERNS,
    KEY_ROLES,
    FeedbackReader,
    compile_feedback_keys,
    compile_patterns,
)
from memdistill.snapshots.feedback.text_rules import TEXT_RULES
from memdistill.snapshots.feedback.verdict import Verdict

__all__ = [
    "DEFAULT_FAILURE_PATTERNS", "DEFAULT_FEEDBACK_KEYS", "DEFAULT_SUCCESS_PATTERNS", "DICT_RULES", "KEY_ROLES", "TEXT_RULES",
    "FeedbackReader", "Verdict", "compile_feedback_keys", "compile_patterns",
]
