"""Invariant hooks: Python checks for what the invariant language cannot express.

A hook is ``fn(facts: DispatchFacts) -> bool`` registered under a name with a time limit.
It allows a dispatch only by returning ``True``: returning anything else, raising, or not
answering within its limit denies (fail closed), and the denial names the hook.

Hooks run on a few daemon threads owned by their registry, so that the caller waits no
longer than the limit. Python cannot kill a thread: a hook that overruns keeps running on
its thread until it returns, and its answer is then dropped. While it runs, that thread
serves no other hook; once every thread is held by hooks that never return, every later
check times out and denies. The threads are daemons, so a hung hook does not keep the
process from exiting. Each check costs a thread hand-off (tens of microseconds), which is
why the hot path runs no hook unless one is registered.
"""

from __future__ import annotations

import math
import queue
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from fabric.policy._facts import DispatchFacts, Violation
from fabric.policy._loader import PolicyError, Problem

DEFAULT_TIMEOUT_S = 0.1
MAX_TIMEOUT_S = 60.0
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")

HookFn = Callable[[DispatchFacts], object]


class InvariantHookError(PolicyError):
    """A hook that cannot be registered: a bad or taken name, a bad time limit."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__([Problem("<invariant hooks>", 0, 0, message)])

    def diagnostics(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message,))


@dataclass(frozen=True)
class InvariantHook:
    name: str
    fn: HookFn
    timeout_s: float


class HookRegistry:
    """Named hooks and the threads that run them; `check` runs every hook on the facts."""

    def __init__(self, threads: int = 4) -> None:
        self._hooks: dict[str, InvariantHook] = {}
        self._lock = threading.Lock()
        self._threads = threads
        self._started = 0
        self._idle = 0  # threads waiting for a job
        self._queued = 0  # jobs no thread has taken yet
        self._jobs: queue.SimpleQueue[tuple[HookFn, DispatchFacts, Future[object]]] = (
            queue.SimpleQueue()
        )
        self._overdue: set[Future[object]] = set()  # calls past their limit, still running

    def register(self, name: str, fn: HookFn, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InvariantHookError(
                f"hook name {name!r}: expected lowercase letters, digits and '-', "
                "starting with a letter"
            )
        if not callable(fn):
            raise InvariantHookError(f"hook {name!r}: {fn!r} is not callable")
        if (
            isinstance(timeout_s, bool)
            or not isinstance(timeout_s, int | float)
            or not math.isfinite(timeout_s)
            or not 0 < timeout_s <= MAX_TIMEOUT_S
        ):
            raise InvariantHookError(
                f"hook {name!r}: timeout_s must be a number of seconds in (0, {MAX_TIMEOUT_S:g}], "
                f"got {timeout_s!r}"
            )
        with self._lock:
            if name in self._hooks:
                raise InvariantHookError(f"hook {name!r} is already registered")
            self._hooks = {**self._hooks, name: InvariantHook(name, fn, float(timeout_s))}

    def unregister(self, name: str) -> None:
        with self._lock:
            if name not in self._hooks:
                raise InvariantHookError(f"no hook {name!r} is registered")
            self._hooks = {k: v for k, v in self._hooks.items() if k != name}

    def names(self) -> list[str]:
        return list(self._hooks)

    def __len__(self) -> int:
        return len(self._hooks)

    @property
    def overdue(self) -> int:
        """Calls that overran their limit and have not returned yet."""
        return len(self._overdue)

    def check(self, facts: DispatchFacts) -> Violation | None:
        """The first hook (in registration order) that denies `facts`, or None. Every hook
        starts at once; the wait for each ends at its own limit."""
        hooks = list(self._hooks.values())  # replaced, never mutated: a consistent snapshot
        if not hooks:
            return None
        started = time.monotonic()
        calls = [(hook, self._submit(hook.fn, facts)) for hook in hooks]
        for index, (hook, call) in enumerate(calls):
            denied = self._wait(hook, call, started + hook.timeout_s)
            if denied is not None:
                for _, other in calls[index + 1 :]:
                    other.cancel()  # not started yet: it never runs
                return denied
        return None

    def _wait(self, hook: InvariantHook, call: Future[object], deadline: float) -> Violation | None:
        def deny(why: str) -> Violation:
            return Violation(hook.name, f"invariant hook {hook.name}: {why}; denied")

        try:
            result = call.result(timeout=max(deadline - time.monotonic(), 0.0))
        except FutureTimeout:
            if not call.cancel():
                with self._lock:
                    self._overdue.add(call)
                call.add_done_callback(self._finished)
            return deny(f"no answer within {hook.timeout_s:g} s")
        except BaseException as exc:  # a hook's SystemExit must not stop the caller
            return deny(f"raised {type(exc).__name__}: {exc}")
        if result is True:
            return None
        if result is False:
            return deny("returned False")
        return deny(f"returned {result!r}, not True or False")

    def _finished(self, call: Future[object]) -> None:
        with self._lock:
            self._overdue.discard(call)

    def _submit(self, fn: HookFn, facts: DispatchFacts) -> Future[object]:
        call: Future[object] = Future()
        with self._lock:
            self._queued += 1
            # One thread per job in flight, up to the limit: hooks of one check run at once.
            if self._queued > self._idle and self._started < self._threads:
                self._started += 1
                self._idle += 1
                threading.Thread(target=self._serve, name="invariant-hook", daemon=True).start()
        self._jobs.put((fn, facts, call))
        return call

    def _serve(self) -> None:
        while True:
            fn, facts, call = self._jobs.get()
            with self._lock:
                self._queued -= 1
                self._idle -= 1
            try:
                if call.set_running_or_notify_cancel():
                    try:
                        call.set_result(fn(facts))
                    except BaseException as exc:
                        call.set_exception(exc)
            finally:
                with self._lock:
                    self._idle += 1


# The hooks every dispatch in this process is checked against.
INVARIANT_HOOKS = HookRegistry()


def register_invariant_hook(name: str, fn: HookFn, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Check every dispatch in this process with `fn` as invariant `name`: it allows a
    dispatch only by returning True within `timeout_s` seconds."""
    INVARIANT_HOOKS.register(name, fn, timeout_s)


def unregister_invariant_hook(name: str) -> None:
    INVARIANT_HOOKS.unregister(name)
