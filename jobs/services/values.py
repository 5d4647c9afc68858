"""What a value from a user must be before anything stores it: JSON's own types, storable in any
JSON column (SQLite's JSON_VALID, PostgreSQL's jsonb) and answerable as UTF-8 JSON later.

`check_storable(value)` finds the first problem, iteratively (a deep value costs no recursion): more
than MAX_DEPTH levels of nesting; a number that is not finite (`1e400` parses to `inf`) or an
integer beyond 64 bits; a string or key holding NUL (U+0000, which PostgreSQL cannot store) or a
lone surrogate (`"\\ud800"` is valid JSON text but no valid UTF-8: stored, it would break every later
answer); a key or value of another type (YAML's timestamps, binary, sets; a YAML key that is a
number, a boolean or null is left to the validators, which name it).
The API's parsers (jobs.api.parsers) and the study-file loader (jobs.services.study_files) refuse
what it finds.
"""

from __future__ import annotations

import math
import re
from typing import Any

MAX_DEPTH = 64  # objects/arrays inside each other; a Pod template nests about 8
INT_MAX = 2**63 - 1  # integers fit in 64 bits (PostgreSQL bigint, every JSON client)
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")


class Unstorable(ValueError):
    """`problem` at `path` (dotted keys and [indexes]; "" for the value as a whole)."""

    def __init__(self, problem: str, path: str = ""):
        super().__init__(f"{problem} at {path}" if path else problem)
        self.problem = problem
        self.path = path if len(path) <= 120 else path[:60] + "…" + path[-59:]


def check_storable(value: Any) -> Any:
    """Raise Unstorable for the first problem in `value`; return `value` otherwise."""
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, dict):
            if depth >= MAX_DEPTH:
                raise Unstorable(f"nested deeper than {MAX_DEPTH} levels")
            for key, child in item.items():
                if isinstance(key, str):
                    _check_string(key, path, "a key")
                elif not (key is None or isinstance(key, (int, float))):  # JSON writes those as strings
                    raise Unstorable(f"key {key!r} is not a string (quote it)", path)
                stack.append((child, depth + 1, f"{path}.{key}" if path else str(key)))
        elif isinstance(item, list):
            if depth >= MAX_DEPTH:
                raise Unstorable(f"nested deeper than {MAX_DEPTH} levels")
            stack.extend((child, depth + 1, f"{path}[{i}]") for i, child in enumerate(item))
        elif isinstance(item, str):
            _check_string(item, path, "a string")
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not -INT_MAX <= item <= INT_MAX:
                raise Unstorable("integer out of range (at most 64 bits)", path)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise Unstorable("number out of range (NaN and infinities are not numbers here)", path)
        else:
            raise Unstorable(f"a {type(item).__name__} value is not supported (quote it to make it a string)", path)
    return value


def _check_string(text: str, path: str, kind: str) -> None:
    bad = _BAD_CHARS.search(text)
    if bad is not None:
        char = bad.group()
        problem = "NUL (U+0000)" if char == "\x00" else f"a lone surrogate (U+{ord(char):04X})"
        raise Unstorable(f"{kind} contains {problem}", path)
