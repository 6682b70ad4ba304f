"""The betting service's refusals on the wire: FAILED_PRECONDITION with a ``google.rpc.ErrorInfo``
whose reason is the ``RejectReason`` name, so a client can act on it without parsing the message."""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from livebet.betting.v1 import bet_pb2

from mesh.errors import pack

DOMAIN = "livebet.betting.v1"


async def abort_refused(context: grpc.aio.ServicerContext, reason: int, message: str) -> NoReturn:
    info = error_details_pb2.ErrorInfo(reason=bet_pb2.RejectReason.Name(reason), domain=DOMAIN)
    status = status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message=message, details=[pack(info)])
    await context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("unreachable")
