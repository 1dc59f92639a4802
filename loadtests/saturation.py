"""Where does the stack saturate, and how much of the latency is the gateway's?

Runs Locust (``loadtests/run.sh``) at increasing users against a running gateway, streamed
chat only. Around each step it reads the gateway's ``/metrics`` and the vLLM replica's own
``/metrics`` (its URL from ``GET /admin/backends``) and compares the means of the same
requests from the histograms' sums and counts:

- latency: ``quantgate_request_duration_seconds`` vs ``vllm:e2e_request_latency_seconds``
- time to first token: ``quantgate_time_to_first_token_seconds`` vs
  ``vllm:time_to_first_token_seconds``

The gateway's share is ``(gateway - vLLM) / gateway``. vLLM's clock starts when its API server
renders the request and stops when the engine finishes it, so the difference also holds
vLLM's own HTTP handling: an upper bound of the gateway's part. ``--direct`` runs each step
against vLLM too, for what a client sees with and without the gateway.

Writes ``saturation.md`` (table), ``saturation.json`` and ``saturation.png`` (latency and
throughput vs users) into ``--out``, and each step's Locust report in a folder of its own.

  .venv-load/bin/python loadtests/saturation.py [--host URL] [--users 1,2,4,8,16] [--step 40s]
                                                 [--model smol:w8a8] [--direct] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    text = requests.get(url.rstrip("/") + "/metrics", timeout=30).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def mean_delta(before: Samples, after: Samples, histogram: str, **labels: str) -> float | None:
    """Mean of the observations a histogram got between two scrapes (all matching series)."""

    def total(samples: Samples, name: str) -> float:
        wanted = set(labels.items())
        return sum(v for (n, lbl), v in samples.items() if n == name and wanted <= lbl)

    count = total(after, histogram + "_count") - total(before, histogram + "_count")
    if count <= 0:
        return None
    return (total(after, histogram + "_sum") - total(before, histogram + "_sum")) / count


@dataclass
class LocustStep:
    """One Locust run's numbers for streamed chat (times in seconds)."""

    requests: int
    failures: int
    rps: float
    p50: float
    p95: float
    ttft_p50: float
    tokens_per_s: float  # median decode speed of one stream
    tokens: float  # mean completion tokens of one stream

    @classmethod
    def read(cls, folder: Path) -> LocustStep:
        with (folder / "stats_stats.csv").open() as f:
            rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
        post, ttft = rows["POST", "chat-stream"], rows["TTFT", "chat-stream"]
        speed = rows["TOKENS/S", "chat-stream"]
        return cls(
            requests=int(post["Request Count"]),
            failures=int(post["Failure Count"]),
            rps=float(post["Requests/s"]),
            p50=float(post["50%"]) / 1000,
            p95=float(post["95%"]) / 1000,
            ttft_p50=float(ttft["50%"]) / 1000,
            tokens_per_s=float(speed["50%"]),
            tokens=float(speed["Average Content Size"]),
        )


@dataclass
class Step:
    users: int
    gateway: LocustStep
    gateway_latency: float | None  # mean, from the gateway's metrics
    vllm_latency: float | None  # mean, from vLLM's metrics, same requests
    gateway_ttft: float | None
    vllm_ttft: float | None
    vllm_queue: float | None  # mean time waiting in vLLM's queue
    direct: LocustStep | None = None

    @property
    def latency_share(self) -> float | None:
        return share(self.gateway_latency, self.vllm_latency)

    @property
    def ttft_share(self) -> float | None:
        return share(self.gateway_ttft, self.vllm_ttft)


def share(whole: float | None, inner: float | None) -> float | None:
    return None if whole is None or inner is None or whole <= 0 else (whole - inner) / whole


class Saturation:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.gateway = args.host.rstrip("/")
        self.vllm = self._replica_url()

    def _replica_url(self) -> str:
        model, _, variant = self.args.model.partition(":")
        rows = requests.get(self.gateway + "/admin/backends", timeout=30).json()["data"]
        for row in rows:
            if (row["model"], row["variant"], row["state"]) == (model, variant, "ready"):
                return str(row["url"])
        raise SystemExit(f"saturation: no ready replica of {self.args.model}: {rows}")

    def locust(self, host: str, users: int, out: Path) -> LocustStep:
        command = [str(HERE / "run.sh"), "--host", host, "--users", str(users)]
        command += ["--duration", self.args.step, "--out", str(out), "--model", self.args.model]
        command += ["--mix", "chat-stream=1", "--max-tokens", str(self.args.max_tokens)]
        command += ["--prompt-words", str(self.args.prompt_words), "--warmup-timeout", "0"]
        done = subprocess.run(command, capture_output=True, text=True)
        (out / "console.txt").write_text(done.stdout + done.stderr)
        if done.returncode not in (0, 1):  # 1: some requests failed, counted in the table
            raise SystemExit(f"saturation: Locust failed:\n{done.stdout[-2000:]}{done.stderr}")
        step = LocustStep.read(out)
        print(f"  {host}: {users} users, {step.requests} requests, {step.failures} failed, "
              f"{step.rps:.2f} req/s, p50 {step.p50:.3f} s", flush=True)  # fmt: skip
        return step

    def step(self, users: int) -> Step:
        out = Path(self.args.out)
        gw0, vl0 = scrape(self.gateway), scrape(self.vllm)
        via = self.locust(self.gateway, users, out / f"gateway-{users:02d}u")
        gw1, vl1 = scrape(self.gateway), scrape(self.vllm)
        model, _, variant = self.args.model.partition(":")
        labels = {"model": model, "variant": variant}
        step = Step(
            users=users,
            gateway=via,
            gateway_latency=mean_delta(
                gw0, gw1, "quantgate_request_duration_seconds", endpoint="chat", **labels
            ),
            vllm_latency=mean_delta(vl0, vl1, "vllm:e2e_request_latency_seconds"),
            gateway_ttft=mean_delta(gw0, gw1, "quantgate_time_to_first_token_seconds", **labels),
            vllm_ttft=mean_delta(vl0, vl1, "vllm:time_to_first_token_seconds"),
            vllm_queue=mean_delta(vl0, vl1, "vllm:request_queue_time_seconds"),
        )
        if self.args.direct:
            step.direct = self.locust(self.vllm, users, out / f"direct-{users:02d}u")
        return step

    def run(self) -> list[Step]:
        print(f"saturation: gateway {self.gateway}, vLLM {self.vllm}", flush=True)
        return [self.step(users) for users in self.args.users]


def fmt(value: float | None, unit: str = "", scale: float = 1.0, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f}{unit}"


def table(steps: Sequence[Step]) -> str:
    head = ("| users | req/s | p50 s | p95 s | TTFT p50 s | tok/s per stream | tok/s total "
            "| gateway mean s | vLLM e2e mean s | gateway share | gateway TTFT s | vLLM TTFT s "
            "| TTFT share | vLLM queue s |")  # fmt: skip
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for s in steps:
        g = s.gateway
        lines.append(
            f"| {s.users} | {g.rps:.2f} | {g.p50:.3f} | {g.p95:.3f} | {g.ttft_p50:.3f} "
            f"| {g.tokens_per_s:.0f} | {g.rps * g.tokens:.0f} | {fmt(s.gateway_latency)} "
            f"| {fmt(s.vllm_latency)} | {fmt(s.latency_share, ' %', 100, 1)} "
            f"| {fmt(s.gateway_ttft)} | {fmt(s.vllm_ttft)} | {fmt(s.ttft_share, ' %', 100, 1)} "
            f"| {fmt(s.vllm_queue)} |"
        )
    direct = [s for s in steps if s.direct]
    if direct:
        lines += ["", "| users | via gateway p50 / p95 s | direct to vLLM p50 / p95 s "
                  "| via gateway req/s | direct req/s | TTFT p50 gateway / direct s |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for s in direct:
            g, d = s.gateway, s.direct
            assert d is not None
            lines.append(
                f"| {s.users} | {g.p50:.3f} / {g.p95:.3f} | {d.p50:.3f} / {d.p95:.3f} "
                f"| {g.rps:.2f} | {d.rps:.2f} | {g.ttft_p50:.3f} / {d.ttft_p50:.3f} |"
            )
    return "\n".join(lines) + "\n"


def plot(steps: Sequence[Step], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, thr) = plt.subplots(1, 2, figsize=(12, 4.8))
    lines = [
        ("via gateway", "C0", "o", [(s.users, s.gateway) for s in steps]),
        ("direct to vLLM", "C1", "s", [(s.users, s.direct) for s in steps if s.direct]),
    ]
    for label, color, marker, points in lines:
        if not points:
            continue
        users, runs = [u for u, _ in points], [r for _, r in points if r]
        style = {"color": color, "marker": marker}
        lat.plot(users, [r.p50 for r in runs], "-", label=f"{label}: p50", **style)
        lat.plot(users, [r.p95 for r in runs], "--", label=f"{label}: p95", **style)
        lat.plot(users, [r.ttft_p50 for r in runs], ":", label=f"{label}: TTFT p50", **style)
        thr.plot(users, [r.rps * r.tokens for r in runs], "-", label=label, **style)
    ticks = [s.users for s in steps]
    for ax, name, unit in ((lat, "Latency", "seconds"), (thr, "Throughput", "output tokens/s")):
        ax.set(xscale="log", xlabel="concurrent users", ylabel=unit, title=name)
        ax.set_xticks(ticks, [str(u) for u in ticks])
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def user_counts(text: str) -> list[int]:
    return [int(u) for u in text.split(",")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("QUANTGATE_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--model", default="smol:w8a8")
    parser.add_argument("--users", type=user_counts, default=[1, 2, 4, 8, 16])
    parser.add_argument("--step", default="30s", help="Locust run time of each step")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompt-words", type=int, default=32)
    parser.add_argument("--direct", action="store_true", help="each step against vLLM too")
    parser.add_argument(
        "--out", default=str(HERE / "reports" / time.strftime("saturation-%Y%m%dT%H%M%S"))
    )
    args = parser.parse_args(argv)
    if ":" not in args.model:
        parser.error("--model: name the variant, e.g. smol:w8a8 (metrics are per variant)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    warm = requests.post(
        args.host.rstrip("/") + "/v1/completions", timeout=900,
        json={"model": args.model, "prompt": "Hello", "max_tokens": 1},
    )  # fmt: skip
    if warm.status_code != 200:
        raise SystemExit(f"saturation: warm-up failed: {warm.status_code} {warm.text[:300]}")
    steps = Saturation(args).run()
    title = (f"{args.model}, streamed chat, {args.prompt_words}-word prompts, "
             f"{args.max_tokens} output tokens, {args.step} per step; {machine()}")  # fmt: skip
    text = f"{title}\n\n{table(steps)}"
    (out / "saturation.md").write_text(text)
    rows = [
        asdict(s) | {"latency_share": s.latency_share, "ttft_share": s.ttft_share} for s in steps
    ]
    (out / "saturation.json").write_text(json.dumps({"title": title, "steps": rows}, indent=1))
    plot(steps, out / "saturation.png", title)
    print(f"\n{text}\nwritten to {out}")
    return 1 if any(s.gateway.failures or (s.direct and s.direct.failures) for s in steps) else 0


if __name__ == "__main__":
    sys.exit(main())
