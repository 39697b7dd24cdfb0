"""`dbqueue stats --watch`: the screen as a pure function (80 columns whatever the names and figures, rates
from the counters), and the command itself riding out a server that stops and comes back."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from rich.cells import cell_len

from dbqueue.report import Sample, abbreviate, fit_number, printable, queue_lines, queue_rates, watch_frame
from server_process import ServerProcess
from test_cli_commands import clean_environment

if TYPE_CHECKING:
    from conftest import ServerThread

CLOCK = "2026-05-01 12:34:56"


def queue(name: str, **figures: int) -> dict[str, Any]:
    stats = dict.fromkeys(("ready", "in_flight", "delayed", "enqueued", "confirmed", "requeued"), 0)
    stats.update(figures)
    stats["name"] = name
    return stats


LONG = "orders-for-the-european-warehouse-in-rotterdam-that-ships-on-tuesdays"
WIDE = "日本語のキューの名前はとても長いですからね"
HUGE = 18_446_744_073_709_551_615  # the largest counter the wire carries


def test_every_line_fits_80_columns_whatever_the_names_and_the_figures() -> None:
    before = Sample(0.0, (queue(LONG, enqueued=0), queue(WIDE), queue("jobs", enqueued=HUGE - 10**15)))
    after = Sample(
        1.0,
        (
            queue(LONG, ready=HUGE, in_flight=HUGE, delayed=HUGE, enqueued=HUGE, confirmed=HUGE, requeued=HUGE),
            queue(WIDE, ready=123_456_789),
            queue("jobs", enqueued=HUGE),
            queue("x" * 255),
        ),
    )
    title = "dbqueue group of 3 (" + "very-long-host-name.example.internal:3003" * 3 + ", …)"
    status = "reconnecting… (" + "a long reason " * 20 + ")"
    for width in (66, 80, 100, 120):
        for height in (None, 5, 40):
            lines = watch_frame(title, CLOCK, after, before, status, width=width, height=height)
            assert all(cell_len(line) <= width for line in lines), (width, height, lines)
            assert lines[0].endswith(CLOCK)  # the time, top right
    lines = watch_frame(title, CLOCK, after, before, "every 2 s", width=80)
    assert all(cell_len(line) <= 80 for line in lines)
    by_start = {line.split()[0]: line for line in lines[2:]}
    long_row = next(line for start, line in by_start.items() if start.startswith("orders-for"))
    assert "…" in long_row.split()[0] and long_row.split()[0].endswith("tuesdays"[-3:])  # start and end kept
    assert "18.4E" in long_row  # a huge figure, scaled to fit its column
    assert lines[-1] == "every 2 s"
    assert lines[-2].startswith("total (4 queues)")


def test_names_are_abbreviated_in_the_middle_and_made_safe_for_a_terminal() -> None:
    assert abbreviate("short", 10) == "short"
    assert abbreviate("abcdefghijklmnopqrstuvwxyz", 11) == "abcde…vwxyz"
    assert cell_len(abbreviate(WIDE, 11)) <= 11 and abbreviate(WIDE, 11).startswith("日本")
    assert printable("evil\x1b[2Jname\nnext\u202e") == "evil?[2Jname?next?"
    assert "\x1b" not in "".join(watch_frame("t", CLOCK, Sample(0.0, (queue("\x1b]0;pwned\x07"),)), None, "s"))


def test_figures_fit_their_column() -> None:
    assert fit_number(0, 8) == "0"
    assert fit_number(1234567, 9) == "1,234,567"
    assert fit_number(12_345_678, 9) == "12.3M"
    assert fit_number(9_999_999, 8) == "10.0M"
    assert fit_number(HUGE, 8) == "18.4E"
    assert fit_number(2.5, 8) == "2.5"
    assert fit_number(None, 8) == fit_number(-3, 8) == "-"
    for value in (0, 7, 999, 10**6, 10**9 - 1, 10**12 + 1, 10**15, HUGE, 10**30):
        for width in (5, 8, 9):
            assert len(fit_number(value, width)) <= width, (value, width)


def test_rates_come_from_the_counters_between_two_refreshes() -> None:
    before = Sample(10.0, (queue("a", enqueued=100, confirmed=50, requeued=0), queue("reset", enqueued=1000)))
    after = Sample(
        12.0,
        (queue("a", enqueued=300, confirmed=60, requeued=4), queue("reset", enqueued=10), queue("new", enqueued=5)),
    )
    rates = queue_rates(before, after)
    assert rates["a"] == (100.0, 5.0, 2.0)
    assert rates["reset"] == (None, None, None)  # a counter went back: the server restarted
    assert rates["new"] == (None, None, None)
    assert queue_rates(None, after)["a"] == (None, None, None)
    lines = watch_frame("dbqueue x", CLOCK, after, before, "every 2 s")
    row = next(line for line in lines if line.startswith("a "))
    assert row.split()[-3:] == ["100", "5", "2"]
    assert lines[-2].split()[-3:] == ["100", "5", "2"]  # the total adds the rates known


def test_rows_that_do_not_fit_the_screen_are_counted() -> None:
    sample = Sample(0.0, tuple(queue(f"q{i:02}") for i in range(30)))
    lines = watch_frame("t", CLOCK, sample, None, "s", height=10)
    assert len(lines) <= 10
    assert any("and 25 more queues" in line for line in lines), lines
    empty = watch_frame("t", CLOCK, Sample(0.0, ()), None, "s")
    assert "(no queues)" in empty


def test_the_static_table_takes_more_columns_on_a_wider_screen() -> None:
    rows: list[tuple[str, dict[str, Any] | str | None]] = [
        (
            LONG,
            {**queue(LONG, ready=HUGE), "dead_lettered": 1, "consumers": 2, "waiting": 3, "purged": 4, "capacity": 5},
        ),
        ("  127.0.0.1:3003", None),
        ("127.0.0.1:3004", "down: connection refused"),
    ]
    narrow = queue_lines(rows, width=80)
    wide = queue_lines(rows, width=200)
    assert all(cell_len(line) <= 80 for line in narrow) and all(cell_len(line) <= 200 for line in wide)
    assert "dead-lettered" not in narrow[0] and "capacity" in wide[0]
    assert narrow[2].split()[1:] == ["-"] * 6
    assert narrow[3].endswith("down: connection refused")


# --- the command, against a server that stops and comes back -------------------------------------------


def wait_for(condition: Callable[[], bool], what: str, output: Path, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{output.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)


def test_watch_rides_out_a_server_restart(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    output = tmp_path / "watch.out"
    watch = None
    try:
        with server.client() as client:
            client.create("jobs")
            client.send("jobs", b"one")
        with open(output, "wb") as out:
            watch = subprocess.Popen(
                [sys.executable, "-m", "dbqueue.cli", "stats", "--watch", "0.2", "--address", server.address],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=clean_environment(),
            )

        def frames() -> list[str]:
            return [frame for frame in output.read_text(errors="replace").split("\n\n") if frame.strip()]

        wait_for(lambda: any("\njobs " in frame for frame in frames()), "a frame showing the queue", output)
        server.terminate()
        wait_for(lambda: "reconnecting…" in frames()[-1], "the watch to say it reconnects", output)
        time.sleep(0.6)  # a few refreshes without a server
        assert watch.poll() is None, output.read_text()
        server.start()
        with server.client() as client:
            client.send("jobs", b"two")  # the store brought the queue and its first message back

        def resumed() -> bool:
            shown = frames()
            last_down = max(i for i, frame in enumerate(shown) if "reconnecting…" in frame)
            return any(_ready_of("jobs", frame) == 2 for frame in shown[last_down + 1 :])

        wait_for(resumed, "a frame after the restart showing both messages", output)
        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=10) == 0
    finally:
        if watch is not None and watch.poll() is None:
            watch.kill()
            watch.wait()
        server.close()
    text = output.read_text()
    assert "Traceback" not in text
    assert all(cell_len(line) <= 80 for line in text.splitlines()), text
    assert any(line.startswith(f"dbqueue {server.address} ") for line in text.splitlines())


def _ready_of(name: str, frame: str) -> int | None:
    for line in frame.splitlines():
        if line.startswith(name + " "):
            return int(line.split()[1].replace(",", ""))
    return None


def test_watch_as_json_lines(server: ServerThread, tmp_path: Path) -> None:
    from dbqueue import Client

    with Client.connect(server.address) as client:
        client.create("jobs")
        client.send("jobs", b"x")
    watch = subprocess.Popen(
        [sys.executable, "-m", "dbqueue.cli", "stats", "--watch", "0.2", "--json", "--address", server.address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_environment(),
    )
    assert watch.stdout is not None
    lines = [watch.stdout.readline() for _ in range(3)]
    watch.send_signal(signal.SIGINT)
    _, stderr = watch.communicate(timeout=10)
    assert watch.returncode == 0 and not stderr, stderr
    shown = [json.loads(line) for line in lines]
    assert all(sample["queues"][0]["name"] == "jobs" and sample["queues"][0]["ready"] == 1 for sample in shown)
    # ISO 8601 to the second, with the local time's offset (2026-05-01T12:34:56+02:00): comparable across machines.
    import datetime

    stamps = [datetime.datetime.fromisoformat(sample["time"]) for sample in shown]
    assert all(stamp.tzinfo is not None and stamp.microsecond == 0 for stamp in stamps), shown
    assert all(abs(stamp.timestamp() - time.time()) < 60 for stamp in stamps)


def test_the_watch_shows_the_age_of_each_queues_oldest_ready_message() -> None:
    sample = Sample(
        0.0,
        (queue("jobs", ready=3, oldest_ready_age_ms=12_500), queue("idle"), queue("old", oldest_ready_age_ms=725_000)),
    )
    for width in (66, 80):
        lines = watch_frame("t", CLOCK, sample, None, "s", width=width)
        assert lines[1].split()[:6] == ["queue", "ready", "in", "flight", "delayed", "oldest"]
        rows = {line.split()[0]: line.split() for line in lines[2:5]}
        assert (rows["jobs"][4], rows["idle"][4], rows["old"][4]) == ("12s", "-", "12m05s")
        assert lines[5].startswith("tot") and "12m05s" in lines[5].split()  # the total: the oldest of all
    wide = queue_lines([("jobs", queue("jobs", oldest_ready_age_ms=12_500))], width=85)
    assert wide[0].split()[-1] == "oldest" and wide[1].split()[-1] == "12s"
