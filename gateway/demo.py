"""``quantgate demo``: the whole path once, as a user sees it.

Starts ``quantgate serve`` on the manifest, asks for a quantized variant with the official
``openai`` SDK (the first request makes the gateway quantize it and start vLLM), then streams
a second answer, and prints the answers, the times and the gateway's metrics for the variant.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

PROMPT = "What does the standard library's json module do?"


def run_demo(manifest: Path, model: str, port: int) -> int:
    from openai import OpenAI

    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", str(manifest), "--port", str(port)],
        start_new_session=True,
    )
    try:
        _wait_healthy(base, server)
        model = _pick(base, model)
        client = OpenAI(base_url=base + "/v1", api_key="unused", timeout=1800, max_retries=0)
        print(f"\n>>> {model}: {PROMPT}  (first request: builds the variant, starts vLLM)")
        t0 = time.perf_counter()
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=48
        )
        first = time.perf_counter() - t0
        print(f"<<< {reply.choices[0].message.content!r}")
        print(f"    {first:.1f} s, usage {reply.usage}")
        t1 = time.perf_counter()
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=48, stream=True
        )
        ttft, parts = None, []
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                ttft = ttft or time.perf_counter() - t1
                parts.append(chunk.choices[0].delta.content)
        print(f"<<< (streamed) {''.join(parts)!r}")
        print(f"    time to first token {ttft or 0:.3f} s, total {time.perf_counter() - t1:.2f} s")
        _print_job(base, model)
        _print_metrics(base, model)
        return 0
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


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


def _pick(base: str, model: str) -> str:
    """``auto``: the first quantized variant this machine can serve (the default if it can)."""
    cards: list[dict[str, Any]] = httpx.get(base + "/v1/models").json()["data"]
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


def _print_job(base: str, model: str) -> None:
    variants = httpx.get(base + "/admin/variants").json()["data"]
    for v in variants:
        if f"{v['model']}:{v['variant']}" != model:
            continue
        if v["job"]:
            job = v["job"]
            print(f"    quantization job {job['id']}: {job['state']} in {job['duration_s']} s")
        for r in v["replicas"]:
            if r["state"] == "ready" and r["ready_s"] is not None:
                kernel = v["kernel"]["kernel"]
                print(f"    vLLM replica {r['index']} ({kernel}) ready in {r['ready_s']} s")


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
