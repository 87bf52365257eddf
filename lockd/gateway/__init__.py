"""The gRPC gateway (`lockd.v1`): waits, quorum attempts and errors over engine nodes."""

from lockd.gateway.config import DEFAULT_LISTEN, GatewayConfig
from lockd.gateway.server import Gateway, serve

__all__ = ["DEFAULT_LISTEN", "Gateway", "GatewayConfig", "serve"]
