"""RESP (the Redis serialization protocol): the sans-I/O parser and encoder, and reply values."""

from lockd.resp.protocol import ProtocolError, RequestParser, encode

__all__ = ["ProtocolError", "RequestParser", "encode"]
