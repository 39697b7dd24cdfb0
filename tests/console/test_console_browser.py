"""The console in a real browser: Debian's headless Chromium, driven by Selenium through chromium-driver.

Each test starts a real server with its HTTP listener, puts it under load with
native clients (`console_kit.Load`), and clicks through the page as an operator
would; what a click did is checked with the native client. Screenshots are
saved in the test's directory, and in ``$DBQUEUE_CONSOLE_SCREENSHOTS`` when set
(docs/console.md shows them). Skipped when Selenium, Chromium or
chromium-driver is missing (CI installs all three).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from console_kit import Load, browser_missing, key, save_screenshot, start_browser, wait_for

from dbqueue import Client

pytestmark = pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or "")

TOKEN = "browser-test-token"
XSS_NAME = '<img src=x onerror="window.__xss=1">"><script>window.__xss=2</script>'
XSS_BODY = b'<script>window.__xss=3</script><img src=x onerror="window.__xss=4"><b>bold?</b>'
INVALID_UTF8 = b"\xff\xfe\xfd<script>window.__xss=5</script>\x00\x01"


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    browser = start_browser()
    browser.set_page_load_timeout(20)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def page(driver: Any) -> Iterator[Any]:
    """The browser, its cookies and page state left behind by the test before, its log emptied."""
    driver.get_log("browser")
    yield driver
    driver.delete_all_cookies()
    driver.get("about:blank")


def by(driver: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def all_by(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def cell(driver: Any, queue: str, field: str) -> str:
    return str(by(driver, f'tr[data-queue="{key(queue)}"] td.f-{field}').text)


def number(text: str) -> int:
    return int(text.replace(",", ""))


def confirm(driver: Any) -> None:
    wait_for(lambda: by(driver, "#confirm").get_attribute("open") is not None, what="the confirmation")
    by(driver, "#confirm-ok").click()
    # Closed before the test goes on, so the next confirmation found open is the next action's own.
    wait_for(lambda: by(driver, "#confirm").get_attribute("open") is None, what="the confirmation closed")


def flash(driver: Any, containing: str) -> str:
    """The message shown once it says ``containing`` (an earlier one may still be on screen)."""
    return str(
        wait_for(
            lambda: by(driver, "#flash").is_displayed() and containing in (text := by(driver, "#flash").text) and text,
            what=f"a message saying {containing!r}",
        )
    )


def no_script_ran(driver: Any) -> None:
    assert driver.execute_script("return window.__xss === undefined"), driver.execute_script("return window.__xss")


def test_the_overview_shows_the_right_counts_and_they_change_under_load(
    page: Any, server_factory: Callable[..., Any], tmp_path: Path
) -> None:
    thread = server_factory(http_port=0)
    with Client.connect(thread.address) as native:
        native.create("orders-dlq")
        native.create("orders", max_deliveries=5, dead_letter_queue="orders-dlq")
        native.create("billing", capacity=1000)
        native.create("emails")
        for name in ("thumbnails", "reports", "webhooks", "audit", "search-index", "payments"):
            native.create(name)
        native.send_batch("billing", [b'{"invoice": %d}' % n for n in range(37)])
        held = [native.read("billing") for _ in range(2)]
        load = Load(thread.address, "orders").start()
        emails = Load(thread.address, "emails", send_every=0.01, read_every=0.03).start()
        try:
            began = time.monotonic()
            page.get(f"http://127.0.0.1:{thread.server.http_port}/")
            wait_for(lambda: cell(page, "billing", "ready") == "35", what="billing's ready count")
            assert cell(page, "billing", "in_flight") == "2"
            assert cell(page, "billing", "capacity").startswith("37 / 1,000")
            assert by(page, f'tr[data-queue="{key("orders")}"] td.f-dead_letter_queue').text == "orders-dlq"
            # Under load: the figures move without a reload, and the rates are not zero.
            wait_for(lambda: float(cell(page, "orders", "sent")) > 0, what="a sent rate")
            wait_for(lambda: float(cell(page, "orders", "confirmed")) > 0, what="a confirmed rate")
            seen = {cell(page, "emails", "ready")}
            wait_for(
                lambda: seen.add(cell(page, "emails", "ready")) or len(seen) >= 3, timeout=15, what="emails to move"
            )
            sparkline = by(page, f'tr[data-queue="{key("orders")}"] svg.spark polyline')
            assert len(sparkline.get_attribute("points").split()) >= 2
            time.sleep(max(0.0, 8.0 - (time.monotonic() - began)))  # some seconds of sparkline for the picture
            save_screenshot(page, tmp_path, "console-overview")
            # A queue's page under the same load: the last two minutes' charts, its messages peeked.
            page.get(f"http://127.0.0.1:{thread.server.http_port}/#/queue/{key('orders')}")
            wait_for(lambda: by(page, "#queue-name").text == "orders", what="the orders page")
            by(page, 'input[name="span"][value="fine"]').click()
            wait_for(lambda: all_by(page, "#chart-rates polyline"), what="the charts")
            by(page, "#peek-count").clear()
            by(page, "#peek-count").send_keys("4")
            by(page, "#peek").click()
            wait_for(lambda: len(all_by(page, "#messages article")) >= 1, what="peeked messages")
            page.execute_script("window.scrollTo(0, 0)")
            page.set_window_size(1440, 1500)  # the whole page, its messages too
            try:
                save_screenshot(page, tmp_path, "console-queue")
            finally:
                page.set_window_size(1440, 1000)
            page.get(f"http://127.0.0.1:{thread.server.http_port}/")
            # The counts right: the page's and the native client's agree once the load stops.
            load.stop()
            emails.stop()
            expected = {queue["name"]: queue for queue in native.list_queues()}
            for name in ("orders", "emails", "billing"):
                wait_for(
                    lambda name=name: (
                        number(cell(page, name, "ready")) == expected[name]["ready"]
                        and number(cell(page, name, "in_flight")) == expected[name]["in_flight"]
                    ),
                    what=f"{name}'s figures to settle",
                )
            totals = by(page, "#totals td.f-ready").text
            assert number(totals) == sum(queue["ready"] for queue in expected.values())
            # Filter and sort.
            by(page, "#filter").send_keys("ord")
            wait_for(
                lambda: (
                    [row.get_attribute("data-queue") for row in all_by(page, "#queues tbody tr")]
                    == [key("orders"), key("orders-dlq")]
                ),
                what="the filter",
            )
            by(page, "#filter").clear()
            by(page, "#filter").send_keys(" ")
            by(page, "#filter").clear()
            by(page, 'th[data-key="ready"]').click()

            def ready_column() -> list[int]:
                return [number(td.text) for td in all_by(page, "#queues tbody td.f-ready")]

            wait_for(
                lambda: (column := ready_column()) == sorted(column, reverse=True) and column[0] > column[-1],
                what="the rows sorted by ready, descending",
            )
            by(page, 'th[data-key="ready"]').click()
            wait_for(lambda: (column := ready_column()) == sorted(column), what="the rows sorted by ready, ascending")
        finally:
            load.stop()
            emails.stop()
            for message in held:
                if message is not None:
                    native.confirm(message.id)


def test_purge_redrive_and_delete_by_clicking(page: Any, server_factory: Callable[..., Any], tmp_path: Path) -> None:
    thread = server_factory(http_port=0)
    base = f"http://127.0.0.1:{thread.server.http_port}/"
    with Client.connect(thread.address) as native:
        native.create("jobs-dlq")
        native.create("jobs", max_deliveries=1, dead_letter_queue="jobs-dlq")
        native.create("scratch")
        for n in range(5):
            native.send("jobs", b'{"job": %d, "attempt": "first"}' % n)
        for _ in range(5):
            message = native.read("jobs")
            assert message is not None
            native.release(message.id)  # its one delivery spent: a dead letter
        native.send_batch("scratch", [b"x"] * 25)
        for n in range(3):
            native.send("jobs", b'{"job": %d, "fresh": true}' % (100 + n))
        in_flight = native.read("jobs")
        load = Load(thread.address, "scratch", send_every=0.05, read_every=1.0).start()
        try:
            # The dead-letter queue's page: its charts, its messages with their origin, then a redrive of 2.
            page.get(base + f"#/queue/{key('jobs-dlq')}")
            wait_for(lambda: by(page, "#queue-name").text == "jobs-dlq", what="the queue page")
            by(page, "#peek").click()
            wait_for(lambda: len(all_by(page, "#messages article")) == 5, what="five dead letters")
            origin = all_by(page, "#messages article .origin")[0].text
            assert "jobs" in origin and "1 deliveries there" in origin
            assert '"job": 0' in all_by(page, "#messages pre")[0].text  # pretty JSON
            wait_for(lambda: by(page, "#redrive-form").is_displayed(), what="the redrive form")
            by(page, 'input[name="redrive-count"][value="n"]').click()
            by(page, "#redrive-n").clear()
            by(page, "#redrive-n").send_keys("2")
            by(page, "#redrive-submit").click()
            confirm(page)
            flash(page, "moved 2 messages")
            assert (native.stats("jobs-dlq")["ready"], native.stats("jobs")["ready"]) == (3, 4)
            save_screenshot(page, tmp_path, "console-redrive")
            by(page, 'input[name="redrive-count"][value="all"]').click()
            by(page, "#redrive-submit").click()
            confirm(page)
            flash(page, "moved 3 messages")
            assert (native.stats("jobs-dlq")["ready"], native.stats("jobs")["ready"]) == (0, 7)

            # The source's page: its in-flight message marked among the ready ones.
            page.get(base + f"#/queue/{key('jobs')}")
            wait_for(lambda: by(page, "#queue-name").text == "jobs", what="the jobs page")
            by(page, "#peek").click()
            states = wait_for(
                lambda: [a.get_attribute("class") for a in all_by(page, "#messages article")], what="peeked messages"
            )
            assert states.count("message in_flight") == 1 and states.count("message ready") == 7
            assert native.stats("jobs")["ready"] == 7  # the peek delivered nothing

            # Purge, once cancelled and once confirmed; the in-flight message stays.
            by(page, "#purge").click()
            wait_for(lambda: by(page, "#confirm").get_attribute("open") is not None, what="the confirmation")
            by(page, "#confirm-cancel").click()
            time.sleep(0.3)
            assert native.stats("jobs")["ready"] == 7
            by(page, "#purge").click()
            confirm(page)
            flash(page, "purged 7 messages")
            stats = native.stats("jobs")
            assert (stats["ready"], stats["in_flight"], stats["purged"]) == (0, 1, 7)
            assert in_flight is not None
            native.confirm(in_flight.id)

            # Delete a queue under load, by clicking.
            page.get(base + f"#/queue/{key('scratch')}")
            wait_for(lambda: by(page, "#queue-name").text == "scratch", what="the scratch page")
            by(page, "#delete").click()
            confirm(page)
            wait_for(lambda: by(page, "#overview-view").is_displayed(), what="the overview after the delete")
            assert "scratch" not in [queue["name"] for queue in native.list_queues()]
            wait_for(lambda: not all_by(page, f'tr[data-queue="{key("scratch")}"]'), what="the row to go")
        finally:
            load.stop()


def test_create_and_send_by_clicking(page: Any, server_factory: Callable[..., Any]) -> None:
    thread = server_factory(http_port=0)
    with Client.connect(thread.address) as native:
        native.create("existing-dlq")
        page.get(f"http://127.0.0.1:{thread.server.http_port}/")
        by(page, "#show-create").click()
        by(page, "#create-name").send_keys("made-here")
        for field, value in (("capacity", "50"), ("max-deliveries", "4"), ("visibility", "12.5")):
            by(page, f"#create-{field}").clear()
            by(page, f"#create-{field}").send_keys(value)
        wait_for(lambda: len(all_by(page, "#create-dead-letter option")) == 2, what="the dead-letter choices")
        from selenium.webdriver.support.ui import Select

        Select(by(page, "#create-dead-letter")).select_by_visible_text("existing-dlq")
        by(page, "#create-submit").click()
        flash(page, "created queue 'made-here'")
        stats = native.stats("made-here")
        assert (stats["capacity"], stats["max_deliveries"], stats["dead_letter_queue"]) == (50, 4, "existing-dlq")
        assert stats["visibility_timeout_ms"] == 12500
        wait_for(lambda: all_by(page, f'tr[data-queue="{key("made-here")}"] a'), what="the new row")
        page.get(f"http://127.0.0.1:{thread.server.http_port}/#/queue/{key('made-here')}")
        wait_for(lambda: by(page, "#queue-name").text == "made-here", what="its page")
        by(page, "#send-data").send_keys('{"hello": "from the console"}')
        by(page, "#send-submit").click()
        flash(page, "sent message")
        message = native.read("made-here")
        assert message is not None and message.data == b'{"hello": "from the console"}'
        # A refusal is shown as the server words it.
        page.get(f"http://127.0.0.1:{thread.server.http_port}/")
        by(page, "#show-create").click()
        by(page, "#create-name").send_keys("x" * 255)
        page.execute_script("document.getElementById('create-name').value = 'y'.repeat(256)")
        by(page, "#create-submit").click()
        assert flash(page, "1-255 bytes").startswith("Refused: ")


def test_long_names_wrap_and_the_page_never_scrolls_sideways(page: Any, server_factory: Callable[..., Any]) -> None:
    thread = server_factory(http_port=0)
    long_names = ["_kombu.binding|celery.pidbox.a-long-exchange-name-" + "x" * 40, "notifications-" * 8 + "dead"]
    with Client.connect(thread.address) as native:
        for name in long_names:
            native.create(name)
    try:
        for width in (1400, 1000):
            page.set_window_size(width, 800)
            page.get(f"http://127.0.0.1:{thread.server.http_port}/")
            wait_for(lambda: len(all_by(page, "#queues tbody tr")) == 2, what="both rows")
            # The page is never wider than its window (a wide table scrolls inside its own box) ...
            assert page.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
            # ... and a long name wraps inside its cell instead of running over the next one.
            for name in long_names:
                name_cell = by(page, f'tr[data-queue="{key(name)}"] td.name')
                ready_cell = by(page, f'tr[data-queue="{key(name)}"] td.f-ready')
                assert name_cell.rect["x"] + name_cell.rect["width"] <= ready_cell.rect["x"] + 1
                link = by(page, f'tr[data-queue="{key(name)}"] td.name a')
                assert link.rect["x"] + link.rect["width"] <= ready_cell.rect["x"] + 1, f"{name} overflows its cell"
    finally:
        page.set_window_size(1440, 1000)  # start_browser's size, for the tests after this one


def test_the_login_blocks_a_wrong_token(page: Any, server_factory: Callable[..., Any], tmp_path: Path) -> None:
    thread = server_factory(http_port=0, auth_token=TOKEN.encode())
    with Client.connect(thread.address, token=TOKEN) as native:
        native.create("secret-queue")
    page.get(f"http://127.0.0.1:{thread.server.http_port}/")
    wait_for(lambda: by(page, "#login-view").is_displayed(), what="the login form")
    by(page, "#login-token").send_keys("not the token")
    by(page, "#login-submit").click()
    wait_for(lambda: by(page, "#login-error").is_displayed(), timeout=5, what="the refusal")
    assert by(page, "#login-error").text == "Wrong token."
    assert not by(page, "#overview-view").is_displayed()
    assert "secret-queue" not in page.page_source
    assert not [c for c in page.get_cookies() if c["name"] == "dbqueue_console"]
    save_screenshot(page, tmp_path, "console-login")
    by(page, "#login-token").clear()
    by(page, "#login-token").send_keys(TOKEN)
    by(page, "#login-submit").click()
    wait_for(lambda: all_by(page, f'tr[data-queue="{key("secret-queue")}"]'), what="the overview after login")
    cookie = next(c for c in page.get_cookies() if c["name"] == "dbqueue_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.execute_script("return document.cookie") == ""  # no script can read the session
    by(page, "#logout").click()
    wait_for(lambda: by(page, "#login-view").is_displayed(), what="the login form after logout")
    page.refresh()
    wait_for(lambda: by(page, "#login-view").is_displayed(), what="the login form after a reload")


def test_html_script_and_invalid_utf8_are_shown_inert(
    page: Any, server_factory: Callable[..., Any], tmp_path: Path
) -> None:
    thread = server_factory(http_port=0)
    with Client.connect(thread.address) as native:
        native.create(XSS_NAME)
        native.send(XSS_NAME, XSS_BODY)
        native.send(XSS_NAME, INVALID_UTF8)
        native.send(XSS_NAME, b'{"html": "<img src=x onerror=\\"window.__xss=6\\">"}')
    page.get(f"http://127.0.0.1:{thread.server.http_port}/")
    link = wait_for(lambda: all_by(page, f'tr[data-queue="{key(XSS_NAME)}"] td.name a'), what="the row")[0]
    assert link.text == XSS_NAME
    no_script_ran(page)
    link.click()
    wait_for(lambda: by(page, "#queue-name").text == XSS_NAME, what="the queue page")
    assert page.title.startswith(XSS_NAME)
    by(page, "#peek").click()
    bodies = wait_for(lambda: [pre.text for pre in all_by(page, "#messages pre")], what="the messages")
    assert len(bodies) == 3
    assert bodies[0] == XSS_BODY.decode()  # the markup, as text
    assert bodies[1].startswith("00000000  ff fe fd 3c 73 63 72 69")  # invalid UTF-8: a hex dump
    assert "window.__xss=6" in bodies[2] and bodies[2].startswith("{\n")  # JSON, pretty
    assert not all_by(page, "#messages img, #messages script, #messages b, #queue-name *, td.name img")
    # Asked for as text, invalid UTF-8 shows replacement characters, still as text.
    from selenium.webdriver.support.ui import Select

    Select(by(page, "#peek-format")).select_by_value("text")
    by(page, "#peek").click()
    wait_for(lambda: "\ufffd" in all_by(page, "#messages pre")[1].text, what="the text view")
    no_script_ran(page)
    # The confirmation names the queue as text too.
    by(page, "#purge").click()
    wait_for(lambda: by(page, "#confirm").get_attribute("open") is not None, what="the confirmation")
    assert XSS_NAME in by(page, "#confirm-text").text and not all_by(page, "#confirm-text *")
    save_screenshot(page, tmp_path, "console-inert")
    by(page, "#confirm-cancel").click()
    no_script_ran(page)
    # Nothing was even attempted: no image fetched, no script refused by the Content-Security-Policy.
    severe = [entry["message"] for entry in page.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, severe


def test_a_group_is_shown_member_by_member_with_its_totals(
    page: Any, server_factory: Callable[..., Any], tmp_path: Path
) -> None:
    threads = [server_factory(member_index=n, **({"http_port": 0} if n == 0 else {})) for n in range(3)]
    addresses = [thread.address for thread in threads]
    for thread in threads:
        thread.call(lambda thread=thread: setattr(thread.server, "members", list(addresses)))
    for n, thread in enumerate(threads):
        with Client.connect(thread.address) as native:
            for name in ("orders", "emails"):
                native.create(name)
                native.send_batch(name, [b"m"] * (n + 1) * (5 if name == "orders" else 2))
    load = Load(threads[1].address, "orders", send_every=0.02, read_every=0.02).start()
    try:
        page.get(f"http://127.0.0.1:{threads[0].server.http_port}/")
        wait_for(lambda: by(page, "#group-view").is_displayed(), what="the group")
        wait_for(lambda: by(page, '#members tr[data-member="2"] td.f-ready').text == "21", what="member 2's figures")
        wait_for(
            lambda: by(page, f'#group-queues tr[data-queue="{key("emails")}"] td.f-ready').text == "12",
            what="the group's emails",
        )
        assert by(page, f'#group-queues tr[data-queue="{key("emails")}"] td.f-member-2').text == "6"
        time.sleep(3)
        page.set_window_size(1440, 1100)
        save_screenshot(page, tmp_path, "console-group")
    finally:
        page.set_window_size(1440, 1000)
        load.stop()
