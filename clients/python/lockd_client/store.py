"""Client of the sample fenced storage (`lockd store`, gRPC `lockd.v1.FencedStore`).

Pass the lease (or its fencing token) with every write; the store refuses a write whose
token is lower than one it already accepted for the resource, so a holder whose lease
silently expired cannot overwrite its successor's data::

    with StoreClient("127.0.0.1:7500") as store:
        store.write("orders/42", "total", b"12", lease=lease)   # lease.token is sent
        current = store.read("orders/42", "total")

`AsyncStoreClient` is the same over grpc.aio. Refusals raise `StaleToken` or
`ValueChanged`; every other failure raises `StoreError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import grpc
import grpc.aio
from google.rpc import error_details_pb2, status_pb2

from lockd_client.errors import ErrorReason, LockError, reason_name
from lockd_client.v1 import fenced_store_pb2 as pb
from lockd_client.v1 import fenced_store_pb2_grpc as pb_grpc

__all__ = [
    "AsyncStoreClient",
    "HasToken",
    "ReadResult",
    "StaleToken",
    "StoreClient",
    "StoreError",
    "ValueChanged",
]

_OPTIONS = [("grpc.max_receive_message_length", -1)]  # the server bounds value sizes


class HasToken(Protocol):
    """Anything with a fencing token: a lease of the lock client, for example."""

    @property
    def token(self) -> int:
        """The fencing token."""
        ...


# -- errors --------------------------------------------------------------------------------


class StoreError(LockError):
    """A failed store call: gRPC status code, ErrorInfo reason and metadata, message.

    Part of the client's one exception tree (`LockError` is the root); `name` is the
    resource."""

    def __init__(
        self,
        message: str,
        *,
        resource: str | None = None,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, name=resource, reason=reason, metadata=metadata)
        self.resource = resource
        self.code = code


class StaleToken(StoreError):
    """The write's token is lower than `highest_token`, already accepted for `resource`:
    this writer's lease has been superseded. Do not retry with the same token."""

    def __init__(
        self,
        resource: str,
        highest_token: int,
        message: str = "",
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            message or f"token {highest_token} was already accepted",
            resource=resource,
            code=grpc.StatusCode.FAILED_PRECONDITION,
            reason=reason_name(ErrorReason.STALE_TOKEN),
            metadata=metadata,
        )
        self.highest_token = highest_token


class ValueChanged(StoreError):
    """compare_and_set found another value: `found` (whether the key has one) and
    `current_length` (its size in bytes). Read it again and retry."""

    def __init__(
        self,
        resource: str,
        key: str,
        found: bool,
        current_length: int,
        message: str = "",
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            message or f"key {key!r} does not hold the expected value",
            resource=resource,
            code=grpc.StatusCode.FAILED_PRECONDITION,
            reason=reason_name(ErrorReason.VALUE_CHANGED),
            metadata=metadata,
        )
        self.key = key
        self.found = found
        self.current_length = current_length


def _error(err: grpc.RpcError, resource: str, key: str) -> StoreError:
    """The exception for a failed call (reads the google.rpc ErrorInfo detail)."""
    code: grpc.StatusCode = err.code()
    message: str = err.details() or code.name
    reason = ""
    metadata: dict[str, str] = {}
    for name, value in err.trailing_metadata() or ():
        if name == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    reason, metadata = info.reason, dict(info.metadata)
    number = metadata.get("highest_token", "")
    if reason == reason_name(ErrorReason.STALE_TOKEN) and number.isdigit():
        return StaleToken(resource, int(number), message, metadata=metadata)
    if reason == reason_name(ErrorReason.VALUE_CHANGED):
        length = metadata.get("current_length", "0")
        found, size = metadata.get("found") == "true", int(length) if length.isdigit() else 0
        return ValueChanged(resource, key, found, size, message, metadata=metadata)
    return StoreError(message, resource=resource, code=code, reason=reason, metadata=metadata)


# -- requests ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReadResult:
    """A key's value (None when it has none) and its resource's highest token (0: none)."""

    value: bytes | None
    highest_token: int

    @property
    def found(self) -> bool:
        """Whether the key has a value."""
        return self.value is not None


def _token(token: int | None, lease: HasToken | None) -> int:
    if lease is not None:
        if token is not None and token != lease.token:
            raise ValueError(f"token={token} disagrees with lease.token={lease.token}")
        token = lease.token
    if token is None:
        raise TypeError("pass token= or lease= (the fencing token of the writer's lease)")
    return token


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _cas_request(
    resource: str,
    key: str,
    expected: bytes | str | None,
    value: bytes | str,
    token: int,
) -> pb.CompareAndSetRequest:
    return pb.CompareAndSetRequest(
        resource=resource,
        key=key,
        expected=b"" if expected is None else _bytes(expected),
        expected_absent=expected is None,
        value=_bytes(value),
        token=token,
    )


def _read_result(response: pb.ReadResponse) -> ReadResult:
    return ReadResult(response.value if response.found else None, response.highest_token)


# -- clients -------------------------------------------------------------------------------


class StoreClient:
    """Blocking client of one store server; `timeout` (seconds) bounds each call."""

    def __init__(
        self,
        endpoint: str,
        timeout: float | None = 10.0,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        opts = [*_OPTIONS, *options]
        self._channel = (
            grpc.insecure_channel(endpoint, opts)
            if credentials is None
            else grpc.secure_channel(endpoint, credentials, opts)
        )
        self._stub = pb_grpc.FencedStoreStub(self._channel)  # type: ignore[no-untyped-call]
        self.timeout = timeout

    def write(
        self,
        resource: str,
        key: str,
        value: bytes | str,
        *,
        token: int | None = None,
        lease: HasToken | None = None,
    ) -> int:
        """Store `value` under (resource, key) unless the token is stale (`StaleToken`);
        returns the resource's highest token (this write's)."""
        request = pb.WriteRequest(
            resource=resource, key=key, value=_bytes(value), token=_token(token, lease)
        )
        try:
            response = self._stub.Write(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise _error(exc, resource, key) from exc
        return int(response.highest_token)

    def read(self, resource: str, key: str) -> ReadResult:
        """The key's value and the resource's highest token."""
        try:
            response = self._stub.Read(
                pb.ReadRequest(resource=resource, key=key), timeout=self.timeout
            )
        except grpc.RpcError as exc:
            raise _error(exc, resource, key) from exc
        return _read_result(response)

    def compare_and_set(
        self,
        resource: str,
        key: str,
        expected: bytes | str | None,
        value: bytes | str,
        *,
        token: int | None = None,
        lease: HasToken | None = None,
    ) -> int:
        """Store `value` if the key holds `expected` (None: holds nothing), else
        `ValueChanged`; the token rule of `write` applies first."""
        request = _cas_request(resource, key, expected, value, _token(token, lease))
        try:
            response = self._stub.CompareAndSet(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise _error(exc, resource, key) from exc
        return int(response.highest_token)

    def reset_fence(self, resource: str, admin_token: str) -> int:
        """Admin: set the resource's highest token back to 0 (after a write with a token no
        lock reaches, such as 2^64-1, locked writers out); returns the replaced token.
        `StoreError` PERMISSION_DENIED NOT_ADMIN without a valid admin token (or an admin
        client certificate in `credentials`; pass "" then)."""
        metadata = (("authorization", f"Bearer {admin_token}"),) if admin_token else ()
        try:
            response = self._stub.ResetFence(
                pb.ResetFenceRequest(resource=resource), timeout=self.timeout, metadata=metadata
            )
        except grpc.RpcError as exc:
            raise _error(exc, resource, "") from exc
        return int(response.replaced_token)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> StoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncStoreClient:
    """The asyncio client (grpc.aio); create it inside the event loop that uses it."""

    def __init__(
        self,
        endpoint: str,
        timeout: float | None = 10.0,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        opts = [*_OPTIONS, *options]
        self._channel = (
            grpc.aio.insecure_channel(endpoint, opts)
            if credentials is None
            else grpc.aio.secure_channel(endpoint, credentials, opts)
        )
        self._stub = pb_grpc.FencedStoreStub(self._channel)  # type: ignore[no-untyped-call]
        self.timeout = timeout

    async def write(
        self,
        resource: str,
        key: str,
        value: bytes | str,
        *,
        token: int | None = None,
        lease: HasToken | None = None,
    ) -> int:
        """As `StoreClient.write`."""
        request = pb.WriteRequest(
            resource=resource, key=key, value=_bytes(value), token=_token(token, lease)
        )
        try:
            response = await self._stub.Write(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise _error(exc, resource, key) from exc
        return int(response.highest_token)

    async def read(self, resource: str, key: str) -> ReadResult:
        """As `StoreClient.read`."""
        request = pb.ReadRequest(resource=resource, key=key)
        try:
            response = await self._stub.Read(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise _error(exc, resource, key) from exc
        return _read_result(response)

    async def compare_and_set(
        self,
        resource: str,
        key: str,
        expected: bytes | str | None,
        value: bytes | str,
        *,
        token: int | None = None,
        lease: HasToken | None = None,
    ) -> int:
        """As `StoreClient.compare_and_set`."""
        request = _cas_request(resource, key, expected, value, _token(token, lease))
        try:
            response = await self._stub.CompareAndSet(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise _error(exc, resource, key) from exc
        return int(response.highest_token)

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncStoreClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
