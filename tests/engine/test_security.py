"""`lockd engine` safe to expose: a password (AUTH, HELLO ... AUTH) and TLS, checked with
redis-py as a real client would."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support import EngineProcess

PASSWORD = "s3cret-engine-pass"
ONCE: dict[str, object] = {"retry": Retry(NoBackoff(), 0)}  # an error, not three retries


@pytest.fixture
def guarded(tmp_path: Path) -> EngineProcess:
    (tmp_path / "pass").write_text(PASSWORD + "\n")
    proc = EngineProcess(tmp_path / "engine", "--password-file", str(tmp_path / "pass")).start()
    yield proc  # type: ignore[misc]
    proc.close()


def test_no_password_gets_noauth_and_changes_nothing(guarded: EngineProcess) -> None:
    client = guarded.client(protocol=2, **ONCE)
    with pytest.raises(redis.AuthenticationError, match="Authentication required"):
        client.set("k", "v")
    with pytest.raises(redis.AuthenticationError, match="Authentication required"):
        client.fcall("lockd_release", 1, "lock:{x}", "lease")
    with pytest.raises(redis.exceptions.RedisError, match="HELLO must be called"):
        guarded.client(protocol=3, **ONCE).ping()  # redis-py's RESP3 handshake: HELLO 3
    authed = guarded.client(password=PASSWORD, **ONCE)
    assert authed.get("k") is None  # nothing was written


def test_wrong_password_is_refused(guarded: EngineProcess) -> None:
    with pytest.raises(redis.AuthenticationError, match="invalid username-password"):
        guarded.client(password="wrong", **ONCE).ping()
    with pytest.raises(redis.AuthenticationError, match="invalid username-password"):
        guarded.client(username="admin", password=PASSWORD, **ONCE).ping()


@pytest.mark.parametrize("protocol", [2, 3])
def test_right_password_works_over_resp2_and_resp3(guarded: EngineProcess, protocol: int) -> None:
    # redis-py sends AUTH on RESP2 and HELLO 3 AUTH default <password> on RESP3.
    client = guarded.client(password=PASSWORD, protocol=protocol, **ONCE)
    assert client.fcall("lockd_acquire", 2, "lock:{a}", "fence:{a}", "lease", 5000) == [1, 0]
    assert client.get("lock:{a}") == b"lease"


def test_auth_without_a_configured_password_is_an_error(engine_process: EngineProcess) -> None:
    with pytest.raises(redis.exceptions.RedisError, match="without any password configured"):
        engine_process.client(**ONCE).execute_command("AUTH", "x")


@pytest.fixture
def tls_engine(tmp_path: Path, certs: dict[str, Path]) -> EngineProcess:
    proc = EngineProcess(
        tmp_path / "engine",
        "--tls-cert", str(certs["server_pem"]), "--tls-key", str(certs["server_key"]),
        "--tls-client-ca", str(certs["ca_pem"]),
    ).start()  # fmt: skip
    yield proc  # type: ignore[misc]
    proc.close()


def test_tls_with_a_client_certificate_works(
    tls_engine: EngineProcess, certs: dict[str, Path]
) -> None:
    client = tls_engine.client(
        ssl=True,
        ssl_ca_certs=str(certs["ca_pem"]),
        ssl_certfile=str(certs["client_pem"]),
        ssl_keyfile=str(certs["client_key"]),
        **ONCE,
    )
    assert client.ping() is True
    assert client.fcall("lockd_fence_advance", 1, "fence:{t}", 3) == [1, 3]


def test_tls_client_without_a_certificate_is_refused(
    tls_engine: EngineProcess, certs: dict[str, Path]
) -> None:
    client = tls_engine.client(ssl=True, ssl_ca_certs=str(certs["ca_pem"]), **ONCE)
    with pytest.raises((redis.ConnectionError, ssl.SSLError)):
        client.ping()
    rogue = tls_engine.client(
        ssl=True,
        ssl_ca_certs=str(certs["ca_pem"]),
        ssl_certfile=str(certs["rogue_pem"]),
        ssl_keyfile=str(certs["rogue_key"]),
        **ONCE,
    )
    with pytest.raises((redis.ConnectionError, ssl.SSLError)):
        rogue.ping()


def test_plaintext_client_cannot_talk_to_a_tls_engine(tls_engine: EngineProcess) -> None:
    with pytest.raises(redis.ConnectionError):
        tls_engine.client(socket_timeout=2, **ONCE).ping()
    assert tls_engine.proc is not None and tls_engine.proc.poll() is None  # still up


def test_plaintext_beyond_loopback_is_warned(tmp_path: Path) -> None:
    """Bound beyond loopback with neither a password nor TLS, the engine starts (the
    operator may have a firewall) but says what is exposed and which flags fix it; on
    loopback it says nothing."""
    exposed = EngineProcess(tmp_path / "exposed", "--host", "0.0.0.0").start()
    quiet = EngineProcess(tmp_path / "quiet").start()
    try:
        exposed.stop()
        quiet.stop()
        said, unsaid = exposed.output(), quiet.output()
    finally:
        exposed.close()
        quiet.close()
    assert "no password (--password-file) and no TLS (--tls-cert, --tls-key)" in said, said
    assert "delete locks and rewrite fencing counters" in said
    assert "anyone who can reach it" not in unsaid
