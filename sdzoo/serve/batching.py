"""Dynamic batching: requests that arrive together become one onnxruntime call.

One worker thread per model takes requests from a bounded FIFO queue. A batch opens with the oldest
waiting request and closes when it holds ``max_batch_size`` items or ``max_queue_delay`` has passed since
that request arrived (as Triton's dynamic batcher does); whatever queued up while the previous batch ran
is taken at once. The outputs are split back by each request's own batch size. The event loop never
blocks: callers await an asyncio future that the worker resolves with ``call_soon_threadsafe``.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import numpy as np

__all__ = ['DynamicBatcher', 'QueueFullError', 'ShuttingDownError']

_logger = logging.getLogger('sdzoo.serve')
_STOP = object()


class QueueFullError(RuntimeError):
    """The model's queue is at its bound: the caller should retry later (HTTP 503 + Retry-After)."""


class ShuttingDownError(RuntimeError):
    """The batcher is draining for shutdown and takes no new requests."""


@dataclass
class _Request:
    x: np.ndarray
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float

    @property
    def n(self) -> int:
        return int(self.x.shape[0])


def _resolve(future: asyncio.Future, result: Any = None, error: Optional[BaseException] = None) -> None:
    if future.done():  # the caller went away (cancelled)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _deliver(req: _Request, result: Any = None, error: Optional[BaseException] = None) -> None:
    try:
        req.loop.call_soon_threadsafe(_resolve, req.future, result, error)
    except RuntimeError:  # the caller's event loop is already closed: nobody is waiting
        pass


class DynamicBatcher:
    """Queue + worker thread in front of ``run_fn(batch) -> outputs`` (both batched along dim 0).

    Args:
        run_fn: the model call, e.g. ``OrtModel.run``.
        max_batch_size: most items (images) in one call; a single request may carry up to this many.
        max_queue_delay: seconds the oldest request may wait for others to join its batch.
        max_queue_size: most requests waiting; more get :class:`QueueFullError`.
        enabled: False runs every request on its own (for comparisons), still off the event loop.
        observer: optional ``observer(batch_size, queue_seconds_list, infer_seconds)`` for metrics.
    """

    def __init__(
            self,
            run_fn: Callable[[np.ndarray], np.ndarray],
            max_batch_size: int = 32,
            max_queue_delay: float = 0.0,
            max_queue_size: int = 256,
            enabled: bool = True,
            name: str = 'model',
            observer: Optional[Callable[[int, List[float], float], None]] = None,
    ):
        if max_batch_size < 1:
            raise ValueError(f'max_batch_size must be >= 1, got {max_batch_size}')
        if max_queue_delay < 0:
            raise ValueError(f'max_queue_delay must be >= 0, got {max_queue_delay}')
        if max_queue_size < 1:
            raise ValueError(f'max_queue_size must be >= 1, got {max_queue_size}')
        self.run_fn = run_fn
        self.max_batch_size = int(max_batch_size)
        self.max_queue_delay = float(max_queue_delay)
        self.max_queue_size = int(max_queue_size)
        self.enabled = enabled
        self.name = name
        self.observer = observer
        self._queue: queue.Queue = queue.Queue(maxsize=self.max_queue_size)
        self._closing = False
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    # --- caller side (event loop) ---
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._worker, name=f'sdzoo-batcher-{self.name}', daemon=True)
            self._thread.start()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def accepting(self) -> bool:
        """False once :meth:`close` has begun (or before :meth:`start`): submit() raises ShuttingDownError."""
        return not self._closing and self._thread is not None

    async def submit(self, x: np.ndarray) -> np.ndarray:
        """Queue ``x`` (a batch of one or more items) and await its own slice of the batched output."""
        if x.ndim < 1 or x.shape[0] < 1:
            raise ValueError('a request must carry at least one item along the batch dimension')
        if x.shape[0] > self.max_batch_size:
            raise ValueError(f'request batch size {x.shape[0]} exceeds max_batch_size {self.max_batch_size}')
        loop = asyncio.get_running_loop()
        req = _Request(x=x, future=loop.create_future(), loop=loop, enqueued=time.perf_counter())
        with self._lock:  # no request may slip in behind the stop marker
            if self._closing or self._thread is None:
                raise ShuttingDownError(f'model {self.name!r} is not accepting requests (shutting down)')
            try:
                self._queue.put_nowait(req)
            except queue.Full:
                raise QueueFullError(
                    f'model {self.name!r} queue is full ({self.max_queue_size} requests waiting)') from None
        return await req.future

    def close(self, timeout: Optional[float] = None) -> bool:
        """Stop taking requests, finish every queued one, join the worker; True if it ended in time."""
        with self._lock:  # after this no submit() can enqueue, so the stop marker goes behind all of them
            first_close, self._closing = not self._closing, True
            thread = self._thread
        if thread is None:
            return True
        if first_close:
            self._queue.put(_STOP)  # FIFO; blocks while the queue is full, never under the lock
        thread.join(timeout)
        return not thread.is_alive()

    # --- worker thread ---
    def _worker(self) -> None:
        carry: Any = None
        while True:
            first = carry if carry is not None else self._queue.get()
            carry = None
            if first is _STOP:
                return
            batch: List[_Request] = [first]
            size = first.n
            if self.enabled:
                deadline = first.enqueued + self.max_queue_delay
                while size < self.max_batch_size:
                    wait = deadline - time.perf_counter()
                    try:
                        item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP or size + item.n > self.max_batch_size:
                        carry = item  # opens the next batch (or stops after this one)
                        break
                    batch.append(item)
                    size += item.n
            self._run(batch, size)

    def _run(self, batch: List[_Request], size: int) -> None:
        start = time.perf_counter()
        queue_times = [start - r.enqueued for r in batch]
        try:
            x = batch[0].x if len(batch) == 1 else np.concatenate([r.x for r in batch], axis=0)
            y = self.run_fn(x)
            if y.shape[0] != size:
                raise RuntimeError(f'model returned {y.shape[0]} outputs for a batch of {size}')
        except Exception as e:  # noqa: BLE001 - every caller of this batch gets the error
            _logger.exception('inference failed for model %r (batch of %d)', self.name, size,
                              extra={'event': 'inference_failed', 'model': self.name})
            for r in batch:
                _deliver(r, None, e)
            return
        infer_time = time.perf_counter() - start
        offset = 0
        for r in batch:
            _deliver(r, y[offset:offset + r.n])
            offset += r.n
        if self.observer is not None:
            try:
                self.observer(size, queue_times, infer_time)
            except Exception:  # noqa: BLE001 - metrics must never break serving
                _logger.exception('batch observer failed')
