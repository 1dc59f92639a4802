"""``quantgate demo``: the whole path once, as a user sees it.

Starts ``quantgate serve`` on the manifest and asks one question a person can judge, with the
official ``openai`` SDK, of a quantized variant (the first request makes the gateway prepare
the model's source, quantize the variant and start vLLM) and of the base model; prints both
answers side by side, a streamed answer with its time to first token, how long each step took
(source import, the variant's build, vLLM ready) and the gateway's metrics for the variant.
Exits 1 when the quantized variant's answer lacks the expected word, or when the gateway
answers a question with an error (``quantgate demo: <status> <message>``). A manifest with
an ``auth`` block is asked with one of its client keys (read from its ``key_env`` variable or
its ``key_file``); admin routes get ``QUANTGATE_ADMIN_KEY`` when it is set.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from serving.manifest import Auth

PROMPT = "What is the capital of France? Answer in one word."
EXPECTED = "Paris"
MAX_TOKENS = 24
TICK_S = 15.0  # while a request waits: what the gateway is doing, this often
QUESTION: dict[str, Any] = {  # greedy, so the answer can be judged
    "messages": [{"role": "user", "content": PROMPT}],
    "max_tokens": MAX_TOKENS,
    "temperature": 0,
}


class DemoFailed(Exception):
    """The demo cannot go on: its one-line reason (exit 1)."""


@dataclass(frozen=True)
class Gateway:
    """The gateway the demo talks to, and the keys its routes need (None: none sent)."""

    url: str
    client_key: str | None = None
    admin_key: str | None = None

    def read(self, path: str, admin: bool = False) -> list[dict[str, Any]]:
        """A list route's ``data`` (``admin``: with the admin key); DemoFailed saying why not."""
        key = self.admin_key if admin else self.client_key
        headers = {"authorization": f"Bearer {key}"} if key else {}
        try:
            answer = httpx.get(self.url + path, headers=headers, timeout=30)
            body = answer.json()
        except httpx.HTTPError as exc:
            raise DemoFailed(f"{path}: no answer ({exc})") from None
        except ValueError:
            body = None
        if answer.status_code == 200 and isinstance(body, dict):
            data = body.get("data")
            if isinstance(data, list):
                return data
        raise DemoFailed(f"{path} answered {answer.status_code}: {_error_text(body, answer)}")


def client_key(auth: Auth | None, environ: Mapping[str, str]) -> str | None:
    """The key the demo asks with: the first of the manifest's client keys it can read, from
    its ``key_env`` variable or its ``key_file`` (None: no ``auth`` block, the API is open).
    ValueError saying what to set when a key's variable is unset (the gateway needs every
    key) or no key can be read (a ``key_sha256`` gives none to send)."""
    if auth is None:
        return None
    unset = [k.key_env for k in auth.keys if k.key_env and not environ.get(k.key_env, "").strip()]
    if unset:
        them = "it" if len(unset) == 1 else "them"
        raise ValueError(
            f"the manifest's auth block reads client keys from {', '.join(unset)}: set {them} "
            "(the demo asks with the first key it can read)"
        )
    for key in auth.keys:
        if key.key_env:
            return environ[key.key_env].strip()
        if key.key_file is not None:
            try:
                secret = key.key_file.read_text(encoding="utf-8").strip()
            except OSError:
                continue
            if secret:
                return secret
    raise ValueError(
        "no client key of the manifest's auth block can be read here (key_sha256 gives none "
        "to send): give one with key_env and set its variable, or with key_file"
    )


def run_demo(manifest: Path, model: str, port: int, gateway: Gateway) -> int:
    """Serve ``manifest`` on ``port`` and ask ``model``; the exit code."""
    try:
        _refuse_busy_port(gateway.url, port)
        server = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", str(manifest), "--port", str(port)],
            start_new_session=True,
        )
        try:
            _wait_healthy(gateway.url, server)
            return _ask_all(gateway, model)
        finally:
            _stop(server)
    except DemoFailed as exc:
        print(f"quantgate demo: {exc}", file=sys.stderr)
        return 1


def _ask_all(gateway: Gateway, model: str) -> int:
    from openai import OpenAI

    model = _pick(gateway, model)
    client = OpenAI(
        base_url=gateway.url + "/v1", api_key=gateway.client_key or "unused", timeout=1800,
        max_retries=0,
    )  # fmt: skip
    print(f"\n>>> {model}: {PROMPT}\n    (first request: prepares the source, builds the "
          "variant, starts vLLM)")  # fmt: skip
    answer = _ask(client, model, gateway)
    base_name = _base_of(gateway, model)
    answers = {model: answer}
    if base_name is not None:
        print(f"\n>>> {base_name}: {PROMPT}  (starts vLLM on the base weights)")
        answers[base_name] = _ask(client, base_name, gateway)
    _stream(client, model)
    _print_side_by_side(answers)
    _print_steps(gateway, model, base_name)
    _print_metrics(gateway, model)
    return _verdict(model, answer)


def _stop(server: subprocess.Popen[bytes]) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)


@contextmanager
def _answered() -> Iterator[None]:
    """The SDK's errors as DemoFailed: ``<status> <message>``, or why no answer came."""
    import openai

    try:
        yield
    except openai.APIStatusError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        message = body.get("message") or exc.message
        raise DemoFailed(f"{exc.status_code} {message}") from None
    except openai.APIConnectionError as exc:
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""
        raise DemoFailed(f"no answer from the gateway: {exc.message}{cause}") from None
    except openai.APIError as exc:
        raise DemoFailed(exc.message) from None


def _error_text(body: object, answer: httpx.Response) -> str:
    """The message of an OpenAI-shaped error body, else the start of the response's text."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return answer.text[:200] or answer.reason_phrase


def _ask(client: Any, model: str, gateway: Gateway) -> str:
    t0 = time.perf_counter()
    with _ticking(gateway, model), _answered():
        reply = client.chat.completions.create(model=model, **QUESTION)
    text = str(reply.choices[0].message.content or "").strip()
    print(f"<<< {text!r}\n    {time.perf_counter() - t0:.1f} s, usage {reply.usage}")
    return text


@contextmanager
def _ticking(gateway: Gateway, model: str, every_s: float = TICK_S) -> Iterator[None]:
    """While a request waits: every ``every_s``, what the gateway is doing and for how long."""
    stop, t0 = threading.Event(), time.perf_counter()

    def tick() -> None:
        while not stop.wait(every_s):
            print(f"    ... {_doing(gateway, model)}, {time.perf_counter() - t0:.0f} s", flush=True)

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _doing(gateway: Gateway, model: str) -> str:
    """``building: job smol:w8a8 quantize (12/30 layers)``-style: state and running job."""
    try:
        cards = gateway.read("/v1/models")
        jobs = gateway.read("/admin/jobs", admin=True)
        state = next((c["quantgate"]["state"] for c in cards if c["id"] == model), "waiting")
        running = [j for j in jobs if j["state"] == "running"]
    except (DemoFailed, KeyError, TypeError):
        return "waiting"
    if not running:
        return str(state)
    job, progress = running[-1], running[-1]["progress"]
    layers = (
        progress["layers_total"]
        and f" ({progress['layers_done']}/{progress['layers_total']} layers)"
    )
    return f"{state}: job {job['model']}:{job['variant']} {job['stage']}{layers or ''}"


def _stream(client: Any, model: str) -> None:
    t0 = time.perf_counter()
    ttft, parts = None, []
    with _answered():
        for chunk in client.chat.completions.create(model=model, stream=True, **QUESTION):
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
    raise DemoFailed(f"port {port} is in use; pass --port with a free one")


def _wait_healthy(base: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise DemoFailed(f"quantgate serve exited with code {server.returncode} (see above)")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise DemoFailed("quantgate serve did not answer /health within 60 s")


def _pick(gateway: Gateway, model: str) -> str:
    """``auto``: the first quantized variant this machine can serve (the default if it can)."""
    cards = gateway.read("/v1/models")
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
        raise DemoFailed("no quantized variant in the manifest can be served on this machine")
    usable.sort(key=lambda c: not c["quantgate"]["default"])
    return str(usable[0]["id"])


def _base_of(gateway: Gateway, model: str) -> str | None:
    """The same model's base-weights variant, to compare answers with (None: it has none)."""
    name = model.partition(":")[0]
    for card in gateway.read("/v1/models"):
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


def _print_steps(gateway: Gateway, model: str, base_name: str | None) -> None:
    print("\n--- how long each step took ---")
    try:
        variants = gateway.read("/admin/variants", admin=True)
    except DemoFailed as exc:
        print(f"  not shown: {exc}")
        return
    for v in variants:
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


def _print_metrics(gateway: Gateway, model: str) -> None:
    name, _, variant = model.partition(":")
    print("\n--- gateway metrics for this variant ---")
    try:
        answer = httpx.get(gateway.url + "/metrics", timeout=30)
    except httpx.HTTPError as exc:
        print(f"  not shown: /metrics: no answer ({exc})")
        return
    if answer.status_code != 200:
        print(f"  not shown: /metrics answered {answer.status_code}")
        return
    wanted = (f'model="{name}"', f'variant="{variant}"')
    for line in answer.text.splitlines():
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
