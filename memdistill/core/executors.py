"""Where generate and convert run: `local` (this process, the default) or `ray` (a Ray cluster).

Each executor is a seam the stages call at one dispatch point; the work itself (teachers, conversion)
is the same code either way, so a Ray run writes the same rows as a local one.
"""

from __future__ import annotations

EXECUTORS = ("local", "ray")
