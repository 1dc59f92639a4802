"""Prometheus metrics of the gateway, held in an object built on a registry passed in.

Label values are bounded: ``model`` and ``variant`` come from the manifest only (a request for
an unknown model is counted under ``model="_unknown"``), ``endpoint`` from the routes, ``key``
from the manifest's key names (never the key itself), ``reason`` and ``outcome`` from fixed sets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.job_metrics import JobCollector
from serving.job import Job
from serving.swapping import SwapEvent

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
UNKNOWN = "_unknown"


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "quantgate_requests",
            "Requests by model, variant, endpoint and HTTP status.",
            ["model", "variant", "endpoint", "status"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "quantgate_request_duration_seconds",
            "Time from request received to the last byte sent.",
            ["model", "variant", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "quantgate_time_to_first_token_seconds",
            "Streams: time from request received to the first content chunk.",
            ["model", "variant"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inter_token_latency = Histogram(
            "quantgate_inter_token_latency_seconds",
            "Streams: mean time between output tokens of a request, one sample per request.",
            ["model", "variant"],
            buckets=TOKEN_LATENCY_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "quantgate_prompt_tokens",
            "Prompt tokens, as the backend reported them.",
            ["model", "variant"],
            registry=registry,
        )
        self.completion_tokens = Counter(
            "quantgate_completion_tokens",
            "Completion tokens, as the backend reported them.",
            ["model", "variant"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "quantgate_requests_in_flight",
            "Requests being proxied now.",
            ["model", "variant"],
            registry=registry,
        )
        self.upstream_errors = Counter(
            "quantgate_upstream_errors",
            "Backend connection failures and broken streams.",
            ["model", "variant"],
            registry=registry,
        )

        self.retries = Counter(
            "quantgate_upstream_retries",
            "Requests sent again to another replica after a failure before the first byte.",
            ["model", "variant"],
            registry=registry,
        )

        self.rate_limited = Counter(
            "quantgate_rate_limited",
            "Requests refused with 429, by API key name and reason (requests, tokens, quota).",
            ["key", "reason"],
            registry=registry,
        )
        self.ledger_rows = Counter(
            "quantgate_ledger_rows",
            "Usage ledger rows by outcome: written, or dropped because the queue was full.",
            ["outcome"],
            registry=registry,
        )
        self.ledger_write_errors = Counter(
            "quantgate_ledger_write_errors",
            "Failed batch writes to the usage database (each is retried).",
            registry=registry,
        )
        self.ledger_queue = Gauge(
            "quantgate_ledger_queue_rows",
            "Usage rows waiting to be written to the database.",
            registry=registry,
        )

        self.swaps = Counter(
            "quantgate_swaps",
            "Swapping steps by variant and kind: sleep, wake, start, stop, warm (the one "
            "sleep/wake cycle after start-up).",
            ["model", "variant", "kind"],
            registry=registry,
        )
        self.swap_seconds = Histogram(
            "quantgate_swap_seconds",
            "Duration of swapping steps: sleep, wake, start, stop, warm, and queue_wait (a "
            "request's wait for its variant to wake or start).",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.reloads = Counter(
            "quantgate_manifest_reloads",
            "Manifest reloads by result: applied, or refused (invalid, or needing a restart).",
            ["result"],
            registry=registry,
        )

        self._children: dict[tuple[str, str], VariantMetrics] = {}

    def children(self, model: str, variant: str) -> VariantMetrics:
        """The labelled series of one variant, looked up once (``labels()`` costs a lock)."""
        found = self._children.get((model, variant))
        if found is None:
            found = self._children[(model, variant)] = VariantMetrics(self, model, variant)
        return found

    def watch_replicas(self, rows: Callable[[], list[dict[str, Any]]]) -> None:
        """Export replicas by state and open circuits, read from the fleet at scrape time."""
        self.registry.register(_ReplicaCollector(rows))

    def record_swap(self, event: SwapEvent) -> None:
        if event.kind != "queue_wait":
            self.swaps.labels(event.model, event.variant, event.kind).inc()
        self.swap_seconds.labels(event.kind).observe(event.seconds)

    def watch_residency(self, rows: Callable[[], list[tuple[str, str, str]]]) -> None:
        """Export each variant's residency (cold, starting, awake, asleep, stopped, failed)."""
        self.registry.register(_ResidencyCollector(rows))

    def watch_kernels(self, rows: Callable[[], list[dict[str, Any]]]) -> None:
        """Export each running variant's kernel, and (``optimize_for: auto``) the load its
        kernel follows and its switches."""
        self.registry.register(_KernelCollector(rows))

    def watch_jobs(self, jobs: Callable[[], list[Job]]) -> None:
        """Export quantization jobs (by state, durations, layer progress), read from the job
        runner at scrape time (``gateway.job_metrics``)."""
        self.registry.register(JobCollector(jobs))


class VariantMetrics:
    def __init__(self, m: GatewayMetrics, model: str, variant: str) -> None:
        self._m, self._labels = m, (model, variant)
        self.in_flight = m.in_flight.labels(model, variant)
        self.upstream_errors = m.upstream_errors.labels(model, variant)
        self.retries = m.retries.labels(model, variant)
        self.prompt_tokens = m.prompt_tokens.labels(model, variant)
        self.completion_tokens = m.completion_tokens.labels(model, variant)
        self.time_to_first_token = m.time_to_first_token.labels(model, variant)
        self.inter_token_latency = m.inter_token_latency.labels(model, variant)
        self._duration: dict[str, Any] = {}

    def duration(self, endpoint: str) -> Any:
        child = self._duration.get(endpoint)
        if child is None:
            child = self._duration[endpoint] = self._m.request_duration.labels(
                *self._labels, endpoint
            )
        return child


class _ReplicaCollector(Collector):
    def __init__(self, rows: Callable[[], list[dict[str, Any]]]) -> None:
        self._rows = rows

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states = GaugeMetricFamily(
            "quantgate_replicas", "vLLM replicas by state.", labels=["model", "variant", "state"]
        )
        circuits = GaugeMetricFamily(
            "quantgate_circuit_open_replicas",
            "Replicas kept out of routing by an open circuit breaker.",
            labels=["model", "variant"],
        )
        counts: dict[tuple[str, str, str], int] = {}
        open_: dict[tuple[str, str], int] = {}
        for row in self._rows():
            key = (row["model"], row["variant"])
            counts[(*key, row["state"])] = counts.get((*key, row["state"]), 0) + 1
            open_[key] = open_.get(key, 0) + (row["circuit"] == "open")
        for labels, n in counts.items():
            states.add_metric(list(labels), n)
        for labels2, n in open_.items():
            circuits.add_metric(list(labels2), n)
        yield states
        yield circuits


class _ResidencyCollector(Collector):
    def __init__(self, rows: Callable[[], list[tuple[str, str, str]]]) -> None:
        self._rows = rows

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "quantgate_variant_residency",
            "1 for the residency each variant is in: cold, starting, awake, asleep, stopped, "
            "failed.",
            labels=["model", "variant", "state"],
        )
        for model, variant, state in self._rows():
            family.add_metric([model, variant, state], 1)
        yield family


class _KernelCollector(Collector):
    def __init__(self, rows: Callable[[], list[dict[str, Any]]]) -> None:
        self._rows = rows

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        labels = ["model", "variant"]
        kernel = GaugeMetricFamily(
            "quantgate_variant_kernel",
            "1 for the linear kernel each running variant's replicas are launched with.",
            labels=[*labels, "kernel"],
        )
        streams = GaugeMetricFamily(
            "quantgate_kernel_follow_streams",
            "optimize_for auto: mean requests in flight per replica over the switch window.",
            labels=labels,
        )
        switches = CounterMetricFamily(
            "quantgate_kernel_switches",
            "optimize_for auto: kernel switches made for the load seen.",
            labels=labels,
        )
        for row in self._rows():
            key = [row["model"], row["variant"]]
            kernel.add_metric([*key, row["kernel"]], 1)
            if row["streams"] is not None:
                streams.add_metric(key, row["streams"])
            if row["switches"] is not None:
                switches.add_metric(key, row["switches"])
        yield kernel
        yield streams
        yield switches
