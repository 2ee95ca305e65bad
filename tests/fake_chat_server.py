"""A real HTTP server on 127.0.0.1 that speaks the chat-completions protocol, for tests.

It answers `POST .../chat/completions` with scripted captions and injects faults on request.
Each request is matched to its caption (the text between `<caption>` tags in the prompt); the
faults scripted for that caption are served in order, one per request, then normal replies.

Faults: "429" (with Retry-After), "500", "hang" (answers only after `hang_seconds`),
"drop" (closes the connection without answering), "garbage" (a body that is not JSON),
"malformed" (message content that is not JSON), "nine" (9 captions), "empty" (one empty
caption), "duplicate" (two equal captions), "refusal", "length" (cut at the token limit),
"400" (rejects the request), "401" (refuses the key).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_CAPTION = re.compile(r"<caption>\n(.*)\n</caption>", re.DOTALL)
RETRY_AFTER_SECONDS = 1


def scripted_captions(caption: str) -> list[str]:
    """The 10 captions a normal reply holds: colons, quotes and a line break in every one."""
    return [f'Level {k}0%: the "{k}" variant: {caption}\nsecond line: \'quoted\' {k}'
            for k in range(1, 11)]


@dataclass
class RecordedRequest:
    caption: str
    fault: str
    time: float
    authorization: str
    body: dict = field(repr=False)


def _caption_of(body: dict) -> str:
    content = body["messages"][-1]["content"]
    if isinstance(content, list):
        content = next(part["text"] for part in content if part.get("type") == "text")
    match = _CAPTION.search(content)
    return match.group(1) if match else ""


def _completion(body: dict, content: str, finish_reason: str = "stop",
                refusal: str | None = None) -> dict:
    message = {"role": "assistant", "content": content, "refusal": refusal}
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0,
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}}


def _captions_json(captions: list[str]) -> str:
    return json.dumps({"unique_captions": captions})


class FakeChatServer:
    """Start with `with FakeChatServer(faults) as server:`; `server.base_url` is the API root."""

    def __init__(self, faults: dict[str, list[str]] | None = None, delay: float = 0.0,
                 hang_seconds: float = 2.0, max_requests: int = 2000) -> None:
        self.faults = {caption: list(script) for caption, script in (faults or {}).items()}
        self.delay = delay
        self.hang_seconds = hang_seconds
        self.max_requests = max_requests
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> FakeChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def captions_requested(self, since: int = 0) -> list[str]:
        with self._lock:
            return [r.caption for r in self.requests[since:]]

    def _next_fault(self, caption: str) -> str:
        with self._lock:
            if len(self.requests) >= self.max_requests:
                return "500"
            script = self.faults.get(caption)
            return script.pop(0) if script else "ok"

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self.path.endswith("/chat/completions"):
                    self._send_json(404, {"error": {"message": "not found"}})
                    return
                caption = _caption_of(body)
                fault = server._next_fault(caption)
                server._record(RecordedRequest(caption, fault, time.monotonic(),
                                               self.headers.get("Authorization", ""), body))
                time.sleep(server.delay)
                self._answer(fault, caption, body)

            def _answer(self, fault: str, caption: str, body: dict) -> None:
                captions = scripted_captions(caption)
                if fault == "429":
                    self._send_json(429, {"error": {"message": "slow down", "type": "requests",
                                                    "code": "rate_limit_exceeded"}},
                                    {"Retry-After": str(RETRY_AFTER_SECONDS)})
                elif fault in ("400", "401", "500"):
                    self._send_json(int(fault), {"error": {"message": f"fault {fault}"}})
                elif fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                elif fault == "garbage":
                    self._send_raw(200, b"<html>not json</html>", "application/json")
                elif fault == "hang":
                    time.sleep(server.hang_seconds)
                    self._send_completion(body, _captions_json(captions))
                else:
                    self._send_completion(body, *_faulty_content(fault, captions))

            def _send_completion(self, body: dict, content: str, finish_reason: str = "stop",
                                 refusal: str | None = None) -> None:
                self._send_json(200, _completion(body, content, finish_reason, refusal))

            def _send_json(self, status: int, obj: dict,
                           headers: dict[str, str] | None = None) -> None:
                self._send_raw(status, json.dumps(obj).encode(), "application/json", headers)

            def _send_raw(self, status: int, data: bytes, content_type: str,
                          headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (timeout) before the answer came

        return Handler


def _faulty_content(fault: str, captions: list[str]) -> tuple[str, str, str | None]:
    """(content, finish_reason, refusal) of a 200 reply with the given fault, or a normal one."""
    if fault == "malformed":
        return '{"unique_captions": ["only the start', "stop", None
    if fault == "nine":
        return _captions_json(captions[:9]), "stop", None
    if fault == "empty":
        return _captions_json([*captions[:4], "  ", *captions[5:]]), "stop", None
    if fault == "duplicate":
        return _captions_json([*captions[:5], captions[3], *captions[6:]]), "stop", None
    if fault == "refusal":
        return "", "stop", "I cannot help with that."
    if fault == "length":
        return '{"unique_captions": ["cut', "length", None
    return _captions_json(captions), "stop", None


def image_part_is_jpeg(body: dict) -> bool:
    """Whether the request's user message carries a base64 JPEG as an image content part."""
    content = body["messages"][-1]["content"]
    if not isinstance(content, list):
        return False
    urls = [part["image_url"]["url"] for part in content if part.get("type") == "image_url"]
    prefix = "data:image/jpeg;base64,"
    return (len(urls) == 1 and urls[0].startswith(prefix)
            and base64.b64decode(urls[0][len(prefix):])[:3] == b"\xff\xd8\xff")
