"""The `regex` verifier's pattern, compiled with RE2 (a linear-time engine).

The pattern comes from the job's creator and runs in the worker over every completion. A
backtracking engine (Python's `re`) takes exponential time on nested quantifiers such as
`([\\s\\S]+)+\\x01` while holding the GIL: the job's heartbeat stops, the reaper hands the job to
the next worker, which wedges too, and a cancel is never read. RE2 matches in time linear in the
completion, at the price of backreferences and lookaround, which it refuses to compile. The API
compiles the pattern here at job creation (a 422 for what RE2 refuses) and the worker compiles
it here again to score, so both accept the same patterns.
"""

from __future__ import annotations

import re2


class RewardPatternRefused(ValueError):
    """RE2 cannot compile the pattern (a syntax error, a backreference, lookaround)."""


def compile_reward_pattern(pattern: str) -> re2._Regexp:
    """The compiled pattern; `.search(completion)` is the `regex` verifier's test."""
    options = re2.Options()
    options.log_errors = False  # the refusal is raised to the caller, not printed by RE2
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise RewardPatternRefused(
            f"RE2 cannot compile it ({reason}): patterns use RE2 syntax, which runs in linear "
            "time and has no backreferences or lookaround"
        ) from None
