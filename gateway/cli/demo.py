"""``quantgate demo``: the whole path once, as a user sees it.

Starts ``quantgate serve`` on the manifest and asks one question a person can judge, with the
official ``openai`` SDK, of a quantized variant (the first request makes the gateway prepare
the model's source, quantize the variant and start vLLM) and of the base model; prints both
answers side by side, a streamed answer with its time to first token, how long each step took
(source import, the variant's build, vLLM ready) and the gateway's metrics for the variant.
Exits 1 when the quantized variant's answer lacks the expected word.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

PROMPT = "What is the capital of France? Answer in one word."
EXPECTED = "Paris"
MAX_TOKENS = 24
TICK_S = 15.0  # while a request waits: what the gateway is doing, this often
QUESTION: dict[str, Any] = {  # greedy, so the answer can be judged
    "messages": [{"role": "user", "content": PROMPT}],
    "max_tokens": MAX_TOKENS,
    "temperature": 0,
}


def run_demo(manifest: Path, model: str, port: int) -> int:
    from openai import OpenAI

    base = f"http://127.0.0.1:{port}"
    _refuse_busy_port(base, port)
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", str(manifest), "--port", str(port)],
        start_new_session=True,
    )
    try:
        _wait_healthy(base, server)
        model = _pick(base, model)
        client = OpenAI(base_url=base + "/v1", api_key="unused", timeout=1800, max_retries=0)
        print(f"\n>>> {model}: {PROMPT}\n    (first request: prepares the source, builds the "
              "variant, starts vLLM)")  # fmt: skip
        answer = _ask(client, model, base)
        base_name = _base_of(base, model)
        answers = {model: answer}
        if base_name is not None:
            print(f"\n>>> {base_name}: {PROMPT}  (starts vLLM on the base weights)")
            answers[base_name] = _ask(client, base_name, base)
        _stream(client, model)
        _print_side_by_side(answers)
        _print_steps(base, model, base_name)
        _print_metrics(base, model)
        return _verdict(model, answer)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def _ask(client: Any, model: str, base: str) -> str:
    t0 = time.perf_counter()
    with _ticking(base, model):
        reply = client.chat.completions.create(model=model, **QUESTION)
    text = str(reply.choices[0].message.content or "").strip()
    print(f"<<< {text!r}\n    {time.perf_counter() - t0:.1f} s, usage {reply.usage}")
    return text


@contextmanager
def _ticking(base: str, model: str, every_s: float = TICK_S) -> Iterator[None]:
    """While a request waits: every ``every_s``, what the gateway is doing and for how long."""
    stop, t0 = threading.Event(), time.perf_counter()

    def tick() -> None:
        while not stop.wait(every_s):
            print(f"    ... {_doing(base, model)}, {time.perf_counter() - t0:.0f} s", flush=True)

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _doing(base: str, model: str) -> str:
    """``building: job smol:w8a8 quantize (12/30 layers)``-style: state and running job."""
    try:
        cards = httpx.get(base + "/v1/models", timeout=5).json()["data"]
        jobs = httpx.get(base + "/admin/jobs", timeout=5).json()["data"]
    except (httpx.HTTPError, ValueError, KeyError):
        return "waiting"
    state = next((c["quantgate"]["state"] for c in cards if c["id"] == model), "waiting")
    running = [j for j in jobs if j["state"] == "running"]
    if not running:
        return state
    job, progress = running[-1], running[-1]["progress"]
    layers = (
        progress["layers_total"]
        and f" ({progress['layers_done']}/{progress['layers_total']} layers)"
    )
    return f"{state}: job {job['model']}:{job['variant']} {job['stage']}{layers or ''}"


def _stream(client: Any, model: str) -> None:
    t0 = time.perf_counter()
    stream = client.chat.completions.create(model=model, stream=True, **QUESTION)
    ttft, parts = None, []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            ttft = ttft or time.perf_counter() - t0
            parts.append(chunk.choices[0].delta.content)
    print(f"\n<<< {model} (streamed) {''.join(parts).strip()!r}")
    print(f"    time to first token {ttft or 0:.3f} s, total {time.perf_counter() - t0:.2f} s")


def _refuse_busy_port(base: str, port: int) -> None:
    try:
        httpx.get(base + "/health", timeout=1)
    except httpx.TransportError:
        return
    raise SystemExit(f"quantgate demo: port {port} is in use; pass --port with a free one")


def _wait_healthy(base: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"quantgate serve exited with code {server.returncode}")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit("quantgate serve did not answer /health within 60 s")


def _cards(base: str) -> list[dict[str, Any]]:
    cards: list[dict[str, Any]] = httpx.get(base + "/v1/models").json()["data"]
    return cards


def _pick(base: str, model: str) -> str:
    """``auto``: the first quantized variant this machine can serve (the default if it can)."""
    cards = _cards(base)
    if model != "auto":
        return model
    usable = [
        c for c in cards
        if ":" in c["id"] and c["quantgate"]["method"] != "none"
        and c["quantgate"]["state"] not in ("unsupported", "over_budget")
    ]  # fmt: skip
    for card in cards:
        if ":" not in card["id"]:
            print(f"    {card['id']}: default variant {card['quantgate']['variant']}")
    for card in cards:
        if ":" in card["id"]:
            q = card["quantgate"]
            note = f" ({q['error']})" if q["error"] else ""
            print(f"    {card['id']}: {q['state']}{note}")
    if not usable:
        raise SystemExit("no quantized variant in the manifest can be served on this machine")
    usable.sort(key=lambda c: not c["quantgate"]["default"])
    return str(usable[0]["id"])


def _base_of(base: str, model: str) -> str | None:
    """The same model's base-weights variant, to compare answers with (None: it has none)."""
    name = model.partition(":")[0]
    for card in _cards(base):
        q = card["quantgate"]
        if (
            card["id"].startswith(name + ":")
            and q["method"] == "none"
            and q["kernel"] != "external"
        ):
            return str(card["id"])
    return None


def _print_side_by_side(answers: dict[str, str]) -> None:
    width = max(len(name) for name in answers)
    print(f"\n--- {PROMPT} ---")
    for name, text in answers.items():
        print(f"  {name:<{width}}  {text!r}")


def _print_steps(base: str, model: str, base_name: str | None) -> None:
    print("\n--- how long each step took ---")
    for v in httpx.get(base + "/admin/variants").json()["data"]:
        if f"{v['model']}:{v['variant']}" not in (model, base_name):
            continue
        job = v["job"]
        if job:
            what = "source import" if job["variant"] == "(source)" else "quantization job"
            print(f"  {v['model']}:{v['variant']}: {what} {job['id']}: {job['state']} "
                  f"in {job['duration_s']} s")  # fmt: skip
        for r in v["replicas"]:
            if r["state"] == "ready" and r["ready_s"] is not None:
                kernel = v["kernel"]["kernel"]
                print(f"  {v['model']}:{v['variant']}: vLLM replica {r['index']} ({kernel}) "
                      f"ready in {r['ready_s']} s")  # fmt: skip


def _print_metrics(base: str, model: str) -> None:
    name, _, variant = model.partition(":")
    text = httpx.get(base + "/metrics").text
    wanted = (f'model="{name}"', f'variant="{variant}"')
    print("\n--- gateway metrics for this variant ---")
    for line in text.splitlines():
        if line.startswith("#") or "_bucket" in line or "_created" in line:
            continue
        if all(label in line for label in wanted):
            print(line)


def _verdict(model: str, answer: str) -> int:
    if EXPECTED.lower() in answer.lower():
        print(f"\n{model} answered right ({EXPECTED}).")
        return 0
    print(f"\n{model} answered {answer!r}: that is not {EXPECTED}.", file=sys.stderr)
    return 1
