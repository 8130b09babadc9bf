"""What the OpenAI and Anthropic client wrappers share: admission, request shaping, metered streams.

A wrapped client is a copy of the caller's client whose class overrides the SDK's one request
method, ``post``. Every resource of an SDK client (``chat.completions``, ``responses``,
``messages``, their ``stream``/``parse`` helpers, ``with_raw_response``) sends through ``post``,
so one override sees every model request, whichever helper built it. A request to a model
endpoint goes through four steps:

1. **Plan** (``shape_request``, the one place that decides the model and the output cap): the
   guard's ``plan_call`` applies the run's ``Policy`` (downgrade, ``max_tokens`` clamp, no tools
   once ``stop_tools`` fired, the wrap-up call of ``summary`` mode).
2. **Admit**: ``guard.model_call`` reserves the estimate (prompt bytes / 3 + the output cap,
   priced); a refusal raises ``BudgetExceeded`` before anything is sent.
3. **Send**: the SDK's own ``post``; an error releases the hold.
4. **Reconcile**: the usage the provider reported, normalised by ``budgeteer.integrations._usage``,
   is committed and priced by the guard's ``Pricing``. A stream is wrapped in a metered stream
   that settles as soon as the provider's usage arrives, cuts the stream when the output would
   pass what the hold covers, and charges an abandoned stream for what it generated.

**Estimating an abandoned stream.** When a stream ends before the provider reported its usage
(``break``, ``close()``, task cancellation, garbage collection, a dropped connection), the charge
is: input = the provider's input count if it came (Anthropic's ``message_start``), else the
admission's pessimistic estimate; output = ``max(text deltas seen, ceil(UTF-8 bytes seen / 3))``,
capped at the request's own output cap. Each streamed text delta carries at least one token, and
three bytes per token overestimates real text (~4), so the estimate errs on the side of charging
more. Hidden reasoning tokens of an abandoned stream are not visible and so not counted; the
provider may also bill the few tokens it generated after the connection closed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

from budgeteer.errors import BudgetExceeded
from budgeteer.guard import BYTES_PER_TOKEN, AsyncModelCall, AsyncRunGuard, ModelCall, RunGuard
from budgeteer.model import Usage

logger = logging.getLogger("budgeteer.integrations")

WRAP_UP_PROMPT = (
    "The budget for this task is exhausted. Do not call any tools. Reply now with a short summary "
    "of what you found and what is left to do."
)
"""The user message appended to the wrap-up call of ``summary`` mode (``wrap_up_prompt=``)."""

# Keys whose values are never prompt text: identifiers, roles, binary payloads (images, files
# and audio are priced by the provider per image or second, not by their base64 length).
_NOT_TEXT = frozenset(
    {
        "type",
        "role",
        "id",
        "call_id",
        "tool_use_id",
        "tool_call_id",
        "cache_control",
        "data",
        "source",
        "image_url",
        "file_data",
        "file_id",
        "input_audio",
        "signature",
    }
)


# -- what each endpoint knows ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reported:
    """A provider's usage report, normalised, with what pricing needs beside it."""

    usage: Usage
    service_tier: str | None = None
    cache_write_1h_tokens: int = 0


class Endpoint(Protocol):
    """One model endpoint of one provider: how to read and shape its requests and replies."""

    provider: str
    cap_keys: tuple[str, ...]
    """Body keys of the output cap; the first is written when the body has none."""
    choices_key: str | None
    """Body key of the number of completions generated (each up to the cap), if any."""

    def prompt(self, body: Mapping[str, Any]) -> list[object]:
        """The prompt as a list of message texts, for the admission estimate."""

    def no_tools(self, body: dict[str, Any]) -> None:
        """Forbid tool calls (tool definitions stay: past tool turns may need them)."""

    def wrap_up(self, body: dict[str, Any], text: str) -> None:
        """Append the wrap-up request as a user message."""

    def prepare_stream(self, body: dict[str, Any]) -> bool:
        """Ask the provider to report usage in the stream; True if the caller did not."""

    def reported(self, result: object) -> Reported | None:
        """The usage of a complete (non-streamed) reply, if it has one."""

    def observe(self, meter: StreamMeter, event: object) -> bool:
        """Account for one stream event; False if the caller should not see it."""


def is_sentinel(value: object) -> bool:
    """True for the SDKs' "not given" sentinels (``NotGiven``, ``Omit``): the SDK drops them."""
    return type(value).__name__ in {"NotGiven", "Omit"}


def given(value: object) -> bool:
    """False for the SDKs' "not given" sentinels and ``None``."""
    return value is not None and not is_sentinel(value)


def text_of(value: object) -> str:
    """The prompt text inside a message, a content block or a list of them (JSON-ish)."""
    if isinstance(value, str):
        return value
    if hasattr(value, "model_dump"):
        value = value.model_dump(exclude_none=True)
    if isinstance(value, Mapping):
        return " ".join(
            text_of(item) for key, item in value.items() if key not in _NOT_TEXT and given(item)
        )
    if isinstance(value, list | tuple):
        return " ".join(text_of(item) for item in value)
    if isinstance(value, bool) or value is None:
        return ""
    return str(value)


def tools_text(tools: object) -> list[object]:
    """Tool definitions count as prompt: their JSON, one "message"."""
    if not given(tools):
        return []
    try:
        return [json.dumps(tools, default=str)]
    except (TypeError, ValueError):
        return [text_of(tools)]


# -- 1. the plan: the one place that sets the model and the output cap ---------------------------


@dataclass(slots=True)
class ShapedRequest:
    """A model request after the run's policy shaped it."""

    body: dict[str, Any]
    model: str | None
    prompt: list[object]
    cap_key: str
    max_tokens: int | None
    """The output cap the body sends, per completion (``None``: the provider's default)."""
    choices: int = 1
    """Completions generated (OpenAI's ``n``), each up to ``max_tokens``."""
    hide_usage_chunk: bool = False
    """We turned on OpenAI's ``include_usage``: keep its extra chunk from the caller."""
    final: bool = False

    @property
    def output_cap(self) -> int | None:
        """The most output tokens the provider may generate for the whole request."""
        return None if self.max_tokens is None else self.max_tokens * self.choices


def shape_request(
    guard: RunGuard | AsyncRunGuard,
    endpoint: Endpoint,
    body: Mapping[str, Any],
    *,
    stream: bool,
    wrap_up_prompt: str | None,
) -> ShapedRequest:
    """Read a request body and apply the run's policy to it (a preview: no I/O).

    Every model name and ``max_tokens`` a wrapped client sends is decided here, through
    ``guard.plan_call``: the downgrade target once that rung fired, the cap clamped to what the
    budget affords, tools refused after ``stop_tools``, and the wrap-up shape on the final call.

    Raises:
        BudgetExceeded: the run is exhausted (a refusal in raise mode, or the wrap-up call of
            summary mode was spent): nothing more may be sent.
    """
    shaped = {key: value for key, value in body.items() if not is_sentinel(value)}
    for key in ("messages", "input"):
        value = shaped.get(key)
        if value is not None and not isinstance(value, str | list):
            shaped[key] = list(value)  # an iterator would be consumed by the estimate
    model = shaped.get("model")
    model = model if isinstance(model, str) else None
    cap_key = next((key for key in endpoint.cap_keys if key in shaped), endpoint.cap_keys[0])
    cap = shaped.get(cap_key)
    max_tokens = cap if isinstance(cap, int) and not isinstance(cap, bool) else None
    n = shaped.get(endpoint.choices_key) if endpoint.choices_key else None
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
    prompt = endpoint.prompt(shaped)
    plan = guard.plan_call(
        model,
        prompt=prompt,
        max_tokens=None if max_tokens is None else max_tokens * choices,
        provider=endpoint.provider,
    )
    if plan.exhausted and guard.exhausted is not None:
        raise guard.exhausted
    if plan.model and plan.model != model:
        shaped["model"] = model = plan.model
    if plan.max_tokens is not None:
        planned = max(plan.max_tokens // choices, 1)
        if planned != max_tokens:
            shaped[cap_key] = max_tokens = planned
    request = ShapedRequest(shaped, model, prompt, cap_key, max_tokens, choices)
    if stream:
        request.hide_usage_chunk = endpoint.prepare_stream(shaped)
    if not plan.tools_allowed:
        endpoint.no_tools(shaped)
    if plan.final:
        _make_final(request, endpoint, None, wrap_up_prompt)
    return request


def _make_final(
    request: ShapedRequest, endpoint: Endpoint, reserve_output: int | None, prompt: str | None
) -> None:
    """Shape the wrap-up call: no tools, the wrap-up prompt, output within the reserve."""
    if request.final:
        return
    request.final = True
    endpoint.no_tools(request.body)
    if prompt:
        endpoint.wrap_up(request.body, prompt)
    per_choice = max(reserve_output // request.choices, 1) if reserve_output else None
    if per_choice and (request.max_tokens is None or request.max_tokens > per_choice):
        request.body[request.cap_key] = request.max_tokens = per_choice


# -- the stream meter (I/O-free) -----------------------------------------------------------------


@dataclass(slots=True)
class StreamMeter:
    """What a stream has generated so far, and what to charge for it."""

    hold: Usage
    """What the admission reserved."""
    cap: int | None
    """The output cap the request sent (the provider never exceeds it)."""
    text_bytes: int = 0
    deltas: int = 0
    input_reported: Reported | None = None
    """The input part, when the provider reports it up front (Anthropic ``message_start``)."""
    reported: Reported | None = None
    """The provider's complete usage, once it arrived."""
    partial: dict[str, Any] = field(default_factory=dict)
    """Provider-specific running state (Anthropic's usage fields so far)."""
    generation_done: bool = False
    """The text is complete and only the usage report is still to come (OpenAI chat: a
    ``finish_reason`` was seen): closing the stream reads on to it instead of estimating."""

    def saw_text(self, text: object) -> None:
        """One streamed piece of generated text (content, tool arguments, reasoning summary)."""
        if isinstance(text, str) and text:
            self.text_bytes += len(text.encode())
            self.deltas += 1

    @property
    def cut_at(self) -> int | None:
        """Output tokens past which the stream is cut: the hold's, unless the request's own cap
        already keeps the provider within it."""
        held = self.hold.output_tokens
        return None if self.cap is not None and self.cap <= held else held

    def output_estimate(self) -> int:
        estimate = max(self.deltas, -(-self.text_bytes // BYTES_PER_TOKEN))
        return min(estimate, self.cap) if self.cap is not None else estimate

    def over_hold(self) -> bool:
        cut_at = self.cut_at
        return self.reported is None and cut_at is not None and self.output_estimate() > cut_at

    def charge(self) -> Reported:
        """What to commit now: the provider's report, or the estimate described above."""
        if self.reported is not None:
            return self.reported
        base = self.input_reported
        output = self.output_estimate()
        if base is not None:
            output = max(output, base.usage.output_tokens)
            usage = base.usage.replace(output_tokens=output, reasoning_tokens=0, total_tokens=None)
            return Reported(usage, base.service_tier, base.cache_write_1h_tokens)
        return Reported(
            Usage(input_tokens=self.hold.input_tokens, output_tokens=output, requests=1)
        )

    def cut_error(self, path: str) -> BudgetExceeded:
        """The refusal a cut stream raises: its output passed what the hold covers."""
        return BudgetExceeded(
            scope=path,
            dimension="output_tokens",
            limit=self.cut_at or 0,
            used=self.output_estimate(),
            held=self.hold.output_tokens,
            requested=self.output_estimate(),
        )


# -- 2-4. admission, sending, reconciliation ----------------------------------------------------


class _Admission:
    """An admitted call held open across the request (and the stream, if one)."""

    def __init__(
        self,
        guard: RunGuard | AsyncRunGuard,
        endpoint: Endpoint,
        request: ShapedRequest,
        wrap_up_prompt: str | None,
    ) -> None:
        self.guard = guard
        self.endpoint = endpoint
        self.request = request
        self.wrap_up_prompt = wrap_up_prompt
        self.done = False

    def admitted(self, call: ModelCall | AsyncModelCall) -> None:
        if call.final and not self.request.final:
            # Admitted under the summary reserve (the budget ran out at this very call): the
            # reserve was priced for the policy's summary model, so send that one.
            policy = self.guard.policy
            if policy is not None and policy.summary_model:
                self.request.body["model"] = self.request.model = policy.summary_model
            _make_final(
                self.request, self.endpoint, call.estimate.output_tokens, self.wrap_up_prompt
            )

    def settle_args(self, reported: Reported) -> dict[str, Any]:
        """Priced for the model actually sent (a wrap-up call may have switched it), with its
        service tier and one-hour cache writes."""
        return {
            "model": self.request.model,
            "service_tier": reported.service_tier,
            "cache_write_1h_tokens": reported.cache_write_1h_tokens,
        }

    def meter(self, call: ModelCall | AsyncModelCall) -> StreamMeter:
        return StreamMeter(call.estimate, self.request.output_cap)


def _exc_info() -> tuple[type[BaseException], BaseException, TracebackType | None]:
    error = sys.exc_info()[1]
    assert error is not None  # only called inside an ``except`` block
    return type(error), error, error.__traceback__


def send_sync(
    guard: RunGuard,
    endpoint: Endpoint,
    body: Mapping[str, Any],
    *,
    stream: bool,
    wrap_up_prompt: str | None,
    send: Callable[[dict[str, Any]], Any],
) -> Any:
    """Plan, admit, send and reconcile one request of a sync client."""
    request = shape_request(guard, endpoint, body, stream=stream, wrap_up_prompt=wrap_up_prompt)
    admission = _Admission(guard, endpoint, request, wrap_up_prompt)
    context = guard.model_call(
        request.model, prompt=request.prompt, max_tokens=request.output_cap,
        provider=endpoint.provider,
    )  # fmt: skip
    call = context.__enter__()
    try:
        admission.admitted(call)
        result = send(request.body)
    except BaseException:
        context.__exit__(*_exc_info())  # releases the hold: nothing was generated
        raise
    if stream and hasattr(result, "__next__"):
        return MeteredStream(result, admission, call, context)
    try:
        reported = endpoint.reported(_parsed(result, stream=stream))
        if reported is not None:
            call.settle(reported.usage, **admission.settle_args(reported))
    except BaseException:
        context.__exit__(*_exc_info())
        raise
    context.__exit__(None, None, None)  # unsettled (no usage in the reply): the estimate
    return result


async def send_async(
    guard: AsyncRunGuard,
    endpoint: Endpoint,
    body: Mapping[str, Any],
    *,
    stream: bool,
    wrap_up_prompt: str | None,
    send: Callable[[dict[str, Any]], Any],
) -> Any:
    """The async twin of ``send_sync``."""
    request = shape_request(guard, endpoint, body, stream=stream, wrap_up_prompt=wrap_up_prompt)
    admission = _Admission(guard, endpoint, request, wrap_up_prompt)
    context = guard.model_call(
        request.model, prompt=request.prompt, max_tokens=request.output_cap,
        provider=endpoint.provider,
    )  # fmt: skip
    call = await context.__aenter__()
    try:
        admission.admitted(call)
        result = await send(request.body)
    except BaseException:
        await context.__aexit__(*_exc_info())
        raise
    if stream and hasattr(result, "__anext__"):
        return AsyncMeteredStream(result, admission, call, context)
    try:
        reported = endpoint.reported(_parsed(result, stream=stream))
        if reported is not None:
            await call.settle(reported.usage, **admission.settle_args(reported))
    except BaseException:
        await context.__aexit__(*_exc_info())
        raise
    await context.__aexit__(None, None, None)
    return result


def _parsed(result: object, *, stream: bool) -> object:
    """The reply object behind a raw response (``with_raw_response``); a raw *stream* is not
    metered, and its call is charged at the estimate."""
    if hasattr(result, "usage") or stream:
        return result
    parse = getattr(result, "parse", None)
    return parse() if callable(parse) else result


# -- metered streams ------------------------------------------------------------------------------


_DRAIN_EVENTS = 8
"""At most this many events are read on close to reach a usage report that is due."""


class _StreamBase:
    """State shared by the sync and async metered streams."""

    def __init__(self, inner: Any, admission: _Admission, call: ModelCall | AsyncModelCall) -> None:
        self._inner = inner
        self._admission = admission
        self._meter = admission.meter(call)
        self._finished = False

    def __getattr__(self, name: str) -> Any:
        # Everything else (``response``, the SDK's tracing observer...) is the SDK stream's.
        if name.startswith("__") or name in {"_inner", "_admission", "_meter", "_finished"}:
            raise AttributeError(name)
        return getattr(self._inner, name)

    @property
    def meter(self) -> StreamMeter:
        """What this stream has generated so far (read-only use)."""
        return self._meter

    def _observe(self, event: object) -> bool:
        return self._admission.endpoint.observe(self._meter, event) and not (
            self._admission.request.hide_usage_chunk and _is_usage_chunk(event)
        )


def _is_usage_chunk(event: object) -> bool:
    """OpenAI's extra ``include_usage`` chunk: no choices, only usage."""
    return getattr(event, "usage", None) is not None and not getattr(event, "choices", None)


class MeteredStream(_StreamBase):
    """An SDK ``Stream`` that settles its call's usage as it arrives (sync).

    Iterate it, use it as a context manager, or ``close()`` it like the SDK's stream; every other
    attribute is the SDK stream's. Iteration raises ``BudgetExceeded`` (dimension
    ``output_tokens``) when the output would pass what the call's hold covers.
    """

    def __init__(
        self,
        inner: Any,
        admission: _Admission,
        call: ModelCall,
        context: AbstractContextManager[Any],
    ) -> None:
        super().__init__(inner, admission, call)
        self._call = call
        self._context = context

    def __iter__(self) -> MeteredStream:
        return self

    def __next__(self) -> Any:
        while True:
            try:
                event = next(self._inner)
            except StopIteration:
                self._finish()
                raise
            except BaseException:
                self._finish()  # a dropped stream still generated what was seen
                raise
            keep = self._observe(event)
            if self._meter.reported is not None:
                self._settle()
            elif self._meter.over_hold():
                error = self._meter.cut_error(self._admission.guard.path)
                self.close()
                raise error
            if keep:
                return event

    def __enter__(self) -> MeteredStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP response and charge what was generated."""
        try:
            self._drain()
            self._inner.close()
        finally:
            self._finish()

    def _drain(self) -> None:
        meter = self._meter
        for _ in range(_DRAIN_EVENTS):
            if self._finished or meter.reported is not None or not meter.generation_done:
                return
            try:
                self._observe(next(self._inner))
            except StopIteration:
                return
            except Exception:
                logger.debug("stream broke before its usage report; estimating", exc_info=True)
                return

    def __del__(self) -> None:
        if not getattr(self, "_finished", True):
            try:
                self._finish()
            except Exception:
                logger.exception("could not charge an abandoned stream")

    def _settle(self) -> None:
        if self._call.settled is None:
            reported = self._meter.charge()
            self._call.settle(reported.usage, **self._admission.settle_args(reported))

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        try:
            self._settle()
        except BaseException:
            self._context.__exit__(*_exc_info())
            raise
        self._context.__exit__(None, None, None)


class AsyncMeteredStream(_StreamBase):
    """The async twin of ``MeteredStream`` (``async for``, ``async with``, ``await close()``)."""

    def __init__(
        self,
        inner: Any,
        admission: _Admission,
        call: AsyncModelCall,
        context: AbstractAsyncContextManager[Any],
    ) -> None:
        super().__init__(inner, admission, call)
        self._call = call
        self._context = context

    def __aiter__(self) -> AsyncMeteredStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            try:
                event = await self._inner.__anext__()
            except StopAsyncIteration:
                await self._finish()
                raise
            except BaseException:
                # Cancelled or dropped: charge what was generated, whatever happens next.
                await asyncio.shield(self._finish())
                raise
            keep = self._observe(event)
            if self._meter.reported is not None:
                await self._settle()
            elif self._meter.over_hold():
                error = self._meter.cut_error(self._admission.guard.path)
                await self.close()
                raise error
            if keep:
                return event

    async def __aenter__(self) -> AsyncMeteredStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP response and charge what was generated."""
        try:
            await self._drain()
            await self._inner.close()
        finally:
            await asyncio.shield(self._finish())

    async def _drain(self) -> None:
        meter = self._meter
        for _ in range(_DRAIN_EVENTS):
            if self._finished or meter.reported is not None or not meter.generation_done:
                return
            try:
                self._observe(await self._inner.__anext__())
            except StopAsyncIteration:
                return
            except Exception:
                logger.debug("stream broke before its usage report; estimating", exc_info=True)
                return

    def __del__(self) -> None:
        # Garbage without close(): charge from the running loop, if there is one. Without a
        # loop the hold stays open until the guard exits, which releases it.
        if getattr(self, "_finished", True):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            logger.warning("an abandoned async stream was not charged: no running event loop")
            return
        _PENDING.add(task := loop.create_task(self._finish()))
        task.add_done_callback(_PENDING.discard)

    async def _settle(self) -> None:
        if self._call.settled is None:
            reported = self._meter.charge()
            await self._call.settle(reported.usage, **self._admission.settle_args(reported))

    async def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        try:
            await self._settle()
        except BaseException:
            await self._context.__aexit__(*_exc_info())
            raise
        await self._context.__aexit__(None, None, None)


_PENDING: set[asyncio.Task[None]] = set()


# -- the client classes --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Binding:
    """What a wrapped client carries: its guard and the endpoints it meters."""

    guard: RunGuard | AsyncRunGuard
    endpoints: Mapping[str, Endpoint]
    wrap_up_prompt: str | None


def _sync_post(self: Any, path: str, **kwargs: Any) -> Any:
    """The SDK's ``post``, admitted and reconciled when ``path`` is a model endpoint."""
    parent = self._budgeteer_base
    binding: Binding = self._budgeteer
    endpoint = binding.endpoints.get(path)
    body = kwargs.get("body")
    if endpoint is None or not isinstance(body, Mapping):
        return parent.post(self, path, **kwargs)
    guard = binding.guard
    assert isinstance(guard, RunGuard)  # checked when wrapping

    def send(shaped: dict[str, Any]) -> Any:
        return parent.post(self, path, **{**kwargs, "body": shaped})

    return send_sync(
        guard,
        endpoint,
        body,
        stream=bool(kwargs.get("stream")),
        wrap_up_prompt=binding.wrap_up_prompt,
        send=send,
    )


async def _async_post(self: Any, path: str, **kwargs: Any) -> Any:
    """The async twin of ``_sync_post``."""
    parent = self._budgeteer_base
    binding: Binding = self._budgeteer
    endpoint = binding.endpoints.get(path)
    body = kwargs.get("body")
    if endpoint is None or not isinstance(body, Mapping):
        return await parent.post(self, path, **kwargs)
    guard = binding.guard
    assert isinstance(guard, AsyncRunGuard)  # checked when wrapping

    def send(shaped: dict[str, Any]) -> Any:
        return parent.post(self, path, **{**kwargs, "body": shaped})

    return await send_async(
        guard,
        endpoint,
        body,
        stream=bool(kwargs.get("stream")),
        wrap_up_prompt=binding.wrap_up_prompt,
        send=send,
    )


def _copy(self: Any, *args: Any, **kwargs: Any) -> Any:
    """The SDK's ``copy``/``with_options``; the copy is wrapped with the same guard."""
    clone = self._budgeteer_base.copy(self, *args, **kwargs)  # builds ``type(self)``
    clone._budgeteer = self._budgeteer
    return clone


_CLASSES: dict[type, type] = {}


def wrap_client(client: Any, binding: Binding, *, is_async: bool) -> Any:
    """A copy of ``client`` (same class, a budgeted subclass of it) that sends through
    ``binding``. The original client is left as it was; both share its HTTP connection pool."""
    base = type(client)
    if base in _CLASSES.values():
        base = base.__mro__[1]  # re-wrapping a wrapped client: wrap its SDK class again
    cls = _CLASSES.get(base)
    if cls is None:
        # A plain subclass (methods in its namespace, no mixin base) keeps the SDK class's
        # layout, so the copy's ``__class__`` can be swapped to it.
        namespace = {
            "__module__": base.__module__,
            "__doc__": f"{base.__name__}, its model calls admitted and charged by a run guard.",
            "_budgeteer_base": base,
            "post": _async_post if is_async else _sync_post,
            "copy": _copy,
            "with_options": _copy,
        }
        cls = type(f"Budgeted{base.__name__}", (base,), namespace)
        _CLASSES[base] = cls
    clone = client.copy()  # the SDK's own copy: fresh resources bound to the clone's ``post``
    clone.__class__ = cls
    clone._budgeteer = binding
    return clone


def iter_items(value: object) -> Iterable[object]:
    """``value`` as a list of items (``None`` and sentinels: none)."""
    if not given(value):
        return ()
    if isinstance(value, str | Mapping):
        return (value,)
    if isinstance(value, Iterable):
        return value
    return (value,)
