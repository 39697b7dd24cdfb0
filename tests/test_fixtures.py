"""The test harness itself: the server fixture must fail a test whose server loop saw an unhandled exception."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dbqueue import Client, ConnectionLost
from dbqueue.server.session import Session

if TYPE_CHECKING:
    from conftest import ServerThread


def test_server_fixture_fails_tests_that_leave_loop_exceptions(pytester: pytest.Pytester) -> None:
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(
        """
        def test_boom(server):
            server.loop.call_soon_threadsafe(lambda: 1 / 0)
            server.call(lambda: None)

        def test_clean(server):
            assert server.server.port > 0

        def test_boom_but_taken(server):
            server.loop.call_soon_threadsafe(lambda: 1 / 0)
            assert len(server.take_errors()) == 1
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_boom*", "*ZeroDivisionError*"])


def test_an_exception_in_a_session_callback_is_recorded(server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Session, frames: list) -> list[bytes]:
        raise RuntimeError("handler bug")

    client = Client.connect(server.address)  # Hello is answered before the handler breaks
    monkeypatch.setattr(Session, "handle", broken)
    with pytest.raises(ConnectionLost):
        client.create("q")
    client.close()
    errors = server.take_errors()
    assert [type(context.get("exception")) for context in errors] == [RuntimeError]
