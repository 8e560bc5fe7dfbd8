"""What an agent's result says: model, provider, tokens, requests, cost and status, read by shape.

Each major Python agent/LLM SDK keeps its metrics in its own place (the README's
"Agent metrics" table); this module reads them by attribute and key names, never by
importing an SDK, and turns them into the task event's keys with the gem's meanings:
``prompt_tokens`` is the input including cache reads and excluding cache writes,
``completion_tokens`` the output including reasoning, ``cache_total_requests`` the LLM
requests made and ``cache_hit_requests`` those with a cache read. It runs on the worker
thread and never raises: whatever a user's object raises, that key is left out.
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Mapping
from typing import Any

from . import payload

#: At most this many items of a list are read (the last ones): a result, not a data set.
MAX_ITEMS = 1000
_DEPTH = 3

#: An SDK-reported error kind is sent only when it reads like a class or code name.
_KIND = re.compile(r"[a-z][a-z0-9_]{0,47}")
_MISSING = object()

#: The top-level package of a result's class -> the provider it speaks to, when the result says none.
_LIBRARY_PROVIDER = {
    "anthropic": "anthropic",
    "claude_agent_sdk": "anthropic",
    "openai": "openai",
    "mistralai": "mistral",
    "google": "google",
}

#: Packages whose results with a usage are one LLM call's response (not an agent run's).
_RESPONSE_LIBRARIES = ("anthropic.", "openai.", "mistralai.", "google.genai.")

#: claude-agent-sdk's ``model_usage[m]["provider"]`` words that mean Anthropic's own API.
_FIRST_PARTY = ("firstparty", "anthropic")


class Runs(tuple):
    """Results added one by one (`track()`'s ``t.add``): each is a run of its own, and they are summed."""

    __slots__ = ()


class Run:
    """What one result says, before the payload: None is "not said"."""

    __slots__ = (
        "completion",
        "cost",
        "cost_source",
        "duration_ms",
        "error_kind",
        "guess",
        "hits",
        "iterations",
        "model",
        "prompt",
        "provider",
        "read",
        "requests",
        "status",
        "write",
        "write_1h",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, None)

    @property
    def has_tokens(self) -> bool:
        return self.prompt is not None or self.completion is not None


def _stop(error: BaseException) -> None:
    """Re-raise what must go on (`payload._propagates`); anything else was the value's failure."""
    if payload._propagates(error):
        raise error


def _has(obj: Any, name: str) -> bool:
    """Whether `obj` has the key (a mapping) or attribute `name`; never raises."""
    try:
        if type(obj) is dict or isinstance(obj, Mapping):  # a dict first: the ABC check costs more
            return name in obj
        return getattr(obj, name, _MISSING) is not _MISSING
    except BaseException as exc:
        _stop(exc)
        return False


def _get(obj: Any, name: str) -> Any:
    """``obj[name]`` for a mapping, else ``obj.name``; None when absent or when reading it raises."""
    if obj is None:
        return None
    try:
        if type(obj) is dict or isinstance(obj, Mapping):
            return obj.get(name)
        return getattr(obj, name, None)
    except BaseException as exc:
        _stop(exc)
        return None


def _path(obj: Any, *names: str) -> Any:
    for name in names:
        obj = _get(obj, name)
    return obj


def _count(value: Any) -> int | float | None:
    """A token or request count: a non-negative finite number within 64 bits, else None."""
    try:
        return payload.number("prompt_tokens", value)
    except BaseException as exc:
        _stop(exc)
        return None


def _money(value: Any) -> float | None:
    """A cost in USD (a float, an int or a ``Decimal``), else None."""
    try:
        if isinstance(value, decimal.Decimal):
            value = decimal.Decimal.__float__(value)
        return payload.number("cost_usd", value)
    except BaseException as exc:
        _stop(exc)
        return None


def _text(value: Any) -> str | None:
    try:
        return str.__str__(value) if isinstance(value, str) and str.__len__(value) else None
    except BaseException as exc:
        _stop(exc)
        return None


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _add(*values: Any) -> Any:
    """The sum of the values that were said; None when none was."""
    said = [v for v in values if v is not None]
    return sum(said) if said else None


def _provider(word: Any) -> str | None:
    word = _text(word)
    if word is None:
        return None
    word = word.strip().lower()
    return "anthropic" if word in _FIRST_PARTY else (word or None)


def _library(obj: Any) -> str | None:
    """The provider the library of `obj`'s class speaks to (a guess, used when nothing else says)."""
    try:
        module = type(obj).__module__
        if not isinstance(module, str):
            return None
        top = str.__str__(module).split(".", 1)[0]
        if top == "google" and not module.startswith("google.genai"):
            return None
        return _LIBRARY_PROVIDER.get(top)
    except BaseException as exc:
        _stop(exc)
        return None


def _an_llm_response(obj: Any) -> bool:
    """An LLM client library's response object: read as one call, without probing every other shape
    first (each missing attribute a pydantic model is asked for raises and catches an AttributeError)."""
    try:
        module = type(obj).__module__
        return isinstance(module, str) and str.startswith(module, _RESPONSE_LIBRARIES)
    except BaseException as exc:
        _stop(exc)
        return False


# -- tokens -------------------------------------------------------------------------------
def _tokens(usage: Any, run: Run) -> bool:
    """Read a usage object or mapping of any SDK into `run`'s token fields; False when there is none.

    Anthropic-style usage (``input_tokens`` beside ``cache_read_input_tokens``) leaves the
    cache out of its input: reads are added. Every other SDK's input already holds the
    cache: writes are taken out, reads are never added again.
    """
    if usage is None:
        return False
    read = write = None
    if _has(usage, "prompt_tokens"):  # OpenAI chat, Mistral, litellm, crewai
        details = _get(usage, "prompt_tokens_details")
        prompt = _count(_get(usage, "prompt_tokens"))
        read = _first(
            _count(_get(details, "cached_tokens")),
            _count(_get(usage, "cache_read_input_tokens")),
            _count(_get(usage, "cached_prompt_tokens")),
        )
        write = _first(
            _count(_get(details, "cache_write_tokens")),
            _count(_get(usage, "cache_creation_input_tokens")),
            _count(_get(usage, "cache_creation_tokens")),
        )
        completion = _count(_get(usage, "completion_tokens"))
    elif _has(usage, "prompt_token_count"):  # google-genai: thoughts are output, not in candidates
        prompt = _count(_get(usage, "prompt_token_count"))
        read = _count(_get(usage, "cached_content_token_count"))
        completion = _add(_count(_get(usage, "candidates_token_count")), _count(_get(usage, "thoughts_token_count")))
    elif _has(usage, "cache_read_input_tokens") or _has(usage, "cache_creation_input_tokens"):  # Anthropic
        read = _count(_get(usage, "cache_read_input_tokens"))
        split = _get(usage, "cache_creation")
        write = _count(_get(usage, "cache_creation_input_tokens")) or _ephemeral(split, write)
        run.write_1h = _count(_get(split, "ephemeral_1h_input_tokens"))
        prompt = _count(_get(usage, "input_tokens"))
        prompt = None if prompt is None else prompt + (read or 0)
        completion = _count(_get(usage, "output_tokens"))
        return _said(run, prompt, completion, read, write)
    else:  # OpenAI Responses, openai-agents, LangChain, pydantic-ai, smolagents
        prompt = _count(_get(usage, "input_tokens"))
        details = _first(_get(usage, "input_tokens_details"), _get(usage, "input_token_details"))
        read = _first(
            _count(_get(details, "cached_tokens")),
            _count(_get(details, "cache_read")),
            _count(_get(usage, "cache_read_tokens")),
        )
        write = _first(_count(_get(details, "cache_write_tokens")), _count(_get(usage, "cache_write_tokens")))
        if write is None:
            write = _count(_get(details, "cache_creation")) or _ephemeral(details, None)
        run.write_1h = _count(_get(details, "ephemeral_1h_input_tokens"))
        completion = _count(_get(usage, "output_tokens"))
    if prompt is not None and write and prompt >= write:
        prompt -= write
    return _said(run, prompt, completion, read, write)


def _said(run: Run, prompt: Any, completion: Any, read: Any, write: Any) -> bool:
    """Keep the counts, unless input and output are both zero or absent: no call reads nothing and
    says nothing, so those zeros mean "not counted" (openai-agents streamed without usage reports them)."""
    if not prompt and not completion:
        run.write_1h = None
        return False
    run.prompt, run.completion, run.read, run.write = prompt, completion, read, write
    return True


def _ephemeral(split: Any, default: Any) -> Any:
    """Cache writes given only by lifetime (Anthropic's ``cache_creation``, LangChain's details)."""
    parts = _add(_count(_get(split, "ephemeral_5m_input_tokens")), _count(_get(split, "ephemeral_1h_input_tokens")))
    return default if parts is None else parts


def _one_request(run: Run, read_usage: bool) -> Run:
    """A single LLM call: one iteration and one request, a hit when it read the cache."""
    run.iterations = run.requests = 1
    if read_usage:
        run.hits = 1 if run.read else 0
    return run


def _aggregate(run: Run, requests: Any) -> Run:
    """A run's summed usage over `requests` calls: hits are known only when they cannot be otherwise."""
    requests = _count(requests)
    run.iterations = run.requests = requests
    if requests is not None and run.has_tokens:
        if not run.read:
            run.hits = 0
        elif requests == 1:
            run.hits = 1
    return run


# -- each SDK's result ----------------------------------------------------------------------
def _claude(result: Any, model: str | None = None) -> Run:
    """claude-agent-sdk's ``ResultMessage``: Anthropic usage, cost, turns, ``is_error``."""
    run = Run()
    _tokens(_get(result, "usage"), run)
    _aggregate(run, _get(result, "num_turns"))
    run.cost = _money(_get(result, "total_cost_usd"))
    run.cost_source = "api" if run.cost is not None else None
    run.duration_ms = payload.number("duration_ms", _count(_get(result, "duration_ms")))
    per_model = _get(result, "model_usage")
    names: list[str] = []
    try:
        if isinstance(per_model, Mapping):
            names = [name for name in list(per_model)[:MAX_ITEMS] if _text(name)]
    except BaseException as exc:
        _stop(exc)
    if model is None and names:  # the one that cost most is the run's main model
        model = max(names, key=lambda name: _money(_get(_get(per_model, name), "costUSD")) or 0)
    run.model = model
    if model is not None:
        run.provider = _provider(_get(_get(per_model, model), "provider"))
    run.guess = "anthropic"
    if _get(result, "is_error") is True:
        run.status = "error"
        subtype = _text(_get(result, "subtype"))
        run.error_kind = (
            subtype if subtype and subtype.startswith("error") and _KIND.fullmatch(subtype) else "api_error"
        )
    return run


def _claude_message(obj: Any) -> str:
    """ "result", "model" (an AssistantMessage or the init SystemMessage) or "" for a claude-agent-sdk message."""
    if _has(obj, "num_turns") and _has(obj, "is_error") and _has(obj, "session_id"):
        return "result"
    if _has(obj, "parent_tool_use_id") and _has(obj, "content") and _text(_get(obj, "model")):
        return "model"
    if _text(_get(obj, "subtype")) == "init" and _text(_get(_get(obj, "data"), "model")):
        return "model"
    return ""


def _claude_model(obj: Any) -> str | None:
    return _text(_get(obj, "model")) or _text(_get(_get(obj, "data"), "model"))


def _openai_agents(result: Any) -> Run:
    """openai-agents' ``RunResult``: the run context's usage, the last agent's model."""
    usage = _path(result, "context_wrapper", "usage")
    run = Run()
    _tokens(usage, run)
    _aggregate(run, _get(usage, "requests"))
    entries = _get(usage, "request_usage_entries")
    if isinstance(entries, list) and entries and run.requests == len(entries):
        run.hits = sum(
            1 for entry in entries[:MAX_ITEMS] if _count(_path(entry, "input_tokens_details", "cached_tokens"))
        )
    model = _path(result, "last_agent", "model")
    name = _text(model)
    if name is None:
        name = _text(_get(model, "model"))
        module = type(model).__module__ if model is not None else ""
        run.guess = "openai" if isinstance(module, str) and "openai" in module else None
    elif "/" not in name:  # a plain name goes to OpenAI; "litellm/..." names another provider
        run.guess = "openai"
    run.model = name
    return run


def _pydantic_ai(result: Any) -> Run:
    """pydantic-ai's ``AgentRunResult``: its ``usage`` (a property; a method before), the last response."""
    usage = _get(result, "usage")
    if usage is not None and not _has(usage, "input_tokens") and callable(usage):
        usage = usage()
    run = Run()
    _tokens(usage, run)
    _aggregate(run, _get(usage, "requests"))
    run.cost = _money(_get(usage, "cost"))
    run.cost_source = "api" if run.cost is not None else None
    messages = _get(result, "all_messages")
    messages = messages() if callable(messages) else None
    if isinstance(messages, list):
        responses = [m for m in messages[-MAX_ITEMS:] if _text(_get(m, "kind")) == "response"]
        if responses and len(responses) == run.requests:
            run.hits = sum(1 for m in responses if _count(_path(m, "usage", "cache_read_tokens")))
        if responses:
            last = responses[-1]
            run.model = _text(_get(last, "model_name"))
            run.provider = _provider(_get(last, "provider_name"))
    return run


def _steps(result: Any) -> Run:
    """smolagents' ``RunResult`` (``state``, ``steps``) and crewai's ``CrewOutput`` (``token_usage``)."""
    usage = _get(result, "token_usage")
    run = Run()
    _tokens(usage, run)
    requests = _get(usage, "successful_requests")
    steps = _get(result, "steps")
    if requests is None and isinstance(steps, list):
        requests = sum(1 for step in steps[-MAX_ITEMS:] if _get(step, "token_usage") is not None)
    _aggregate(run, requests)
    if isinstance(steps, list):  # smolagents keeps each step's raw provider response
        run.model = next((m for m in map(_step_model, reversed(steps[-MAX_ITEMS:])) if m), None)
    if _text(_get(result, "state")) == "max_steps_error":
        run.status, run.error_kind = "error", "max_steps_error"
    return run


def _step_model(step: Any) -> str | None:
    return _text(_path(step, "model_output_message", "raw", "model"))


def _langchain(message: Any) -> Run | None:
    """A LangChain ``AIMessage``: ``usage_metadata`` and ``response_metadata``; None for other messages."""
    usage = _get(message, "usage_metadata")
    meta = _get(message, "response_metadata")
    if usage is None and _text(_get(message, "type")) != "ai":
        return None
    run = Run()
    _one_request(run, _tokens(usage, run))
    run.model = _text(_get(meta, "model_name")) or _text(_get(meta, "model"))
    run.provider = _provider(_get(meta, "model_provider"))
    return run


def _response(result: Any) -> Run:
    """One LLM response: anthropic ``Message``, OpenAI chat/Responses, Gemini, Mistral, litellm."""
    run = Run()
    usage = _first(_get(result, "usage"), _get(result, "usage_metadata"))
    said = _tokens(usage, run)
    kind = _text(_get(result, "object"))  # strings only: a user's __eq__ is never called
    if kind == "chat.completion.chunk" and not said:
        said = None  # a stream's chunk without usage: no request counted, the usage chunk counts it
    else:
        _one_request(run, said)
    run.model = _text(_get(result, "model")) or _text(_get(result, "model_version"))
    hidden = _get(result, "_hidden_params")  # litellm
    run.provider = _provider(_get(hidden, "custom_llm_provider"))
    run.cost = _money(_get(hidden, "response_cost"))
    run.cost_source = "api" if run.cost is not None else None
    run.guess = _library(result)
    status = _text(_get(result, "status"))
    if kind == "response" and status in ("failed", "incomplete"):
        code = _text(_path(result, "error", "code")) or _text(_path(result, "incomplete_details", "reason"))
        run.status = "error"
        run.error_kind = code if code and _KIND.fullmatch(code) else f"response_{status}"
    return run


def _gem(result: Mapping) -> Run:
    """The gem-shaped result mapping (`payload.task_metrics`), as a run to sum with others."""
    metrics = payload.task_metrics(result)
    run = Run()
    run.model, run.provider, run.status = metrics.get("model"), metrics.get("provider"), metrics.get("status")
    run.iterations, run.duration_ms = metrics.get("iterations"), metrics.get("duration_ms")
    run.cost, run.cost_source = metrics.get("cost_usd"), metrics.get("cost_source")
    run.prompt, run.completion = metrics.get("prompt_tokens"), metrics.get("completion_tokens")
    run.read, run.write = metrics.get("cache_read_tokens"), metrics.get("cache_creation_tokens")
    run.requests, run.hits = metrics.get("cache_total_requests"), metrics.get("cache_hit_requests")
    return run


def _messages(items: list[Any], depth: int) -> list[Run]:
    """A list of messages: claude-agent-sdk's (the last ``ResultMessage``), or LangChain's (each AI message)."""
    kinds = [_claude_message(item) for item in items]
    if "result" in kinds:
        last = len(kinds) - 1 - kinds[::-1].index("result")
        model = next((_claude_model(items[i]) for i in range(last, -1, -1) if kinds[i] == "model"), None)
        run = _claude(items[last], model)
        if run.hits is None:  # each API call's usage is on its assistant messages (one id per call)
            calls: dict[Any, bool] = {}
            for item in items[:last]:
                usage = _get(item, "usage")
                if _has(item, "parent_tool_use_id") and _get(item, "parent_tool_use_id") is None and usage is not None:
                    calls[_get(item, "message_id")] = bool(_count(_get(usage, "cache_read_input_tokens")))
            if None not in calls and len(calls) == run.requests:
                run.hits = sum(calls.values())
        return [run]
    if "model" in kinds:
        return []  # a claude-agent-sdk run without its result: its usage is not complete
    return [run for item in items for run in _read(item, depth + 1)]


def _read(result: Any, depth: int = 0) -> list[Run]:
    """The runs `result` holds: one for a result, several for a list or `Runs` of them."""
    if result is None or depth > _DEPTH:
        return []
    try:
        if isinstance(result, Mapping):
            messages = _get(result, "messages")
            if isinstance(messages, list):  # a LangGraph / create_agent state
                return _messages(messages[-MAX_ITEMS:], depth)
            return [_gem(result)]
        if isinstance(result, Runs):
            return [run for item in result[-MAX_ITEMS:] for run in _read(item, depth + 1)]
        if isinstance(result, (list, tuple)):
            return _messages(list(result[-MAX_ITEMS:]), depth)
        if isinstance(result, (str, bytes, int, float)):
            return []
        if _an_llm_response(result) and (_has(result, "usage") or _has(result, "usage_metadata")):
            return [_response(result)]
        if _claude_message(result) == "result":
            return [_claude(result)]
        if _has(result, "context_wrapper"):
            return [_openai_agents(result)]
        if _has(result, "all_messages") and _has(result, "usage"):
            return [_pydantic_ai(result)]
        if _has(result, "token_usage"):
            return [_steps(result)]
        if _has(result, "response_metadata"):
            run = _langchain(result)
            return [] if run is None else [run]
        if _has(result, "usage") or _has(result, "usage_metadata"):
            return [_response(result)]
    except BaseException as exc:
        _stop(exc)
    return []


# -- cost --------------------------------------------------------------------------------------
_PRICES: Any = None  # genai_prices once imported; False when it is not installed


def _prices() -> Any:
    global _PRICES
    if _PRICES is None:
        try:
            import genai_prices

            _PRICES = genai_prices
        except BaseException as exc:  # not installed (the `prices` extra), or broken
            _stop(exc)
            _PRICES = False
    return _PRICES


def estimate(model: str | None, provider: str | None, run: Run) -> float | None:
    """The cost of `run`'s tokens by genai-prices' bundled table (the `prices` extra), or None.

    Only the table that ships with the package is read: its auto-update (a download)
    is never started here. genai-prices counts the input with the cache in it, reads
    and writes, so the writes `prompt_tokens` leaves out are put back.
    """
    prices = _prices()
    if not prices or model is None or not run.has_tokens:
        return None
    write = run.write or 0
    usage = {
        "input_tokens": (run.prompt or 0) + write,
        "output_tokens": run.completion or 0,
        "cache_read_tokens": run.read or 0,
        "cache_write_tokens": write,
    }
    if run.write_1h and run.write_1h <= write:  # Anthropic prices a 1-hour cache write higher
        usage["cache_write_1h_tokens"] = run.write_1h
    for provider_id in (provider, None) if provider else (None,):
        try:
            price = prices.calc_price(prices.Usage(**usage), model, provider_id=provider_id)
            return _money(price.total_price)
        except BaseException as exc:  # an unknown model or provider, an inconsistent usage
            _stop(exc)
    return None


# -- the event's keys ----------------------------------------------------------------------------
def _sum(runs: list[Run]) -> Run:
    """Several runs as one: tokens, requests and cost summed, the last model; an error if any had one."""
    if len(runs) == 1:
        return runs[0]
    total = Run()
    for name in ("prompt", "completion", "read", "write", "write_1h", "requests", "iterations"):
        setattr(total, name, _add(*(getattr(run, name) for run in runs)))
    counted = [run for run in runs if run.requests is not None]
    if counted and all(run.hits is not None for run in counted):
        total.hits = sum(run.hits for run in counted)
    for name in ("model", "provider", "guess", "duration_ms"):
        setattr(total, name, next((getattr(r, name) for r in reversed(runs) if getattr(r, name) is not None), None))
    priced = [run for run in runs if run.has_tokens or run.cost is not None]
    if priced and all(run.cost is not None for run in priced):
        total.cost = sum(run.cost for run in priced)
        sources = {run.cost_source for run in priced}
        total.cost_source = sources.pop() if len(sources) == 1 else "price"
    failed = [run for run in runs if run.status == "error"]
    if failed:
        total.status, total.error_kind = "error", failed[-1].error_kind
    elif any(run.status == "success" for run in runs):
        total.status = "success"
    return total


def task_metrics(result: Any, fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The task event's keys from an agent's `result`, with `fields` filling what it lacks.

    `result` is any SDK result of the README's table, a list of them (summed), a
    claude-agent-sdk message list, a LangGraph state or the gem-shaped mapping (read
    exactly as before, `payload.task_metrics`). `fields` (``--model``/``--provider``,
    `task()`'s keywords) lose to what the result says, except a provider guessed from the
    result's library only: a user's ``--provider`` wins over that. A cost the SDK
    reports is sent with ``cost_source`` ``api``; else one estimated from the price table
    (the `prices` extra) with ``price``. Never raises; every value is a plain str or number.
    """
    fields = dict(fields) if fields else {}
    try:
        if result is None:
            return fields
        if isinstance(result, Mapping) and not isinstance(_get(result, "messages"), list):
            return {**fields, **payload.task_metrics(result)}  # the gem's own shape: exactly as the gem maps it
        runs = _read(result)
        if not runs:
            return fields
        fill_model, fill_provider = _text(fields.get("model")), _provider(fields.get("provider"))
        for run in runs:
            if run.cost is None and run.has_tokens:
                provider = run.provider or fill_provider or run.guess
                run.cost = estimate(run.model or fill_model, provider, run)
                run.cost_source = "price" if run.cost is not None else None
        total = _sum(runs)
        metrics = {
            "model": total.model,
            "provider": total.provider,
            "status": total.status,
            "error_kind": total.error_kind,
            "iterations": total.iterations,
            "duration_ms": total.duration_ms,
            "cost_usd": total.cost,
            "cost_source": total.cost_source,
            "prompt_tokens": total.prompt,
            "completion_tokens": total.completion,
            "cache_read_tokens": total.read,
            "cache_creation_tokens": total.write,
        }
        if total.requests is not None and total.hits is not None:  # the pair, or neither: a hit rate
            metrics["cache_total_requests"] = total.requests
            metrics["cache_hit_requests"] = total.hits
        out = {**fields, **{key: value for key, value in metrics.items() if value is not None}}
        if out.get("provider") is None and total.guess is not None:
            out["provider"] = total.guess
        return out
    except BaseException as exc:
        _stop(exc)
        return fields
