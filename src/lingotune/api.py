"""One small client for OpenAI-compatible chat endpoints: POST {base_url}/chat/completions, with urllib.

Used by `inference.ApiModel` (an API model's answers, `lingotune eval --api-model`) and by the LLM judge
(`lingotune judge --judge llm`) and `data/translate.HTTPTranslator`.

- Greedy by default (temperature 0); `max_tokens` is the reply's budget.
- Retries: a timeout, a refused or dropped connection, HTTP 429 and HTTP 5xx are retried `retries` times,
  after `backoff * 2**attempt` seconds (1, 2, 4 s with the defaults); then one clear line (`ApiError`).
  Any other HTTP status (400, 401, 404), an answer that is not JSON or has no choices[0].message.content
  fails at once: retrying would not change it. (A server's Retry-After header is not read.)
- The API key: read from an environment variable (`api_key_from_env`), kept on the client, sent only in
  the Authorization header. It is blanked out ("***") of every error message, as servers echo it back; it is
  not part of `identity` (what caches and results record about the endpoint), so no file ever holds it.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request

from lingotune.errors import UserError

DEFAULT_BACKOFF = 1.0  # seconds before the first retry; doubled for each further one (tests set it to 0)
RETRY_STATUS = (429, 500, 502, 503, 504)


class ApiError(UserError, RuntimeError):
    """The endpoint failed (after retries where that may help); one line naming the URL and why, no key."""


def api_key_from_env(var: str | None, default_var: str = "OPENAI_API_KEY") -> str | None:
    """The key in environment variable `var`; a one-line error when `var` is named but unset or empty.

    Without `var`, `default_var` is read if set (a local server usually needs no key)."""
    if var is None:
        return os.environ.get(default_var) or None
    key = os.environ.get(var)
    if not key:
        raise ApiError(f"option --api-key-env: environment variable {var!r} is not set")
    return key


class _Retryable(Exception):
    """One attempt failed in a way a later attempt may not (timeout, connection, 429, 5xx)."""


class ChatClient:
    """`chat(messages, max_tokens) -> reply text` against one model of one endpoint."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 3, backoff: float | None = None, temperature: float = 0.0):
        if not base_url.startswith(("http://", "https://")):
            raise ApiError(f"option --base-url: {base_url!r} is not an http(s) URL")
        self.base_url, self.model = base_url.rstrip("/"), model
        self._key = api_key
        self.timeout, self.retries, self.backoff, self.temperature = timeout, max(0, retries), backoff, temperature

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    @property
    def identity(self) -> dict:
        """What identifies this model's answers (for caches and results): endpoint and model, never the key."""
        return {"kind": "api", "base_url": self.base_url, "model": self.model}

    def chat(self, messages: list[dict], max_tokens: int) -> str:
        """The reply to one conversation; ApiError (one line, no key) once retries are spent."""
        body = json.dumps({"model": self.model, "messages": messages, "max_tokens": int(max_tokens),
                           "temperature": self.temperature}, ensure_ascii=False).encode("utf-8")
        attempts = self.retries + 1
        for attempt in range(attempts):
            try:
                return self._reply(self._post(body))
            except _Retryable as e:
                if attempt + 1 == attempts:
                    raise self._error(f"{self.url}: {e} (gave up after {attempts} attempts)") from None
                base = DEFAULT_BACKOFF if self.backoff is None else self.backoff
                time.sleep(base * 2 ** attempt)
        raise AssertionError("unreachable")

    def _post(self, body: bytes) -> bytes:
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as e:
            if e.code in RETRY_STATUS:
                raise _Retryable(f"HTTP {e.code} {e.reason}") from None
            raise self._error(f"{self.url}: HTTP {e.code} {e.reason}") from None
        except TimeoutError:
            raise _Retryable(f"timed out after {self.timeout:g} s") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise _Retryable(f"timed out after {self.timeout:g} s") from None
            raise _Retryable(f"cannot connect ({e.reason})") from None
        except (OSError, http.client.HTTPException) as e:  # reset or dropped mid-answer
            raise _Retryable(f"connection failed ({e})") from None

    def _reply(self, raw: bytes) -> str:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise self._error(f"{self.url}: the answer is not JSON") from None
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise self._error(f"{self.url}: the answer has no choices[0].message.content")
        return content

    def _error(self, message: str) -> ApiError:
        """A one-line error with the API key blanked out."""
        if self._key:
            message = message.replace(self._key, "***")
        return ApiError(" ".join(message.split()))

    def __repr__(self) -> str:  # never the key
        return f"ChatClient({self.base_url!r}, {self.model!r})"
