from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ResetFenceRequest(_message.Message):
    __slots__ = ("resource",)
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    resource: str
    def __init__(self, resource: _Optional[str] = ...) -> None: ...

class ResetFenceResponse(_message.Message):
    __slots__ = ("replaced_token",)
    REPLACED_TOKEN_FIELD_NUMBER: _ClassVar[int]
    replaced_token: int
    def __init__(self, replaced_token: _Optional[int] = ...) -> None: ...

class WriteRequest(_message.Message):
    __slots__ = ("resource", "key", "value", "token")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    resource: str
    key: str
    value: bytes
    token: int
    def __init__(self, resource: _Optional[str] = ..., key: _Optional[str] = ..., value: _Optional[bytes] = ..., token: _Optional[int] = ...) -> None: ...

class WriteResponse(_message.Message):
    __slots__ = ("highest_token",)
    HIGHEST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    highest_token: int
    def __init__(self, highest_token: _Optional[int] = ...) -> None: ...

class ReadRequest(_message.Message):
    __slots__ = ("resource", "key")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    resource: str
    key: str
    def __init__(self, resource: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class ReadResponse(_message.Message):
    __slots__ = ("value", "found", "highest_token")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    HIGHEST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    value: bytes
    found: bool
    highest_token: int
    def __init__(self, value: _Optional[bytes] = ..., found: _Optional[bool] = ..., highest_token: _Optional[int] = ...) -> None: ...

class CompareAndSetRequest(_message.Message):
    __slots__ = ("resource", "key", "expected", "expected_absent", "value", "token")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_ABSENT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    resource: str
    key: str
    expected: bytes
    expected_absent: bool
    value: bytes
    token: int
    def __init__(self, resource: _Optional[str] = ..., key: _Optional[str] = ..., expected: _Optional[bytes] = ..., expected_absent: _Optional[bool] = ..., value: _Optional[bytes] = ..., token: _Optional[int] = ...) -> None: ...

class CompareAndSetResponse(_message.Message):
    __slots__ = ("highest_token",)
    HIGHEST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    highest_token: int
    def __init__(self, highest_token: _Optional[int] = ...) -> None: ...
