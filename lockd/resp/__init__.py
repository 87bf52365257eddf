"""RESP (the Redis serialization protocol): a sans-I/O parser and encoder, and the server."""

from lockd.resp.protocol import ProtocolError, RequestParser, encode

__all__ = ["ProtocolError", "RequestParser", "encode"]
