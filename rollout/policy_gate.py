"""Who may use an inference engine now: generations, or one weight update (start to finish).

A weight update spans several calls (vLLM's start / update / finish) during which the model is
partly old and partly new, so generation must not run: requests that arrive wait until the update
has finished, and the update waits until the generations in flight are done. An update the sender
abandons leaves the gate closed until the next one finishes; an update that fails on this engine
marks it broken (its weights are mixed): it refuses requests until it is replaced.
"""

from __future__ import annotations

import contextlib
import threading


class PolicyGate:
    def __init__(self, max_generations: int = 1):
        self._cond = threading.Condition()
        self._generating, self._updating, self._max = 0, False, max_generations
        self.broken: str | None = None  # why the weights cannot be trusted (a failed update)

    @contextlib.contextmanager
    def generating(self, timeout_s: float):
        with self._cond:
            ready = self._cond.wait_for(
                lambda: self.broken or (not self._updating and self._generating < self._max), timeout_s
            )
            if self.broken:
                raise RuntimeError(f"this engine's weights cannot be trusted: {self.broken}")
            if not ready:
                raise TimeoutError(f"the engine stayed busy (a weight update) for more than {timeout_s:.0f}s")
            self._generating += 1
        try:
            yield
        finally:
            with self._cond:
                self._generating -= 1
                self._cond.notify_all()

    def open_update(self, timeout_s: float) -> None:
        """Close the gate for an update (still closed from an update the sender abandoned: go on)."""
        with self._cond:
            if self.broken:
                raise RuntimeError(f"this engine's weights cannot be trusted: {self.broken}")
            if self._updating:
                return
            self._updating = True  # new requests wait from now on
            if not self._cond.wait_for(lambda: self._generating == 0, timeout_s):
                self._updating = False
                self._cond.notify_all()
                raise TimeoutError(f"generations still running after {timeout_s:.0f}s; update not started")

    def require_update(self) -> None:
        if not self._updating:
            raise RuntimeError("no weight update in progress: call start_weight_update first")

    def fail_update(self, reason: str) -> None:
        with self._cond:
            self.broken = reason  # stays closed: the model holds a mix of two versions
            self._cond.notify_all()

    def close_update(self) -> None:
        with self._cond:
            self._updating, self.broken = False, None
            self._cond.notify_all()
