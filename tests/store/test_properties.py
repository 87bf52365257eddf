"""Properties of the token rule, checked with Hypothesis.

Over gRPC: for any sequence of (resource, token) writes, a write is accepted iff its
token is >= the largest token accepted before for that resource, and a refusal names
exactly that token. On the store itself: after any sequence of writes and
compare-and-sets, a restart (replaying the log) gives back the same values and tokens.
"""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockd.errors import LockdError
from lockd.store.fenced import FencedStore
from lockd_client.store import StaleToken, StoreClient

_examples = itertools.count()

writes = st.lists(
    st.tuples(st.sampled_from("abc"), st.integers(min_value=1, max_value=12)), max_size=25
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=writes)
def test_accepted_iff_token_at_least_highest_accepted(
    shared_port: int, sequence: list[tuple[str, int]]
) -> None:
    prefix = f"example-{next(_examples)}/"  # every example gets fresh resources
    highest: dict[str, int] = {}
    with StoreClient(f"127.0.0.1:{shared_port}") as c:
        for i, (name, token) in enumerate(sequence):
            resource = prefix + name
            top = highest.get(resource, 0)
            try:
                c.write(resource, f"k{i % 2}", b"%d" % i, token=token)
            except StaleToken as exc:
                assert token < top, f"token {token} refused, highest accepted was {top}"
                assert exc.highest_token == top
            else:
                assert token >= top, f"token {token} accepted after {top}"
                highest[resource] = token
        for name in "abc":
            resource = prefix + name
            assert c.read(resource, "k0").highest_token == highest.get(resource, 0)


operations = st.lists(
    st.tuples(
        st.sampled_from(["write", "cas"]),
        st.sampled_from("ab"),  # resource
        st.sampled_from("xy"),  # key
        st.integers(min_value=1, max_value=8),  # token
        st.sampled_from([None, b"", b"0", b"1"]),  # cas: expected value
        st.sampled_from([b"", b"0", b"1"]),  # new value
    ),
    max_size=30,
)


@settings(max_examples=100, deadline=None)
@given(ops=operations)
def test_restart_gives_back_the_acknowledged_state(
    ops: list[tuple[str, str, str, int, bytes | None, bytes]],
) -> None:
    async def scenario(directory: Path) -> None:
        values: dict[tuple[str, str], bytes] = {}
        highest: dict[str, int] = {}
        store = FencedStore(directory)
        await store.open()
        for kind, resource, key, token, expected, value in ops:
            ok = token >= highest.get(resource, 0)
            if kind == "cas":
                ok = ok and values.get((resource, key)) == expected
            try:
                if kind == "cas":
                    await store.compare_and_set(resource, key, expected, value, token)
                else:
                    await store.write(resource, key, value, token)
            except LockdError:
                assert not ok
            else:
                assert ok
                values[(resource, key)] = value
                highest[resource] = token
        await store.close()
        reopened = FencedStore(directory)
        await reopened.open()
        try:
            for resource in "ab":
                for key in "xy":
                    got = reopened.read(resource, key)
                    assert got == (values.get((resource, key)), highest.get(resource, 0))
        finally:
            await reopened.close()

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(Path(tmp)))
