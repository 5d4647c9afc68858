"""Byte caps for logs tails: every tail kept or served is at most `max_bytes` of UTF-8 on top of
its line count, so a job printing very long lines cannot make huge rows, responses or frames.

A line longer than a share of the cap keeps its start and ends with "[... N bytes cut]"; output
dropped to fit the cap (or never read) is noted by a first line "[... N bytes cut]".
"""

from __future__ import annotations

import os
import re

DEFAULT_MAX_BYTES = 256 * 1024
MARK_RESERVE = 48  # room kept for the "[... N bytes cut]" first line


CUT_MARK_RE = re.compile(r"^\[\.\.\. [0-9]+ bytes cut\]$")


def without_cut_mark(lines: list[str]) -> list[str]:
    """`lines` of a capped tail without its first-line note of what was cut (which changes on
    every read once output exceeds the cap, so it would hide where an earlier tail ends)."""
    return lines[1:] if lines and CUT_MARK_RE.match(lines[0]) else lines


def tail_max_bytes() -> int:
    """LAUNCHER_LOGS_TAIL_BYTES when Django is configured (the launcher), else the default."""
    try:
        from django.conf import settings

        return int(getattr(settings, "LAUNCHER_LOGS_TAIL_BYTES", DEFAULT_MAX_BYTES))
    except Exception:  # backends used without Django settings (scripts, unit tests)
        return DEFAULT_MAX_BYTES


def cap_tail(text: str | bytes | None, *, lines: int | None = None, max_bytes: int | None = None,
             skipped: int = 0, final_newline: bool = True) -> str:
    """The last `lines` lines of `text` (all when None) within `max_bytes` UTF-8 bytes. `skipped`:
    bytes of earlier output already left out by the caller (noted in the first line).
    `final_newline=False` drops the text's last newline (the saved tail's form)."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    limit = max(max_bytes if max_bytes is not None else tail_max_bytes(), 2 * MARK_RESERVE)
    if lines is not None and lines <= 0:
        return ""
    if not final_newline and text.endswith("\n"):
        text = text[:-1]
    final = "\n" if text.endswith("\n") else ""  # kept, as the engine gave it
    if not skipped and len(text.encode()) <= limit - MARK_RESERVE and (
            lines is None or text.count("\n", 0, len(text) - len(final)) < lines):
        return text  # the common case: short output, nothing to do
    rows = text.splitlines()
    if lines is not None and len(rows) > lines:
        rows = rows[-lines:]
        skipped = 0  # the lines asked for are all here: what was left out before them does not count
    budget = limit - MARK_RESERVE
    line_max = max(MARK_RESERVE * 2, budget // 8)
    kept: list[str] = []
    used = 0
    for index in range(len(rows) - 1, -1, -1):
        row = _cut_line(rows[index], line_max)
        size = len(row.encode()) + (1 if kept else 0)
        if used + size > budget:
            skipped += sum(len(r.encode()) + 1 for r in rows[:index + 1])
            break
        kept.append(row)
        used += size
    kept.reverse()
    if skipped:
        kept.insert(0, f"[... {skipped} bytes cut]")
    return "\n".join(kept) + (final if kept else "")


def _cut_line(line: str, line_max: int) -> str:
    raw = line.encode()
    if len(raw) <= line_max:
        return line
    note_room = 32
    head = raw[:line_max - note_room].decode("utf-8", "ignore")
    return f"{head} [... {len(raw) - len(head.encode())} bytes cut]"


def read_file_tail(path: str, lines: int, max_bytes: int | None = None, *, final_newline: bool = True) -> str:
    """The capped tail of a file, reading at most `max_bytes` from its end."""
    limit = max_bytes if max_bytes is not None else tail_max_bytes()
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - limit)
            f.seek(start)
            data = f.read(limit)
    except FileNotFoundError:
        return ""
    return cap_tail(data, lines=lines, max_bytes=limit, skipped=start, final_newline=final_newline)

