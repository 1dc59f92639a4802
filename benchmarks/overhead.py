"""Gateway overhead: the gateway vs a direct call to a fast fake upstream, same load, same run.

    python benchmarks/overhead.py [--duration 10] [--out FILE.md] [--only chat|stream|paced]

The fake upstream and the gateway share CPU core 0; the load generator (wrk, C) runs on core 1.
Scenarios: non-streamed chat at 1, 32 and 128 connections, streamed chat (64 tokens) at 32.
For each: latency p50/p99 direct and through the gateway, added p50/p99, requests/s ratio,
and the gateway's own CPU time per request (from /proc, user + system). Prints a markdown
table with the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model": "%s", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16%s}'
"""
# (kind, streams in flight); "paced": the upstream sends a token every 10 ms, as a server does
SCENARIOS = [("chat", 1), ("chat", 32), ("chat", 128), ("stream", 32), ("paced", 32)]
ITL_MS = 10


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    cpu_s: float | None = None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children that were waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / CLK_TCK


def _wrk_output(url: str, connections: int, seconds: int, stream: bool, model: str) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(LUA % (model, ', "stream": true' if stream else ""))
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
           "-s", lua.name, url]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    Path(lua.name).unlink()
    return out


def _wrk(url: str, connections: int, seconds: int, stream: bool, model: str = "bench") -> Run:
    """One measured wrk run (a warm-up only calls ``_wrk_output``: wrk may not time its slow
    first streamed responses)."""
    out = _wrk_output(url, connections, seconds, stream, model)
    try:
        return _parse(out)
    except (AttributeError, KeyError) as exc:
        raise SystemExit(f"wrk against {url} gave no figures ({exc}):\n{out}") from None


def _parse(out: str) -> Run:
    return Run(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=_ms(re.search(r"^\s+50%\s+(\S+)$", out, re.M).group(1)),  # type: ignore[union-attr]
        p99_ms=_ms(re.search(r"^\s+99%\s+(\S+)$", out, re.M).group(1)),  # type: ignore[union-attr]
        requests=int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
    )


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def _machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{model}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per run")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    parser.add_argument(
        "--only", choices=sorted({kind for kind, _ in SCENARIOS}), help="run one scenario kind"
    )
    args = parser.parse_args()
    up_port, paced_port, gw_port = _free_port(), _free_port(), _free_port()
    tmp = Path(tempfile.mkdtemp())
    models = "".join(
        f"  {name}:\n    default_variant: main\n    variants:\n"
        f"      main: {{method: none, upstream: {{url: 'http://127.0.0.1:{port}'}}}}\n"
        for name, port in (("bench", up_port), ("paced", paced_port))
    )
    (tmp / "bench.yaml").write_text(f"cache_dir: {tmp}\nmodels:\n{models}")
    fake = [sys.executable, str(HERE / "fake_upstream.py"), "--tokens", "64"]
    upstream = subprocess.Popen(["taskset", "-c", "0", *fake, "--port", str(up_port)])
    paced = subprocess.Popen(
        ["taskset", "-c", "0", *fake, "--port", str(paced_port), "--itl-ms", str(ITL_MS)]
    )
    gateway = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, "-m", "gateway.cli", "serve", str(tmp / "bench.yaml"),
         "--port", str(gw_port), "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait(f"http://127.0.0.1:{up_port}/health", upstream)
        _wait(f"http://127.0.0.1:{paced_port}/health", paced)
        _wait(f"http://127.0.0.1:{gw_port}/health", gateway)
        rows = []
        for kind, conns in SCENARIOS:
            if args.only and kind != args.only:
                continue
            stream, model = kind != "chat", "paced" if kind == "paced" else "bench"
            port = paced_port if kind == "paced" else up_port
            gw_url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
            _wrk_output(gw_url, conns, 2, stream, model)  # warm-up
            server = paced if kind == "paced" else upstream
            before = _cpu_seconds(server.pid)
            direct = _wrk(
                f"http://127.0.0.1:{port}/v1/chat/completions", conns, args.duration, stream, model
            )
            direct.cpu_s = _cpu_seconds(server.pid) - before
            before = _cpu_seconds(gateway.pid)
            via = _wrk(gw_url, conns, args.duration, stream, model)
            via.cpu_s = _cpu_seconds(gateway.pid) - before
            rows.append((kind, conns, direct, via))
        table = _table(rows)
    finally:
        for proc in (gateway, upstream, paced):
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:  # a fake upstream still holding a stream open
                proc.kill()
                proc.wait()
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


def _table(rows: list[tuple[str, int, Run, Run]]) -> str:
    lines = [
        f"Machine: {_machine()}. Gateway + fake upstream pinned to core 0, wrk to core 1.",
        "",
        "| scenario | in flight | direct p50 / p99 ms | gateway p50 / p99 ms | added p50 / p99 ms "
        "| req/s direct | req/s gateway | ratio (= tokens/s ratio for streams) | gateway CPU ms/req "
        "| fake upstream CPU ms/req (direct) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, conns, d, g in rows:
        name = {"chat": "chat, non-streamed", "stream": "chat, streamed 64 tokens",
                "paced": f"streamed 64 tokens, {ITL_MS} ms/token upstream"}[kind]  # fmt: skip
        cpu = 1000 * (g.cpu_s or 0) / max(g.requests, 1)
        fake_cpu = 1000 * (d.cpu_s or 0) / max(d.requests, 1)
        lines.append(
            f"| {name} | {conns} | {d.p50_ms:.2f} / {d.p99_ms:.2f} | {g.p50_ms:.2f} / {g.p99_ms:.2f} "
            f"| {g.p50_ms - d.p50_ms:+.2f} / {g.p99_ms - d.p99_ms:+.2f} | {d.rps:,.0f} | {g.rps:,.0f} "
            f"| {g.rps / d.rps:.2f} | {cpu:.3f} | {fake_cpu:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
