"""Prometheus metrics of one server instance (own registry, so several apps can live in one process)."""
from __future__ import annotations

from typing import List

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ['ServeMetrics', 'CONTENT_TYPE_LATEST', 'UNKNOWN_MODEL']

UNKNOWN_MODEL = '_unknown'  # label for paths naming no served model (keeps label cardinality bounded)
_LATENCY_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1., 2.5, 5., 10.)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServeMetrics:
    """Requests, errors by status code, batch sizes, queue time and inference latency, per model."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            'sdzoo_requests', 'HTTP requests handled', ['model', 'endpoint', 'code'], registry=r)
        self.errors = Counter(
            'sdzoo_request_errors', 'HTTP requests answered with a 4xx/5xx status', ['model', 'code'], registry=r)
        self.request_latency = Histogram(
            'sdzoo_request_duration_seconds', 'HTTP request latency, body read to response sent',
            ['model', 'endpoint'], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            'sdzoo_batch_size', 'items per onnxruntime call', ['model'], buckets=_BATCH_BUCKETS, registry=r)
        self.queue_time = Histogram(
            'sdzoo_queue_duration_seconds', 'time a request waited in the batcher queue', ['model'],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.inference_latency = Histogram(
            'sdzoo_inference_duration_seconds', 'onnxruntime call latency per batch', ['model'],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.inferred_items = Counter(
            'sdzoo_inferred_items', 'items (images) run through the model', ['model'], registry=r)
        self.in_flight = Gauge(
            'sdzoo_requests_in_flight', 'HTTP requests being handled (this scrape included)', registry=r)
        self.queue_depth = Gauge(
            'sdzoo_queue_depth', 'requests waiting in the batcher queue', ['model'], registry=r)
        self.queue_rejections = Counter(
            'sdzoo_queue_rejections', 'requests refused with 503 because the queue was full', ['model'],
            registry=r)
        self.model_ready = Gauge(
            'sdzoo_model_ready', '1 if the model loaded and serves, 0 if its repository entry is broken',
            ['model'], registry=r)

    def observe_request(self, model: str, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(model, endpoint, str(code)).inc()
        if code >= 400:
            self.errors.labels(model, str(code)).inc()
        self.request_latency.labels(model, endpoint).observe(seconds)

    def batch_observer(self, model: str):
        """Callback for :class:`DynamicBatcher` recording one batch."""
        batch_size = self.batch_size.labels(model)
        queue_time = self.queue_time.labels(model)
        latency = self.inference_latency.labels(model)
        items = self.inferred_items.labels(model)

        def observe(size: int, queue_seconds: List[float], infer_seconds: float) -> None:
            batch_size.observe(size)
            for q in queue_seconds:
                queue_time.observe(q)
            latency.observe(infer_seconds)
            items.inc(size)
        return observe

    def render(self) -> bytes:
        return generate_latest(self.registry)
