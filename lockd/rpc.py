"""The parts the gRPC servers (the gateway and the fenced store) share: TLS credentials,
binding, the standard health and reflection services, and turning requests that are
not valid protobuf into INVALID_ARGUMENT / BAD_REQUEST."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from lockd.errors import ErrorReason, LockdError, abort, invalid
from lockd.serving import host_port, is_loopback

__all__ = ["DecodeErrors", "bind", "credentials", "mark_serving", "standard"]

log = logging.getLogger("lockd")


def credentials(
    cert: Path | None, key: Path | None, client_ca: Path | None
) -> grpc.ServerCredentials | None:
    """TLS server credentials (mutual TLS with `client_ca`), or None for plaintext."""
    if cert is None and key is None:
        if client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    ca = Path(client_ca).read_bytes() if client_ca else None
    return grpc.ssl_server_credentials(
        [(Path(key).read_bytes(), Path(cert).read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def bind(
    server: grpc.aio.Server, listen: str, creds: grpc.ServerCredentials | None, what: str
) -> int:
    """Add the listening port (port 0 picks a free one); returns the bound port. Serving
    plaintext beyond loopback is allowed, with a warning saying what it exposes."""
    host, port = host_port(listen)
    if creds is None and not is_loopback(host):
        log.warning(
            "%s listens on %s without TLS: anyone who can reach it can call it, and "
            "its traffic (lease ids, tokens, values) crosses the network in clear; "
            "give it --tls-cert and --tls-key (and --tls-client-ca to require clients' "
            "certificates)",
            what,
            listen,
        )
    address = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    if creds is None:
        bound: int = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, creds)
    if bound == 0:
        raise OSError(f"cannot listen on {listen}")
    return bound


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def standard(server: grpc.aio.Server, service_name: str) -> health.aio.HealthServicer:
    """Register the standard health service and reflection (grpc.reflection.v1 and
    v1alpha); returns the health servicer."""
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    names = [service_name, health.SERVICE_NAME, REFLECTION_V1, reflection.SERVICE_NAME]
    reflector = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflector, server)
    # v1 is v1alpha renamed (the messages are identical on the wire): grpcio-reflection
    # ships only v1alpha, so the same servicer answers under both names.
    v1 = grpc.stream_stream_rpc_method_handler(
        reflector.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": v1}),)
    )
    return servicer


async def mark_serving(servicer: health.aio.HealthServicer, service_name: str) -> None:
    """Health SERVING for the server as a whole and for `service_name`."""
    for service in ("", service_name):
        await servicer.set(service, health_pb2.HealthCheckResponse.SERVING)


# -- requests that are not valid protobuf ---------------------------------------------------


class Undecodable:
    """What the deserializer hands on for bytes that do not parse: the problem, in words."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _bad_utf8_field(descriptor: Descriptor, data: bytes, prefix: str = "") -> str | None:
    """The dotted name of a string field in `data` that is not UTF-8, if one can be found."""
    pos = 0
    try:
        while pos < len(data):
            tag, pos = _varint(data, pos)
            number, wire = tag >> 3, tag & 7
            if wire == 0:
                _, pos = _varint(data, pos)
                continue
            if wire in (1, 5):
                pos += 8 if wire == 1 else 4
                continue
            if wire != 2:
                return None
            length, pos = _varint(data, pos)
            chunk, pos = data[pos : pos + length], pos + length
            field = descriptor.fields_by_number.get(number)
            if field is None:
                continue
            if field.type == FieldDescriptor.TYPE_STRING:
                try:
                    chunk.decode("utf-8")
                except UnicodeDecodeError:
                    return f"{prefix}{field.name}"
            elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
                found = _bad_utf8_field(field.message_type, chunk, f"{prefix}{field.name}.")
                if found:
                    return found
    except ValueError:
        return None
    return None


def _safe_deserializer(
    deserialize: Callable[[bytes], Any],
) -> Callable[[bytes], Any]:
    def safe(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as exc:
            message_type = getattr(deserialize, "__self__", None)
            descriptor = getattr(message_type, "DESCRIPTOR", None)
            name = descriptor.full_name if descriptor is not None else "request"
            field = _bad_utf8_field(descriptor, data) if descriptor is not None else None
            if field is not None:
                return Undecodable(f"{name}: field {field!r} is not valid UTF-8")
            detail = str(exc).rpartition(": ")[2] or "not valid protobuf"
            return Undecodable(f"{name} could not be decoded: {detail.lower()}")

    return safe


def _bad_request(problem: str) -> LockdError:
    return invalid(ErrorReason.BAD_REQUEST, problem)


Behavior = Callable[..., Any]


def _unary(behavior: Behavior) -> Behavior:
    async def call(request: Any, context: Any) -> Any:
        if isinstance(request, Undecodable):
            await abort(context, _bad_request(request.problem))
        return await behavior(request, context)

    return call


def _unary_stream(behavior: Behavior) -> Behavior:
    if not inspect.isasyncgenfunction(behavior):  # writes with context.write
        return _unary(behavior)

    async def call(request: Any, context: Any) -> AsyncIterator[Any]:
        if isinstance(request, Undecodable):
            await abort(context, _bad_request(request.problem))
        async for response in behavior(request, context):
            yield response

    return call


async def _checked(requests: AsyncIterator[Any], failed: list[LockdError]) -> AsyncIterator[Any]:
    """The decodable requests of a stream, up to the first that is not."""
    async for request in requests:
        if isinstance(request, Undecodable):
            failed.append(_bad_request(request.problem))
            return
        yield request


def _stream_unary(behavior: Behavior) -> Behavior:
    async def call(requests: AsyncIterator[Any], context: Any) -> Any:
        failed: list[LockdError] = []
        result = await behavior(_checked(requests, failed), context)
        if failed:
            await abort(context, failed[0])
        return result

    return call


def _stream_stream(behavior: Behavior) -> Behavior:
    if not inspect.isasyncgenfunction(behavior):  # writes with context.write
        return _stream_unary(behavior)

    async def call(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        failed: list[LockdError] = []
        async for response in behavior(_checked(requests, failed), context):
            yield response
        if failed:
            await abort(context, failed[0])

    return call


class DecodeErrors(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """A request that is not valid protobuf gets INVALID_ARGUMENT with reason BAD_REQUEST,
    naming the message and, when it can, the field (grpc alone answers UNKNOWN with a
    Python class name). On a stream, the first undecodable message ends the stream with
    that status once the requests before it are answered."""

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        changes: dict[str, Any] = {
            "request_deserializer": _safe_deserializer(handler.request_deserializer)
        }
        if handler.unary_unary is not None:
            changes["unary_unary"] = _unary(handler.unary_unary)
        elif handler.unary_stream is not None:
            changes["unary_stream"] = _unary_stream(handler.unary_stream)
        elif handler.stream_unary is not None:
            changes["stream_unary"] = _stream_unary(handler.stream_unary)
        else:
            changes["stream_stream"] = _stream_stream(handler.stream_stream)
        return handler._replace(**changes)
