"""A client built from an address instead of connected: a clear TypeError saying how, at once."""

from __future__ import annotations

import pytest

from dbqueue import AsyncClient, Client, Pipeline


@pytest.mark.parametrize("kind", [Client, Pipeline])
@pytest.mark.parametrize("address", ["127.0.0.1:3003", ("127.0.0.1", 3003), b"127.0.0.1:3003"])
def test_a_blocking_client_built_from_an_address_says_to_connect(kind: type, address: object) -> None:
    with pytest.raises(TypeError, match=rf"use {kind.__name__}\.connect\("):
        kind(address)


def test_an_asyncio_client_built_from_an_address_says_to_connect() -> None:
    with pytest.raises(TypeError, match=r"use await AsyncClient\.connect\('127.0.0.1:3003'\)"):
        AsyncClient("127.0.0.1:3003")  # type: ignore[arg-type]
