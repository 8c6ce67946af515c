"""Stopping a run cleanly: SIGTERM/SIGINT handling and, under DDP, the ranks' agreement on when to stop."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

from .distributed import agree

__all__ = ['TrainingInterrupted', 'StopMixin', 'threading_main']


class TrainingInterrupted(Exception):
    """SIGTERM/SIGINT arrived (at this or, under DDP, another rank): rank 0 wrote a checkpoint at the
    current position, which every rank reached. ``written`` is False on the other ranks."""

    def __init__(self, signum: int, checkpoint: Path, written: bool = True):
        super().__init__(f'interrupted by signal {signum}; checkpoint '
                         f'{"written to" if written else "written by rank 0 to"} {checkpoint}')
        self.signum, self.checkpoint, self.written = signum, checkpoint, written


def threading_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


class StopMixin:
    """Signal handling of a :class:`~sdzoo.train.trainer.Trainer`: a signal finishes the current step, a
    checkpoint is written and :class:`TrainingInterrupted` raised; a second one gives up at once."""

    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is not None:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self._stop_signal = signum
        where = '' if self.world == 1 else f' (rank {self.rank})'
        print(f'\nsignal {signum}{where}: finishing this step, then {"rank 0 writes" if self.world > 1 else "writing"} '
              'a checkpoint…', file=sys.stderr, flush=True)

    def _install_signals(self):
        old = {}
        if threading_main():
            for s in (signal.SIGTERM, signal.SIGINT):
                old[s] = signal.signal(s, self._on_signal)
        return old

    _stopping = 0  # signal number every rank agreed to stop on (0: keep going)
    _checkpoint_due = False

    def _agree_to_stop(self, checkpoint_due: bool = False) -> int:
        """Decide, on every rank alike (one all-reduce under DDP), whether to stop here and whether a periodic
        checkpoint is due: a signal to one rank stops all of them at the same step, and a checkpoint is
        written when any rank's clock says so. Decisions use only the agreed values, never the live flag."""
        signum, due = agree([float(self._stop_signal or 0), float(checkpoint_due)], self.world, self.device)
        self._stopping, self._checkpoint_due = int(signum), bool(due)
        return self._stopping
