"""Bad requests, answered the same way by every service: ``INVALID_ARGUMENT`` with a message that
names each bad field and a ``google.rpc.BadRequest`` detail with one field violation per field."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


def pack(message: Any) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(message)
    return a


async def abort_bad_request(context: grpc.aio.ServicerContext, violations: list[tuple[str, str]]) -> NoReturn:
    """End the call: INVALID_ARGUMENT, ``violations`` being (field, what is wrong with it)."""
    detail = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations]
    )
    message = "invalid request: " + "; ".join(f"{f}: {d}" for f, d in violations)
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=[pack(detail)])
    await context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("unreachable")


def duration_seconds(
    request: Message, field: str, default: float, bounds: tuple[float, float], bad: list[tuple[str, str]]
) -> float:
    """A ``google.protobuf.Duration`` field of a request in seconds, ``default`` when unset; one
    outside ``bounds`` adds a field violation to ``bad``."""
    if not request.HasField(field):
        return default
    value = float(getattr(request, field).ToTimedelta().total_seconds())
    low, high = bounds
    if not low <= value <= high:
        bad.append((field, f"is {value:g} s: it must be from {_human(low)} to {_human(high)}"))
    return value


def _human(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:g} days" if seconds != 86400 else "1 day"
    return f"{seconds * 1000:g} ms" if seconds < 1 else f"{seconds:g} s"
