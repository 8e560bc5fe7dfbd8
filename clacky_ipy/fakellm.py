"""A fake LLM server on loopback: the OpenAI, Anthropic and Gemini HTTP APIs with known token usage.

The demo points a real SDK at it (``OPENAI_BASE_URL``), and the tests point every SDK
they cover at it through its ``base_url``, so that a real library makes a real call and
the numbers that reach the collector can be checked against `USAGE` by hand. It answers
at once with one short text, or, when the request offers tools and holds no tool result
yet, with a tool call (so agent loops make exactly two requests); a Responses call for a
model named ``fail...`` fails. Every response carries the same usage, cache reads and
writes included. Standard library only.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TEXT = "Done."
_IDS = itertools.count(1)

#: Each API's usage for every response, as its provider reports it.
USAGE: dict[str, dict[str, Any]] = {
    "anthropic": {
        "input_tokens": 120,
        "output_tokens": 30,
        "cache_read_input_tokens": 800,
        "cache_creation_input_tokens": 200,
        "cache_creation": {"ephemeral_5m_input_tokens": 150, "ephemeral_1h_input_tokens": 50},
    },
    "chat": {
        "prompt_tokens": 1000,
        "completion_tokens": 50,
        "total_tokens": 1050,
        "prompt_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 100},
        "completion_tokens_details": {"reasoning_tokens": 10},
    },
    # Mistral's API reports no cache details.
    "mistral": {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050},
    "responses": {
        "input_tokens": 1000,
        "input_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 100},
        "output_tokens": 50,
        "output_tokens_details": {"reasoning_tokens": 10},
        "total_tokens": 1050,
    },
    "gemini": {
        "promptTokenCount": 900,
        "cachedContentTokenCount": 400,
        "candidatesTokenCount": 40,
        "thoughtsTokenCount": 12,
        "totalTokenCount": 952,
    },
}

_GEMINI = re.compile(r"/v1(?:beta|alpha)?/models/([^/:]+):(generateContent|streamGenerateContent)")


def _tool(request: dict[str, Any]) -> dict[str, Any] | None:
    """The tool the model calls, when the request offers tools and holds no tool result yet.

    The first tool that needs no argument, else the first one, with `TEXT` for each required argument.
    """
    tools = request.get("tools") or []
    if not tools:
        return None
    text = json.dumps(request.get("messages") or request.get("input") or request.get("contents") or [])
    if '"tool"' in text or "tool_result" in text or "function_call_output" in text:
        return None
    needs = [_required(tool) for tool in tools]
    index = needs.index([]) if [] in needs else 0
    return {"name": _tool_name(tools[index]), "arguments": {name: TEXT for name in needs[index]}}


def _required(tool: dict[str, Any]) -> list[str]:
    function = tool.get("function") or tool
    schema = function.get("parameters") or function.get("input_schema") or {}
    return list(schema.get("required") or [])


def _tool_name(tool: dict[str, Any]) -> str:
    return tool.get("name") or (tool.get("function") or {}).get("name") or "tool"


def chat(request: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat completion (Mistral's API has the same shape)."""
    model = request.get("model") or "gpt-4o-mini"
    tool = _tool(request)
    message: dict[str, Any] = {"role": "assistant", "content": None if tool else TEXT}
    if tool:
        call = {"name": tool["name"], "arguments": json.dumps(tool["arguments"])}
        message["tool_calls"] = [{"id": "call_1", "type": "function", "function": call}]
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if tool else "stop"}],
        "usage": USAGE["mistral" if model.startswith("mistral") else "chat"],
    }


def chat_chunks(request: dict[str, Any]) -> list[dict[str, Any]]:
    """A streamed chat completion; the usage chunk only when ``stream_options.include_usage``."""
    whole = chat(request)
    base = {"id": whole["id"], "object": "chat.completion.chunk", "created": whole["created"], "model": whole["model"]}
    message = whole["choices"][0]["message"]
    delta: dict[str, Any] = {"role": "assistant", "content": message["content"] or ""}
    if message.get("tool_calls"):
        delta["tool_calls"] = [{"index": 0, **message["tool_calls"][0]}]
    finish = whole["choices"][0]["finish_reason"]
    chunks = [
        {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]},
    ]
    if (request.get("stream_options") or {}).get("include_usage"):
        chunks.append({**base, "choices": [], "usage": whole["usage"]})
    return chunks


def response(request: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI Responses API response."""
    tool = _tool(request)
    if tool:
        item = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": tool["name"]}
        item.update(arguments=json.dumps(tool["arguments"]), status="completed")
    else:
        content = [{"type": "output_text", "text": TEXT, "annotations": []}]
        item = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed", "content": content}
    model = request.get("model") or "gpt-4o-mini"
    failed = model.startswith("fail")  # a model named fail... answers a failed response
    return {
        "id": "resp_fake",
        "object": "response",
        "created_at": 1700000000,
        "status": "failed" if failed else "completed",
        "error": {"code": "server_error", "message": "The model failed."} if failed else None,
        "model": model,
        "output": [] if failed else [item],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": USAGE["responses"],
    }


def message(request: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic message."""
    tool = _tool(request)
    if tool:
        content = [{"type": "tool_use", "id": "toolu_1", "name": tool["name"], "input": tool["arguments"]}]
    else:
        content = [{"type": "text", "text": TEXT}]
    return {
        "id": f"msg_fake{next(_IDS)}",
        "type": "message",
        "role": "assistant",
        "model": request.get("model") or "claude-sonnet-4-5",
        "content": content,
        "stop_reason": "tool_use" if tool else "end_turn",
        "stop_sequence": None,
        "usage": USAGE["anthropic"],
    }


def message_events(request: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """An Anthropic message as server-sent events."""
    whole = message(request)
    start = {**whole, "content": [], "stop_reason": None, "usage": {**whole["usage"], "output_tokens": 1}}
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(whole["content"]):
        if block["type"] == "text":
            first, delta = {"type": "text", "text": ""}, {"type": "text_delta", "text": block["text"]}
        else:
            first = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        events += [
            ("content_block_start", {"type": "content_block_start", "index": index, "content_block": first}),
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}),
            ("content_block_stop", {"type": "content_block_stop", "index": index}),
        ]
    end = {"stop_reason": whole["stop_reason"], "stop_sequence": None}
    events.append(("message_delta", {"type": "message_delta", "delta": end, "usage": {"output_tokens": 30}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def gemini(model: str) -> dict[str, Any]:
    """A Gemini generateContent response."""
    candidate = {"content": {"role": "model", "parts": [{"text": TEXT}]}, "finishReason": "STOP", "index": 0}
    return {"candidates": [candidate], "usageMetadata": USAGE["gemini"], "modelVersion": model}


class _Handler(BaseHTTPRequestHandler):
    server: FakeLLM
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: a test's or the demo's output is not the place

    def do_GET(self) -> None:
        self._json(404, {"error": {"type": "not_found_error", "message": "not found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            request = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            request = {}
        path = self.path.split("?", 1)[0]
        self.server.log.append((path, request))
        stream = bool(request.get("stream"))
        if path.endswith("/chat/completions"):
            if stream:
                return self._sse([(None, chunk) for chunk in chat_chunks(request)], done=True)
            return self._json(200, chat(request))
        if path.endswith("/responses"):
            return self._json(200, response(request))
        if path.endswith("/messages/count_tokens"):
            return self._json(200, {"input_tokens": USAGE["anthropic"]["input_tokens"]})
        if path.endswith("/messages"):
            return self._sse(message_events(request)) if stream else self._json(200, message(request))
        found = _GEMINI.search(path)
        if found:
            body = gemini(found.group(1))
            return self._sse([(None, body)]) if found.group(2) == "streamGenerateContent" else self._json(200, body)
        self._json(404, {"error": {"type": "not_found_error", "message": f"no route {path}"}})

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, events: list[tuple[str | None, dict[str, Any]]], done: bool = False) -> None:
        lines = []
        for name, data in events:
            lines.append((f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n")
        if done:
            lines.append("data: [DONE]\n\n")
        data = "".join(lines).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class FakeLLM(ThreadingHTTPServer):
    """The server on 127.0.0.1 (a free port unless given), serving from a daemon thread.

    ``with FakeLLM() as llm:`` starts it; `url` is its base (``http://127.0.0.1:PORT``),
    `openai_url` the OpenAI SDK's ``base_url``; `log` holds each (path, request body).
    """

    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.log: list[tuple[str, dict[str, Any]]] = []
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"

    def start(self) -> FakeLLM:
        self._thread = threading.Thread(target=self.serve_forever, name="clacky-fakellm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
