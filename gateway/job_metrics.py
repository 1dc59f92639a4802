"""Quantization jobs as Prometheus metrics, read from the job runner at scrape time.

    quantgate_jobs{state}                          jobs by state (gauge)
    quantgate_job_duration_seconds{state}          finished jobs' run time (histogram)
    quantgate_job_layers_done / _layers_total      running jobs' progress, by model and variant

Labels are bounded: states are an enum, models and variants come from the manifest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from serving.job import Job, JobState

DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)


class JobCollector(Collector):
    def __init__(self, jobs: Callable[[], list[Job]]) -> None:
        self._jobs = jobs

    def collect(self) -> Iterator[Metric]:
        jobs = self._jobs()
        yield self._by_state(jobs)
        yield self._durations(jobs)
        yield from self._progress([j for j in jobs if j.state is JobState.RUNNING])

    @staticmethod
    def _by_state(jobs: list[Job]) -> Metric:
        gauge = GaugeMetricFamily("quantgate_jobs", "Quantization jobs by state.", labels=["state"])
        for state in JobState:
            gauge.add_metric([state.value], sum(j.state is state for j in jobs))
        return gauge

    @staticmethod
    def _durations(jobs: list[Job]) -> Metric:
        family = HistogramMetricFamily(
            "quantgate_job_duration_seconds",
            "Run time of finished quantization jobs (queue time excluded), by final state.",
            labels=["state"],
        )
        for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
            times = [j.duration_s for j in jobs if j.state is state and j.duration_s is not None]
            buckets = [(str(b), sum(t <= b for t in times)) for b in DURATION_BUCKETS]
            family.add_metric([state.value], [*buckets, ("+Inf", len(times))], sum(times))
        return family

    @staticmethod
    def _progress(running: list[Job]) -> Iterator[Metric]:
        labels = ["model", "variant"]
        done = GaugeMetricFamily(
            "quantgate_job_layers_done", "Layers quantized so far by running jobs.", labels=labels
        )
        total = GaugeMetricFamily(
            "quantgate_job_layers_total", "Layers to quantize in running jobs.", labels=labels
        )
        for job in running:
            if job.layers_total:
                done.add_metric([job.model, job.variant], job.layers_done or 0)
                total.add_metric([job.model, job.variant], job.layers_total)
        yield done
        yield total
