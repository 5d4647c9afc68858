"""Failure counters in the shared cache (Redis when configured): failed API tokens per client
address, failed sign-ins per username and per address.

A counter is a fixed window: it starts with the first failure and expires `window` seconds later.
With the cache down every counter reads 0 and counting is skipped: the throttles fail open, so a
Redis outage never locks the FL server or the users out (tokens and passwords are still checked).
"""

from __future__ import annotations

import hashlib
import math
import time

from django.core.cache import cache


class FailureCounter:
    def __init__(self, prefix: str, window: int):
        self.prefix = prefix
        self.window = window

    def _key(self, subject: str) -> str:
        # Hashed: a username may hold characters a cache key must not.
        return f"{self.prefix}:{hashlib.sha256(subject.encode()).hexdigest()[:32]}"

    def count(self, subject: str) -> int:
        try:
            return int(cache.get(self._key(subject), 0))
        except Exception:
            return 0

    def add(self, subject: str) -> None:
        key = self._key(subject)
        try:
            if cache.add(f"{key}:until", time.time() + self.window, self.window):
                cache.set(key, 0, self.window)  # a new window
            else:
                cache.add(key, 0, self.window)
            try:
                cache.incr(key)
            except ValueError:  # expired between add and incr
                cache.set(key, 1, self.window)
        except Exception:
            pass

    def retry_after(self, subject: str) -> int:
        """Seconds until the subject's window ends (at least 1)."""
        try:
            until = cache.get(f"{self._key(subject)}:until")
        except Exception:
            until = None
        if until is None:
            return self.window
        return max(1, math.ceil(until - time.time()))

    def reset(self, subject: str) -> None:
        key = self._key(subject)
        try:
            cache.delete_many([key, f"{key}:until"])
        except Exception:
            pass
