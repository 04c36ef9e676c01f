"""Retrying with backoff: the only module that uses tenacity.

The relay never retries a single `send`: the producer retries sends itself. What is retried here
is a whole relay step (read, publish, mark) after a transient failure of the database or the
broker, with jittered exponential backoff, until it works or the relay is stopped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_when_event_set,
    wait_exponential_jitter,
)

T = TypeVar("T")


def retry_transient(
    fn: Callable[[], T],
    *,
    is_transient: Callable[[BaseException], bool],
    stop: threading.Event,
    describe: Callable[[BaseException], str],
    logger: logging.Logger,
    initial: float = 0.1,
    maximum: float = 10.0,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """Call `fn` until it returns, retrying transient errors with jittered exponential backoff.

    A non-transient error propagates at once; when `stop` is set, the last error propagates.
    The first wait is logged (a warning) with what the relay is waiting for, the later ones at
    debug level.
    """

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if exc is None:
            return
        if on_retry is not None:
            on_retry(exc)
        wait = state.next_action.sleep if state.next_action else 0.0
        # The first wait of an outage is a warning; the later ones are detail: the relay's
        # observer reminds of a lasting outage at most once a minute.
        level = logging.WARNING if state.attempt_number == 1 else logging.DEBUG
        logger.log(
            level, "%s; retrying in %.1fs (attempt %d)", describe(exc), wait, state.attempt_number
        )

    def sleep(seconds: float) -> None:
        # Interruptible: a stop request ends the wait at once.
        stop.wait(seconds)

    retrying = Retrying(
        retry=retry_if_exception(is_transient),
        wait=wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial),
        stop=stop_when_event_set(stop),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(fn)
