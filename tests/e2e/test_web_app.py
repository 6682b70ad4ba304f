"""The web app in real headless Chromium (Debian's package, driven by Playwright), through Envoy
on the whole running platform: live prices, a suspension after a simulated goal, a bet placed,
accepted after the in-play delay and settled, a second one cashed out, and a network drop it recovers
from without reload.

The match is the test's own, pushed through the feed with a provider's token, so every step is
under its control; the simulator's matches run beside it as in `make run`."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from livebet.betting.v1 import wallet_service_pb2 as ws
from livebet.betting.v1 import wallet_service_pb2_grpc
from livebet.common.v1 import common_pb2
from livebet.feed.v1 import event_pb2 as ev
from livebet.feed.v1 import feed_service_pb2 as fs
from livebet.feed.v1 import feed_service_pb2_grpc
from livebet.odds.v1 import odds_service_pb2, odds_service_pb2_grpc

from mesh.supervisor import REPO_ROOT
from tests.component.test_feed_service import fixture, state
from tests.e2e.conftest import Mesh
from tests.e2e.test_edge_auth import bearer, token
from tests.helpers import wait_for

CHROMIUM = os.environ.get("LIVEBET_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
#: where the screenshots go (kept after the run; CI can upload them)
OUTPUT = Path(os.environ.get("LIVEBET_TEST_OUTPUT", REPO_ROOT / "test-output"))
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        message = f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run installs it)"
        if os.environ.get("LIVEBET_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


class Provider:
    """A feed provider pushing one match's events through Envoy with a provider (feed) token."""

    def __init__(self, mesh: Mesh) -> None:
        self.match_id = f"web:{uuid.uuid4().hex[:8]}"
        self.stub = feed_service_pb2_grpc.FeedServiceStub(grpc.insecure_channel(mesh.edge))
        self.md = bearer(token(mesh, "provider:e2e", "feed"))
        self.seq = 0

    def send(self, e: ev.FeedEvent) -> None:
        self.stub.PublishBatch(fs.PublishBatchRequest(provider="push", events=[e]), metadata=self.md, timeout=10)

    def live(self, minute: int, home: int = 0, away: int = 0) -> None:
        self.seq += 1
        self.send(state(self.match_id, self.seq, home, away, minute))

    def possible_goal(self, minute: int) -> None:
        self.seq += 1
        e = ev.FeedEvent(
            event_id=f"push:{self.match_id}:danger:{self.seq}",
            provider="push",
            match_id=self.match_id,
            sequence=self.seq,
        )
        e.danger.side, e.danger.level, e.danger.minute = common_pb2.SIDE_HOME, ev.DANGER_LEVEL_POSSIBLE_GOAL, minute
        self.send(e)

    def full_time(self, home: int, away: int) -> None:
        self.seq += 1
        e = ev.FeedEvent(
            event_id=f"push:{self.match_id}:ft:{self.seq}", provider="push", match_id=self.match_id, sequence=self.seq
        )
        s = e.match_state.state
        s.match_id, s.status, s.period = self.match_id, ev.MATCH_STATUS_ENDED, ev.PERIOD_FULL_TIME
        s.score.home, s.score.away, s.clock.minute = home, away, 90
        self.send(e)


def funded(mesh: Mesh, account: str) -> str:
    """A token for ``account``, with 100.00 EUR deposited through Envoy."""
    t = token(mesh, account)
    wallet = wallet_service_pb2_grpc.WalletServiceStub(grpc.insecure_channel(mesh.edge))
    deposit = ws.DepositRequest(request_id="w1", amount=common_pb2.Money(currency_code="EUR", minor_units=10_000))
    wallet.Deposit(deposit, metadata=bearer(t), timeout=10)
    return t


def test_live_odds_suspension_bet_settlement_and_reconnect_in_chromium(mesh: Mesh, browser: object) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    feed = Provider(mesh)
    feed.send(fixture(feed.match_id))
    feed.live(minute=5)
    odds = odds_service_pb2_grpc.OddsServiceStub(grpc.insecure_channel(mesh.edge))

    def priced() -> bool:
        try:
            snap = odds.GetOddsSnapshot(odds_service_pb2.GetOddsSnapshotRequest(match_id=feed.match_id), timeout=5)
        except grpc.RpcError:
            return False
        return snap.odds.minute == 5 and bool(snap.odds.markets)

    wait_for(priced, 30, interval=0.3, what="the test's match priced")

    account = f"web-{uuid.uuid4().hex[:6]}"
    t = funded(mesh, account)

    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"http://{mesh.edge}/#token={t}")
    card = page.locator(f'section.match[data-match="{feed.match_id}"]')
    home = card.locator(f'button.price[data-k="{feed.match_id}|1x2|home"]')
    page.wait_for_selector("#connection.live", timeout=20_000)
    card.wait_for(timeout=20_000)
    assert page.url.endswith("/")  # the token left the address bar
    assert page.locator("#account").inner_text() == account
    page.wait_for_function("document.querySelector('#balance').textContent.startsWith('100.00 EUR')", timeout=10_000)
    assert card.locator(".clock").inner_text() == "5'"

    # prices change in place as the match clock runs
    before = home.locator(".odds").inner_text()
    for minute in (15, 25, 35):
        feed.live(minute=minute)
    # the three updates may arrive as one delta or as several: wait for the last minute's
    page.wait_for_function(
        "([card, old]) => { const c = document.querySelector(card);"
        " return c?.querySelector('.clock').textContent === \"35'\""
        " && c.querySelector('button.price[data-k$=\"|1x2|home\"] .odds').textContent !== old; }",
        arg=[f'section.match[data-match="{feed.match_id}"]', before],
        timeout=10_000,
    )
    assert card.locator(".clock").inner_text() == "35'"
    assert home.locator(".odds").inner_text() != before

    # a possible goal suspends every market: greyed and not clickable
    feed.possible_goal(minute=36)
    card.locator(".market.open").first.wait_for(state="detached", timeout=10_000)
    assert card.locator(".market.suspended").count() >= 4
    assert home.is_disabled()
    page.screenshot(path=str(OUTPUT / "web-app-suspended.png"), full_page=False)
    # ... until the goal is confirmed: 1-0, prices back, the home side shorter
    suspended_home_price = home.locator(".odds").inner_text()
    feed.live(minute=36, home=1)
    card.locator(".score", has_text="1-0").wait_for(timeout=10_000)
    card.locator('.market.open[data-market="1x2"]').wait_for(timeout=10_000)
    assert float(home.locator(".odds").inner_text()) < float(suspended_home_price)

    # a single on the home side: pending with the in-play delay counting down, then accepted
    home.click()
    assert page.locator("#slip-legs li").count() == 1
    page.fill("#stake", "5.00")
    page.select_option("#policy", "3")  # any price
    assert page.locator("#slip-return").inner_text().endswith("EUR")
    page.click("#place")
    page.locator("#slip-result.ok").wait_for(timeout=10_000)
    bet = page.locator("#bets li.bet").first
    bet.wait_for(timeout=10_000)
    assert bet.get_attribute("data-status") in ("PENDING", "ACCEPTED")
    if bet.get_attribute("data-status") == "PENDING":
        assert page.locator("#bets .countdown").first.inner_text().endswith("s")
    page.locator('#bets li.bet[data-status="ACCEPTED"]').wait_for(timeout=20_000)
    page.wait_for_function("document.querySelector('#balance').textContent.startsWith('95.00 EUR')", timeout=10_000)

    # a network drop: the stream reconnects by itself and resumes (nothing missed, no reload)
    page.evaluate("window.__marker = 'same page'")
    page.context.set_offline(True)
    page.locator("#connection.reconnecting").wait_for(timeout=20_000)
    feed.live(minute=40, home=1)  # happens while the browser is offline
    page.context.set_offline(False)
    page.locator("#connection.live").wait_for(timeout=20_000)
    page.wait_for_function(
        f'document.querySelector(\'section.match[data-match="{feed.match_id}"] .clock\').textContent === "40\'"',
        timeout=20_000,
    )
    assert page.evaluate("window.__marker") == "same page"

    # a second single, on the draw, cashed out from the list of bets: its offer shows on a button,
    # the cash-out waits out the in-play delay, and the bet is closed and paid at once
    draw = card.locator(f'button.price[data-k="{feed.match_id}|1x2|draw"]')
    draw.click()
    page.fill("#stake", "2.00")
    page.click("#place")
    page.wait_for_function(
        "document.querySelectorAll('#bets li.bet[data-status=\"ACCEPTED\"]').length === 2", timeout=20_000
    )
    page.wait_for_function("document.querySelector('#balance').textContent.startsWith('93.00 EUR')", timeout=10_000)
    newest = page.locator("#bets li.bet").first
    button = newest.locator("button.cash-out")
    button.wait_for(timeout=10_000)
    assert button.inner_text().startswith("cash out ") and "EUR" in button.inner_text()
    button.click()
    page.locator('#bets li.bet[data-status="CASHED_OUT"]').wait_for(timeout=20_000)
    assert "cashed out · paid" in page.locator('#bets li.bet[data-status="CASHED_OUT"]').inner_text()
    page.wait_for_function("!document.querySelector('#balance').textContent.startsWith('93.00 EUR')", timeout=10_000)

    # a third single, on the away side, given an automatic cash-out: more than it can pay is refused
    # and said why; at one cent (any offer reaches it) the service cashes it out by itself
    away = card.locator(f'button.price[data-k="{feed.match_id}|1x2|away"]')
    away.click()
    page.fill("#stake", "1.00")
    page.click("#place")
    page.wait_for_function(
        "document.querySelectorAll('#bets li.bet[data-status=\"ACCEPTED\"]').length === 2", timeout=20_000
    )
    third = page.locator('#bets li.bet[data-status="ACCEPTED"]').first
    third.locator("button.auto").click()
    page.locator("#auto-form").wait_for(state="visible", timeout=5_000)
    page.fill("#auto-amount", "100000")
    page.click("#auto-form button[type=submit]")
    page.wait_for_function(
        "document.querySelector('#auto-result').textContent.includes('potential payout')", timeout=10_000
    )
    page.fill("#auto-amount", "0.01")
    page.click("#auto-form button[type=submit]")
    page.locator("#bets .auto", has_text="auto at 0.01 EUR").wait_for(timeout=10_000)
    feed.live(minute=41, home=1)  # the provider heard from again (silence suspends its markets): an offer
    page.wait_for_function(
        "document.querySelectorAll('#bets li.bet[data-status=\"CASHED_OUT\"]').length === 2", timeout=30_000
    )
    assert page.locator("#auto-form").is_hidden()
    page.screenshot(path=str(OUTPUT / "web-app-auto-cash-out.png"), full_page=True)

    # half of the first bet cashed out: it stays accepted on the other half, and says what was taken
    first = page.locator('#bets li.bet[data-status="ACCEPTED"]')
    before_half = page.locator("#balance").inner_text()
    first.locator("button.cash-out-half").click()
    first.locator(".partly", has_text="2.50 EUR cashed out for").wait_for(timeout=20_000)
    assert first.get_attribute("data-status") == "ACCEPTED" and "· 2.50 EUR" in first.inner_text()
    page.wait_for_function(
        "(old) => document.querySelector('#balance').textContent !== old", arg=before_half, timeout=10_000
    )
    before_full_time = page.locator("#balance").inner_text()

    # full time 1-0: the first bet is settled as won and paid; the cashed-out one stays as it was
    feed.full_time(1, 0)
    page.locator('#bets li.bet[data-status="SETTLED"]').wait_for(timeout=30_000)
    assert "WON" in page.locator('#bets li.bet[data-status="SETTLED"]').inner_text()
    assert "2.50 EUR cashed out for" in page.locator('#bets li.bet[data-status="SETTLED"]').inner_text()
    page.wait_for_function(
        "(old) => document.querySelector('#balance').textContent !== old", arg=before_full_time, timeout=10_000
    )
    assert page.locator('#bets li.bet[data-status="CASHED_OUT"]').count() == 2
    page.screenshot(path=str(OUTPUT / "web-app.png"), full_page=True)
    print(f"\nscreenshots: {OUTPUT / 'web-app.png'} and {OUTPUT / 'web-app-suspended.png'}")
    assert errors == [], errors


def test_play_safe_deposit_and_loss_limits_and_a_break_in_chromium(mesh: Mesh, browser: object) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    account = f"web-safe-{uuid.uuid4().hex[:6]}"
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))
    page.goto(f"http://{mesh.edge}/#token={token(mesh, account)}")

    def shows(selector: str, text: str) -> None:
        page.wait_for_function(
            "([s, t]) => document.querySelector(s)?.textContent.includes(t)", arg=[selector, text], timeout=15_000
        )

    shows("#safe-status", "Deposits per day: no limit")
    page.fill("#deposit-limit", "150")
    page.click("#deposit-limit-form button")
    shows("#safe-status", "Deposits per day: 150.00 EUR")
    page.click("#deposit")
    shows("#balance", "100.00 EUR")
    page.click("#deposit")  # 200 EUR in a day would pass the limit: refused, and said why
    shows("#deposit-error", "above your limit of 150.00 EUR")
    assert page.locator("#balance").inner_text().startswith("100.00 EUR")

    shows("#safe-status", "Losses per week: no limit")
    page.fill("#loss-limit", "abc")
    page.click("#loss-limit-form button")
    shows("#safe-result", "must be an amount")
    page.fill("#loss-limit", "40")
    page.click("#loss-limit-form button")
    shows("#safe-status", "Losses per week: 40.00 EUR")
    page.fill("#loss-limit", "")  # removing it is a loosening: it waits out the cooling-off
    page.click("#loss-limit-form button")
    shows("#safe-status", "… no limit from")
    assert "Losses per week: 40.00 EUR" in page.locator("#safe-status").inner_text()

    page.select_option("#break-days", "7")
    page.click("#break-form button")
    shows("#safe-status", "On a break until")
    assert dialogs and "cannot be undone" in dialogs[0]
    page.click("#deposit")
    shows("#deposit-error", "on a break")
    page.screenshot(path=str(OUTPUT / "web-app-play-safe.png"), full_page=True)
    assert errors == [], errors


def test_a_reality_check_covers_the_page_until_answered_in_chromium(mesh: Mesh, browser: object) -> None:
    """The page's clock is Playwright's: 16 minutes pass in a moment."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    feed = Provider(mesh)
    feed.send(fixture(feed.match_id))  # pre-match: a bet is accepted at once
    odds = odds_service_pb2_grpc.OddsServiceStub(grpc.insecure_channel(mesh.edge))

    def priced() -> bool:
        try:
            snap = odds.GetOddsSnapshot(odds_service_pb2.GetOddsSnapshotRequest(match_id=feed.match_id), timeout=5)
        except grpc.RpcError:
            return False
        return bool(snap.odds.markets)

    wait_for(priced, 30, interval=0.3, what="the test's match priced")
    t = funded(mesh, f"web-rc-{uuid.uuid4().hex[:6]}")

    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.clock.install()
    page.goto(f"http://{mesh.edge}/#token={t}")

    def shows(selector: str, text: str) -> None:
        page.wait_for_function(
            "([s, t]) => document.querySelector(s)?.textContent.includes(t)", arg=[selector, text], timeout=15_000
        )

    shows("#safe-status", "Reality check: never")
    # a bet placed before the check is set counts: the playing session started at sign-in
    page.locator(f'button.price[data-k="{feed.match_id}|1x2|home"]').click()
    page.fill("#stake", "4.00")
    page.click("#place")
    page.locator('#bets li.bet[data-status="ACCEPTED"]').wait_for(timeout=20_000)
    page.clock.run_for(2_000)  # the page's reality-check ticks run before the check is set
    page.select_option("#reality-every", "900")
    page.click("#reality-form button")
    shows("#safe-status", "Reality check: every 15 minutes")
    assert page.locator("#reality").is_hidden()

    page.clock.fast_forward("16:00")
    page.locator("#reality").wait_for(state="visible", timeout=10_000)
    shows("#reality-what", "playing for 16 minutes")
    shows("#reality-figures", "Bets placed: 1. Staked 4.00 EUR, returned 0.00 EUR: net -4.00 EUR")
    shows("#reality-figures", "(4.00 EUR still on open bets)")
    page.screenshot(path=str(OUTPUT / "web-app-reality-check.png"), full_page=True)
    page.click("#reality-continue")
    assert page.locator("#reality").is_hidden()

    page.clock.fast_forward("10:00")  # 10 minutes after the answer: not yet
    page.wait_for_timeout(1_500)
    assert page.locator("#reality").is_hidden()
    page.clock.fast_forward("06:00")
    page.locator("#reality").wait_for(state="visible", timeout=10_000)
    shows("#reality-what", "playing for 32 minutes")
    page.click("#reality-stop")
    shows("#signin-error", "you stopped at a reality check")
    assert page.locator("#reality").is_hidden() and page.locator("#signed-out").is_visible()
    assert errors == [], errors


def test_a_bet_builder_in_chromium(mesh: Mesh, browser: object) -> None:
    """Two outcomes of one match in the slip become a bet builder priced by the server; a leg of
    another match beside them cannot be placed; the bet is accepted and settled as won."""
    feed, other = Provider(mesh), Provider(mesh)
    feed.send(fixture(feed.match_id))
    other.send(fixture(other.match_id))
    t = funded(mesh, f"web-bb-{uuid.uuid4().hex[:6]}")

    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"http://{mesh.edge}/#token={t}")
    button = 'button.price[data-k="{}"]'
    home = page.locator(button.format(f"{feed.match_id}|1x2|home"))
    home.wait_for(timeout=30_000)
    home.click()
    page.locator(button.format(f"{feed.match_id}|btts|yes")).click()
    page.wait_for_function(
        "() => document.querySelector('#slip-kind').textContent.startsWith('Bet builder (2 legs')"
        " && /^[0-9]+[.][0-9]{2}$/.test(document.querySelector('#slip-odds').textContent)",
        timeout=10_000,
    )
    odds = page.locator("#slip-odds").inner_text()
    page.locator(button.format(f"{other.match_id}|1x2|home")).click()
    assert "combine only with each other" in page.locator("#slip-kind").inner_text()
    assert page.locator("#place").is_disabled()
    page.locator(button.format(f"{other.match_id}|1x2|home")).click()  # off the slip again
    page.wait_for_function("() => !document.querySelector('#place').disabled", timeout=10_000)
    page.fill("#stake", "3.00")
    page.click("#place")
    page.locator("#slip-result.ok").wait_for(timeout=10_000)
    placed = page.locator('#bets li.bet[data-status="ACCEPTED"]', has_text="Bet builder:")
    placed.wait_for(timeout=10_000)
    assert f"@ {odds}" in placed.inner_text() and "1x2 home + btts yes" in placed.inner_text()
    page.screenshot(path=str(OUTPUT / "web-app-bet-builder.png"), full_page=False)

    feed.full_time(2, 1)
    won = page.locator('#bets li.bet[data-status="SETTLED"]', has_text="Bet builder:")
    won.wait_for(timeout=30_000)
    assert "WON" in won.inner_text()
    assert errors == [], errors
