"""One caption's request to any OpenAI-compatible chat-completions server, with retries.

Two budgets, because they fail for different reasons: `max_retries` transport faults (429, 5xx,
timeouts, lost connections), each followed by an exponential backoff with jitter that honours
Retry-After; and `max_attempts` replies that arrived but are unusable (unparsable, not 10
captions, empty, repeated or cut ones). Faults that no retry can cure (a refused key, an
unknown model, an exhausted quota) stop the whole run. The SDK's own retries are off, so every
request sent is one we counted.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import random
import time
from dataclasses import dataclass

import openai
import pydantic
from dotenv import dotenv_values, find_dotenv
from openai import AsyncOpenAI

from platonic.captions.checks import ReplyProblem, clean_reply
from platonic.captions.prompt import UniqueCaptions, build_messages
from platonic.errors import PlatonicError

MAX_RETRY_AFTER = 300.0
REPLY_EXCERPT_CHARS = 2000
RETRYABLE_STATUS = {408, 409, 429}
FATAL_STATUS = {401: "the server refused the API key (401)",
                403: "the API key may not use this model or endpoint (403)",
                404: "the server does not know this model or endpoint (404)"}


class FatalRequestError(PlatonicError):
    """A fault that every further request would meet too; the run stops, keeping what is done."""


@dataclass(frozen=True)
class RequestPolicy:
    model: str = "gpt-4o-mini"
    timeout: float = 60.0
    max_attempts: int = 5
    max_retries: int = 8
    backoff: float = 1.0
    max_backoff: float = 60.0
    temperature: float | None = None
    image_detail: str = "auto"


@dataclass(frozen=True)
class Finished:
    captions: tuple[str, ...]


@dataclass(frozen=True)
class Failed:
    reason: str
    attempts: int
    last_reply: str | None = None


class RateLimiter:
    """Spaces request starts to at most `rpm` a minute; `hold` pauses all workers (429s)."""

    def __init__(self, rpm: float | None = None) -> None:
        self.interval = 60.0 / rpm if rpm else 0.0
        self._next_start = 0.0
        self._not_before = 0.0

    def hold(self, seconds: float) -> None:
        self._not_before = max(self._not_before, time.monotonic() + seconds)

    async def wait(self) -> None:
        while True:
            now = time.monotonic()
            start = max(now, self._next_start, self._not_before)
            if start <= now:
                self._next_start = now + self.interval
                return
            await asyncio.sleep(start - now)


def _setting(name: str, dotenv: dict[str, str | None]) -> str | None:
    value = os.environ.get(name) or dotenv.get(name)
    return value.strip() if value and value.strip() else None


def resolve_endpoint(base_url: str | None) -> tuple[str, str | None]:
    """(API key, base URL) from the arguments, the environment or a `.env` file found from cwd up.

    The environment wins over `.env`. A `--base_url` server (vLLM, Ollama, llama.cpp) usually
    takes any key, so there a missing key is replaced by a placeholder.
    """
    dotenv = dotenv_values(find_dotenv(usecwd=True)) if find_dotenv(usecwd=True) else {}
    base_url = base_url or _setting("OPENAI_BASE_URL", dotenv)
    key = _setting("OPENAI_API_KEY", dotenv)
    if key is None and base_url is None:
        raise PlatonicError("no API key: set OPENAI_API_KEY or put it in a .env file "
                            "(copy .env.sample); give --base_url for a local server")
    return key or "not-needed", base_url


def make_client(api_key: str, base_url: str | None, timeout: float) -> AsyncOpenAI:
    """An async client whose own retries are off (we retry, and count, ourselves)."""
    kwargs = {"base_url": base_url} if base_url else {}
    return AsyncOpenAI(api_key=api_key, max_retries=0, timeout=timeout, **kwargs)


def retry_after_seconds(err: Exception) -> float | None:
    """The server's Retry-After (ms, seconds or HTTP date), if the error carries one."""
    response = getattr(err, "response", None)
    headers = getattr(response, "headers", None) or {}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            date = email.utils.parsedate_tz(value)
            if date is not None:
                return max(0.0, email.utils.mktime_tz(date) - time.time())
    return None


def backoff_delay(retry: int, policy: RequestPolicy) -> float:
    """Exponential backoff with jitter: half to all of `backoff * 2**(retry-1)`, capped."""
    return min(policy.max_backoff, policy.backoff * 2 ** (retry - 1)) * random.uniform(0.5, 1.0)


def transport_fault(err: Exception) -> str | None:
    """A short description when `err` is worth retrying; None when it is not.

    Raises `FatalRequestError` for faults that no request of this run could get past.
    """
    if isinstance(err, openai.APITimeoutError):
        return "request timed out"
    if isinstance(err, openai.APIConnectionError):
        return "connection failed"
    if not isinstance(err, openai.APIStatusError):
        return None
    status = err.status_code
    if status == 429 and err.code == "insufficient_quota":
        raise FatalRequestError("the API account has no quota left (429 insufficient_quota)")
    if status in FATAL_STATUS:
        raise FatalRequestError(FATAL_STATUS[status])
    if status in RETRYABLE_STATUS or status >= 500:
        return f"HTTP {status}"
    return None


def _excerpt(text: str | None) -> str | None:
    return None if text is None else text[:REPLY_EXCERPT_CHARS]


class CaptionRequester:
    """Asks one server for the 10 uniqueness levels of captions, within a request policy."""

    def __init__(self, client: AsyncOpenAI, policy: RequestPolicy,
                 limiter: RateLimiter | None = None) -> None:
        self.client = client
        self.policy = policy
        self.limiter = limiter or RateLimiter()
        self.sent = 0

    async def _send(self, caption: str, image_url: str | None) -> tuple[str, ...]:
        """One request; its usable captions, or `ReplyProblem` (with the reply kept)."""
        await self.limiter.wait()
        extra = {} if self.policy.temperature is None else {"temperature": self.policy.temperature}
        self.sent += 1
        try:
            completion = await self.client.chat.completions.parse(
                model=self.policy.model, response_format=UniqueCaptions,
                messages=build_messages(caption, image_url, self.policy.image_detail), **extra)
        except json.JSONDecodeError as err:
            raise ReplyProblem("the response body is not JSON", err.doc) from err
        except pydantic.ValidationError as err:
            raise ReplyProblem("unparsable reply: not the JSON schema asked for",
                               _invalid_input(err)) from err
        except openai.LengthFinishReasonError as err:
            raise ReplyProblem("reply cut at the token limit", _content(err.completion)) from err
        except openai.ContentFilterFinishReasonError as err:
            raise ReplyProblem("reply stopped by the content filter") from err
        message = completion.choices[0].message if completion.choices else None
        if message is None or message.parsed is None:
            refusal = message.refusal if message else None
            raise ReplyProblem(f"model refused: {refusal}" if refusal else "reply holds no captions",
                               _content(completion))
        try:
            return clean_reply(message.parsed.unique_captions, caption)
        except ReplyProblem as problem:
            problem.reply = message.content
            raise

    async def captions_for(self, caption: str, image_url: str | None = None) -> Finished | Failed:
        """The captions for `caption`, retrying within the policy; `Failed` says why not."""
        attempts = retries = 0
        reason, last_reply = "", None
        while True:
            try:
                return Finished(await self._send(caption, image_url))
            except ReplyProblem as problem:
                attempts += 1
                reason, last_reply = str(problem), _excerpt(problem.reply)
                if attempts >= self.policy.max_attempts:
                    return Failed(f"{reason} (after {attempts} replies)", attempts + retries,
                                  last_reply)
            except openai.APIError as err:
                fault = transport_fault(err)
                if fault is None:
                    status = getattr(err, "status_code", "?")
                    return Failed(f"server rejected the request (HTTP {status}): "
                                  f"{err.message[:300]}", attempts + retries + 1, last_reply)
                retries += 1
                if retries > self.policy.max_retries:
                    return Failed(f"gave up after {retries} transport faults, the last: {fault}",
                                  attempts + retries, last_reply)
                await self._wait_before_retry(err, retries)

    async def _wait_before_retry(self, err: Exception, retry: int) -> None:
        delay = backoff_delay(retry, self.policy)
        retry_after = retry_after_seconds(err)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
            self.limiter.hold(delay)
        await asyncio.sleep(delay)


def _content(completion: object) -> str | None:
    choices = getattr(completion, "choices", None)
    return choices[0].message.content if choices else None


def _invalid_input(err: pydantic.ValidationError) -> str | None:
    errors = err.errors()
    return str(errors[0].get("input")) if errors else None
