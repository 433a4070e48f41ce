"""Ctrl-C (SIGINT) or SIGTERM during training: the step in flight finishes, a checkpoint is
saved at it, and the run stops with ``TrainingStopped``; the same command resumes there. A
second signal stops at once (from the last checkpoint saved, as a kill would)."""

from __future__ import annotations

import signal
import sys
import threading


class TrainingStopped(KeyboardInterrupt):
    """The run stopped on a signal after saving its checkpoint at ``step``."""

    def __init__(self, step: int, checkpoint: str):
        super().__init__(f"stopped at step {step}; the checkpoint is in {checkpoint}; "
                         "run the same command again to resume")
        self.step, self.checkpoint = step, checkpoint


class GracefulStop:
    """``with GracefulStop() as stop:`` ... ``if stop.requested:`` save and stop. Outside the
    main thread (where Python cannot take signals) it never asks to stop."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt  # the second signal: at once
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: finishing this step and saving a checkpoint "
              "(send it again to stop at once)", file=sys.stderr, flush=True)
