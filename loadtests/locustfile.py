"""Locust users for an OpenAI-compatible API: the Quantgate gateway, or a vLLM server directly.

Each user sends requests back to back, each one picked by weight from ``--mix``: chat or
text completions, streamed or not, for ``--model`` (``smol`` or ``smol:<variant>``), with its
own API key. Prompts come from a local file, cut or extended to ``--prompt-words`` words.

Locust entries (rows of the CSV and HTML report):

- ``POST <kind>``: the whole request; for streams, until ``data: [DONE]``. A failure is an
  HTTP error, an error body (``{"error": ...}``, also as an SSE event), a stream that ends
  without ``[DONE]`` or breaks, or (with ``ignore_eos``) a stream with no content.
- ``TTFT <kind>``: time to the first content delta, in ms.
- ``TOKENS/S <kind>``: decode speed of one stream, (completion tokens - 1) / (last content
  delta - first content delta). Locust shows it in its "ms" columns: read them as tokens/s.
  Its "size" column is the stream's completion tokens (from the usage event).

They are rows of their own: the "Aggregated" row counts the ``POST`` requests only.
Options: ``add_options`` below, also listed by ``loadtests/run.sh --help`` (Locust's own
``--help`` leaves them out).
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gevent
import requests
from locust import HttpUser, constant, events, stats, task
from locust.env import Environment

KINDS = {  # kind -> (path, stream)
    "chat-stream": ("/v1/chat/completions", True),
    "chat": ("/v1/chat/completions", False),
    "completion-stream": ("/v1/completions", True),
    "completion": ("/v1/completions", False),
}
DEFAULT_MIX = "chat-stream=3,chat=1,completion-stream=1,completion=1"
PROMPTS = Path(__file__).resolve().parent / "prompts.txt"
log = logging.getLogger("quantgate.loadtest")


@events.init_command_line_parser.add_listener
def add_options(parser: Any) -> None:
    parser.add_argument("--model", default="smol", help="model name: smol or smol:<variant>")
    parser.add_argument(
        "--mix", default=DEFAULT_MIX, help=f"kind=weight,...; kinds: {', '.join(KINDS)}"
    )
    parser.add_argument("--prompts-file", default=str(PROMPTS), help="one prompt per line")
    parser.add_argument(
        "--prompt-words", type=int, default=32, help="cut/extend prompts to N words (0: as is)"
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--allow-eos",
        action="store_true",
        help="let answers stop early (default: send vLLM's ignore_eos, answers are max-tokens)",
    )
    parser.add_argument(
        "--api-keys-file", default="", help="one key per line, one per user (default: generated)"
    )
    parser.add_argument("--request-timeout", type=float, default=600, help="read timeout, s")
    parser.add_argument(
        "--warmup-timeout",
        type=float,
        default=900,
        help="before the run, one request with this timeout (s) builds/starts the variant; 0: off",
    )


@dataclass(frozen=True)
class Workload:
    """What every user sends, read once from the options."""

    model: str
    kinds: tuple[str, ...]
    weights: tuple[float, ...]
    prompts: tuple[str, ...]
    prompt_words: int
    max_tokens: int
    ignore_eos: bool
    api_keys: tuple[str, ...]
    timeout: tuple[float, float]

    @classmethod
    def from_options(cls, options: Any) -> Workload:
        mix = parse_mix(options.mix)
        prompts = read_lines(Path(options.prompts_file))
        if not prompts:
            raise SystemExit(f"locustfile: no prompts in {options.prompts_file}")
        keys = read_lines(Path(options.api_keys_file)) if options.api_keys_file else ()
        return cls(
            model=options.model,
            kinds=tuple(mix),
            weights=tuple(mix.values()),
            prompts=prompts,
            prompt_words=options.prompt_words,
            max_tokens=options.max_tokens,
            ignore_eos=not options.allow_eos,
            api_keys=keys,
            timeout=(10.0, options.request_timeout),
        )

    def api_key(self, user: int) -> str:
        return self.api_keys[user % len(self.api_keys)] if self.api_keys else f"sk-load-{user:04d}"

    def prompt(self, rng: random.Random) -> str:
        start = rng.randrange(len(self.prompts))
        if self.prompt_words <= 0:
            return self.prompts[start]
        words: list[str] = []
        for line in itertools.islice(itertools.cycle(self.prompts), start, None):
            words += line.split()
            if len(words) >= self.prompt_words:
                return " ".join(words[: self.prompt_words])
        raise AssertionError("unreachable: the prompts cycle forever")

    def body(self, kind: str, prompt: str) -> dict[str, Any]:
        path, stream = KINDS[kind]
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens}
        if path.endswith("chat/completions"):
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        if self.ignore_eos:
            body["ignore_eos"] = True
        return body


def parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, weight = part.partition("=")
        if kind not in KINDS:
            raise SystemExit(f"locustfile: --mix: unknown kind {kind!r}; kinds: {list(KINDS)}")
        try:
            mix[kind] = float(weight or 1)
        except ValueError:
            raise SystemExit(f"locustfile: --mix: bad weight in {part!r}") from None
    if not mix or min(mix.values()) < 0 or sum(mix.values()) <= 0:
        raise SystemExit(f"locustfile: --mix {text!r}: give kind=weight pairs, weights >= 0")
    return mix


def read_lines(path: Path) -> tuple[str, ...]:
    """Non-empty lines that are not ``#`` comments."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


@dataclass
class Stream:
    """What one SSE response said: its content deltas' times, usage, [DONE], errors."""

    chat: bool
    token_times: list[float] = field(default_factory=list)
    usage_tokens: int | None = None
    done: bool = False
    error: str | None = None
    nbytes: int = 0

    def read(self, lines: Iterable[bytes]) -> None:
        for raw in lines:
            self.nbytes += len(raw) + 1
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue  # blank separators, comments, event:/id: fields
            data = line.removeprefix("data:").strip()
            if data == "[DONE]":
                self.done = True
                return
            self.event(data)

    def event(self, data: str) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            self.error = self.error or f"SSE data is not JSON: {data[:200]!r}"
            return
        if not isinstance(event, dict):
            self.error = self.error or f"SSE data is not an object: {data[:200]!r}"
        elif "error" in event:
            self.error = self.error or f"error event: {error_message(event)}"
        else:
            for choice in event.get("choices") or []:
                if added_text(choice, self.chat):
                    self.token_times.append(time.perf_counter())
            if event.get("usage"):
                self.usage_tokens = int(event["usage"].get("completion_tokens") or 0)

    def failure(self, ignore_eos: bool) -> str | None:
        if self.error:
            return self.error
        if not self.done:
            return "stream ended without [DONE]"
        if ignore_eos and not self.token_times:
            return "stream had no content although ignore_eos was sent"
        return None

    @property
    def tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else len(self.token_times)

    def tokens_per_s(self) -> float | None:
        """Decode speed after the first token; None with fewer than two content deltas."""
        if len(self.token_times) < 2 or self.tokens < 2:
            return None
        span = self.token_times[-1] - self.token_times[0]
        return (self.tokens - 1) / span if span > 0 else None


def added_text(choice: dict[str, Any], chat: bool) -> str:
    """The text one choice of a stream chunk adds: chat puts it in ``delta.content``."""
    text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
    return text or ""


def error_message(body: dict[str, Any]) -> str:
    error = body.get("error")
    if isinstance(error, dict):
        return f"{error.get('code') or error.get('type')}: {error.get('message')}"
    return str(error)[:300]


def http_error(response: requests.Response) -> str:
    if getattr(response, "error", None):  # Locust's stand-in when no response came
        return f"request failed: {response.error}"  # type: ignore[attr-defined]
    try:
        body = response.json()
        detail = error_message(body) if isinstance(body, dict) else response.text[:300]
    except ValueError:
        detail = response.text[:300]
    return f"HTTP {response.status_code}: {detail}"


def completion_error(response: requests.Response) -> str | None:
    """Why a non-streamed answer is a failure, or None."""
    if response.status_code != 200:
        return http_error(response)
    try:
        body = response.json()
    except ValueError:
        return f"body is not JSON: {response.text[:200]!r}"
    if not isinstance(body, dict):
        return "body is not a JSON object"
    if "error" in body:
        return f"error body: {error_message(body)}"
    if not body.get("choices"):
        return "answer has no choices"
    return None


class OpenAIUser(HttpUser):
    """One client with its own API key, sending one request after another."""

    wait_time = constant(0)
    workload: ClassVar[Workload]  # set from the options when Locust starts (on_init below)
    _ids: ClassVar[itertools.count[int]] = itertools.count()

    def on_start(self) -> None:
        self.index = next(self._ids)
        self.rng = random.Random(self.index)
        self.headers = {"Authorization": f"Bearer {self.workload.api_key(self.index)}"}

    @task
    def request(self) -> None:
        w = self.workload
        kind = self.rng.choices(w.kinds, w.weights)[0]
        path, stream = KINDS[kind]
        body = w.body(kind, w.prompt(self.rng))
        if stream:
            self.stream(kind, path, body)
        else:
            self.complete(kind, path, body)

    def complete(self, kind: str, path: str, body: dict[str, Any]) -> None:
        with self.client.post(
            path,
            json=body,
            headers=self.headers,
            name=kind,
            timeout=self.workload.timeout,
            catch_response=True,
        ) as response:
            error = completion_error(response)
            if error:
                response.failure(error)
            else:
                response.success()

    def stream(self, kind: str, path: str, body: dict[str, Any]) -> None:
        start_time, start = time.time(), time.perf_counter()
        with self.client.post(
            path,
            json=body,
            headers={**self.headers, "Accept-Encoding": "identity"},
            name=kind,
            timeout=self.workload.timeout,
            stream=True,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(http_error(response))
                return
            result = Stream(chat=path.endswith("chat/completions"))
            try:
                result.read(response.iter_lines())
            except requests.RequestException as exc:
                result.error = f"stream broke: {type(exc).__name__}: {exc}"
            response.request_meta["response_time"] = (time.perf_counter() - start) * 1000
            response.request_meta["response_length"] = result.nbytes
            error = result.failure(self.workload.ignore_eos)
            if error:
                response.failure(error)
                return
            response.success()
        if result.token_times:
            self.record("TTFT", kind, (result.token_times[0] - start) * 1000, 0, start_time)
        speed = result.tokens_per_s()
        if speed is not None:
            self.record("TOKENS/S", kind, speed, result.tokens, start_time)

    def record(self, entry: str, kind: str, value: float, size: int, start_time: float) -> None:
        """An entry of our own in Locust's statistics: ``value`` goes in its ms columns. It is
        logged on its own row only, not as a request: the "Aggregated" row counts requests."""
        del start_time  # the row's times are when it is logged, as Locust's own
        self.environment.stats.get(kind, entry).log(value, size)


@events.init.add_listener
def on_init(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:  # used as a library: the caller sets OpenAIUser.workload
        return
    OpenAIUser.workload = Workload.from_options(options)
    if options.warmup_timeout > 0 and environment.host:
        warm_up(environment.host, OpenAIUser.workload, options.warmup_timeout)


@events.quitting.add_listener
def let_csv_catch_up(environment: Environment, **_: Any) -> None:
    """Locust writes its CSV files every second and not at the end (locustio/locust#1806):
    wait one more pass so they hold the requests that finished during --stop-timeout."""
    if environment.parsed_options and environment.parsed_options.csv_prefix:
        gevent.sleep(stats.CSV_STATS_INTERVAL_SEC + 0.5)


def _say_while_waiting(host: str, model: str, headers: dict[str, str], t0: float) -> None:
    """Every 15 s of the warm-up: the variant's state as the gateway lists it."""
    while True:
        gevent.sleep(15)
        state = "?"
        try:
            cards = requests.get(host.rstrip("/") + "/v1/models", headers=headers, timeout=5)
            found = [c["quantgate"]["state"] for c in cards.json()["data"] if c["id"] == model]
            state = found[0] if found else "not listed"
        except (requests.RequestException, ValueError, KeyError, TypeError):
            pass  # a plain vLLM server has no states; the wait goes on
        log.info("warm-up: %s is %s after %.0f s", model, state, time.perf_counter() - t0)


def warm_up(host: str, workload: Workload, timeout: float) -> None:
    """One small request outside the statistics: the first one may build the variant."""
    log.info("warm-up: one request for %s (builds and starts it if needed)", workload.model)
    message = {"role": "user", "content": workload.prompts[0]}
    headers = {"Authorization": f"Bearer {workload.api_key(0)}"}
    t0 = time.perf_counter()
    ticker = gevent.spawn(_say_while_waiting, host, workload.model, headers, t0)
    try:
        response = requests.post(
            host.rstrip("/") + "/v1/chat/completions",
            json={"model": workload.model, "max_tokens": 1, "messages": [message]},
            headers=headers,
            timeout=(10, timeout),
        )
    except requests.RequestException as exc:
        raise SystemExit(f"locustfile: warm-up request to {host} failed: {exc}") from None
    finally:
        ticker.kill()
    error = completion_error(response)
    if error:
        raise SystemExit(f"locustfile: warm-up request for {workload.model} failed: {error}")
    log.info("warm-up: %s answered in %.1f s", workload.model, time.perf_counter() - t0)
