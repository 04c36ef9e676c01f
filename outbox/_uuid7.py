"""Time-ordered UUIDv7 identifiers (RFC 9562), strictly increasing within a process.

Python 3.11 has no `uuid.uuid7`. Layout: 48 bits of Unix milliseconds, the version (7), 12 bits
`rand_a`, the variant (0b10), 62 bits `rand_b`. Monotonicity follows RFC 9562 §6.2 method 2:
within one millisecond (or when the clock steps back) the 74 random bits are incremented by a
random amount instead of drawn afresh, so every id is greater than the one before it. The
event ids therefore sort in emit order, which the write side relies on.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid

_RAND_BITS = 74
_RAND_MASK = (1 << _RAND_BITS) - 1
# Increments stay small against 2**74 so a millisecond holds billions of ids before overflow.
_MAX_STEP = 1 << 32

_lock = threading.Lock()
# The increment within a millisecond only has to be unpredictable enough not to collide with
# another process: a seeded PRNG, not a syscall per id (os.urandom was 9% of a snapshot chunk).
# Reseeded in a forked child, whose copy of the state would repeat the parent's steps.
_steps = random.Random(os.urandom(16))
os.register_at_fork(after_in_child=lambda: _steps.seed(os.urandom(16)))
_last_ms = 0
_last_rand = 0


def _compose(ms: int, rand: int) -> uuid.UUID:
    rand_a = rand >> 62
    rand_b = rand & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return uuid.UUID(int=value)


def uuid7() -> uuid.UUID:
    """Return a new UUIDv7, greater than every id this process returned before."""
    global _last_ms, _last_rand
    now_ms = time.time_ns() // 1_000_000
    with _lock:
        if now_ms > _last_ms:
            ms, rand = now_ms, int.from_bytes(os.urandom(10)) & _RAND_MASK
        else:
            # Same millisecond, or the clock stepped back: keep the last timestamp, step up.
            ms = _last_ms
            rand = _last_rand + 1 + _steps.getrandbits(32) % _MAX_STEP
            if rand > _RAND_MASK:
                ms, rand = ms + 1, int.from_bytes(os.urandom(10)) & (_RAND_MASK >> 1)
        _last_ms, _last_rand = ms, rand
    return _compose(ms, rand)


def uuid7_time_ms(value: uuid.UUID) -> int:
    """The Unix timestamp in milliseconds embedded in a UUIDv7."""
    return value.int >> 80
