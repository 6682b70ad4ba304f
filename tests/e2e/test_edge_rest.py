"""REST/JSON for partners, through Envoy's gRPC-JSON transcoder, with a plain HTTP client."""

from __future__ import annotations

import http.client
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from google.protobuf import json_format

from tests.e2e.conftest import Mesh
from tests.e2e.test_edge_auth import open_selection, token
from tests.helpers import wait_for


def call(
    mesh: Mesh, method: str, path: str, body: Any = None, token: str | None = None, raw: bytes | None = None
) -> tuple[int, Any]:
    host, port = mesh.edge.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    try:
        return resp.status, json.loads(text) if text else None
    except json.JSONDecodeError:
        return resp.status, text


def test_public_reads_need_no_token(mesh: Mesh) -> None:
    match_id = open_selection(mesh).outcome.market.match_id
    status, page = call(mesh, "GET", "/v1/matches?page_size=50")
    assert status == 200, page
    assert match_id in {m["matchId"] for m in page["matches"]}
    status, snap = call(mesh, "GET", f"/v1/matches/{match_id}/odds")
    assert status == 200 and snap["odds"]["matchId"] == match_id and snap["odds"]["markets"]
    status, state = call(mesh, "GET", f"/v1/matches/{match_id}/state")
    assert status == 200 and state["fixture"]["matchId"] == match_id
    status, err = call(mesh, "GET", "/v1/matches/no-such-match/odds")
    assert status == 404 and err["code"] == 5 and "no-such-match" in err["message"]


def test_a_bet_over_rest_from_deposit_to_reading_it_back(mesh: Mesh) -> None:
    account = f"rest-{uuid.uuid4().hex[:6]}"
    t = token(mesh, account)
    status, dep = call(mesh, "POST", "/v1/wallet/deposits", {"requestId": "d1", "amount": _eur(5000)}, t)
    assert status == 200, dep
    assert dep["balance"]["minorUnits"] == "5000"
    selection = json.loads(json_format.MessageToJson(open_selection(mesh)))
    request = {
        "requestId": uuid.uuid4().hex,
        "selections": [selection],
        "stake": _eur(250),
        "oddsChangePolicy": "ODDS_CHANGE_POLICY_ANY",
    }
    status, placed = call(mesh, "POST", "/v1/bets", request, t)
    assert status == 200, placed
    bet = placed["bet"]
    assert bet["accountId"] == account and bet["stake"]["minorUnits"] == "250"
    # the same request again is the same bet (idempotent by requestId)
    assert call(mesh, "POST", "/v1/bets", request, t) == (200, placed)
    status, got = call(mesh, "GET", f"/v1/bets/{bet['betId']}", token=t)
    assert status == 200 and got["bet"]["betId"] == bet["betId"]
    status, page = call(mesh, "GET", "/v1/bets?page_size=10", token=t)
    assert status == 200 and [b["betId"] for b in page["bets"]] == [bet["betId"]]
    status, bal = call(mesh, "GET", "/v1/wallet/balance/EUR", token=t)
    assert status == 200 and int(bal["available"]["minorUnits"]) + int(bal["held"]["minorUnits"]) == 5000


def test_a_bet_cashed_out_in_two_parts_over_rest(mesh: Mesh) -> None:
    t = token(mesh, f"rest-{uuid.uuid4().hex[:6]}")
    assert call(mesh, "POST", "/v1/wallet/deposits", {"requestId": "d1", "amount": _eur(5000)}, t)[0] == 200
    bets: list[str] = []
    got: list[Any] = []

    def accepted() -> bool:  # a live match: a bet may be rejected by a goal in its delay; then another
        if bets:
            status = call(mesh, "GET", f"/v1/bets/{bets[-1]}", token=t)[1]["bet"]["status"]
            if status in ("BET_STATUS_PENDING", "BET_STATUS_ACCEPTED"):
                return status == "BET_STATUS_ACCEPTED"
        selection = json.loads(json_format.MessageToJson(open_selection(mesh)))
        request = {"requestId": uuid.uuid4().hex, "selections": [selection], "stake": _eur(500)}
        status, placed = call(mesh, "POST", "/v1/bets", {**request, "oddsChangePolicy": "ODDS_CHANGE_POLICY_ANY"}, t)
        if status == 200:
            bets.append(placed["bet"]["betId"])
        return False

    def cashed_out() -> bool:  # the simulator may suspend the market at any moment: then again
        status, offer = call(mesh, "GET", f"/v1/bets/{bets[-1]}/cash-out", token=t)
        if status != 200:
            assert status == 400 and offer["code"] == 9, (status, offer)  # FAILED_PRECONDITION
            return False
        assert offer["amount"]["currencyCode"] == "EUR" and int(offer["amount"]["minorUnits"]) > 0
        body = {"requestId": uuid.uuid4().hex, "amount": _eur(1)}
        if not got:  # first 2.00 of the 5.00 (a partial cash-out), then the rest
            body["stake"] = _eur(200)
        status, done = call(mesh, "POST", f"/v1/bets/{bets[-1]}:cashOut", body, t)
        if status != 200:
            assert status == 400 and done["code"] == 9, (status, done)
            return False
        got.append(done["bet"])
        return len(got) == 2

    wait_for(accepted, 60, interval=0.5, what="a bet accepted")
    # its offer, streamed: newline-delimited JSON, the first line with the bet's offer (or why none)
    host, port = mesh.edge.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
    path = f"/v1/cash-out-offers:watch?bet_ids={bets[-1]}&interval=0.2s"
    conn.request("GET", path, headers={"authorization": f"Bearer {t}"})
    resp = conn.getresponse()
    assert resp.status == 200
    (offer,) = json.loads(resp.readline())["offers"]
    conn.close()
    assert offer["betId"] == bets[-1] and not offer["closed"]
    amount = int(offer.get("amount", {}).get("minorUnits", 0))
    assert amount > 0 or offer["unavailableReason"] == "REJECT_REASON_MARKET_NOT_OPEN", offer
    wait_for(cashed_out, 60, interval=0.5, what="a cash-out through REST")
    part, bet = got
    assert part["status"] == "BET_STATUS_ACCEPTED" and part["stake"]["minorUnits"] == "300"
    assert part["cashedOutStake"]["minorUnits"] == "200"
    part_paid = int(part["cashedOutAmount"]["minorUnits"])
    assert bet["status"] == "BET_STATUS_CASHED_OUT" and int(bet["payout"]["minorUnits"]) > 0
    assert bet["cashedOutAmount"]["minorUnits"] == str(part_paid)
    status, bal = call(mesh, "GET", "/v1/wallet/balance/EUR", token=t)
    # bets rejected in their delay gave their stakes back; the cashed-out one holds nothing
    assert status == 200 and int(bal["held"].get("minorUnits", "0")) == 0
    assert int(bal["available"]["minorUnits"]) == 5000 - 500 + part_paid + int(bet["payout"]["minorUnits"])


def test_an_automatic_cash_out_set_over_rest_is_taken_by_the_service(mesh: Mesh) -> None:
    t = token(mesh, f"rest-{uuid.uuid4().hex[:6]}")
    assert call(mesh, "POST", "/v1/wallet/deposits", {"requestId": "d1", "amount": _eur(5000)}, t)[0] == 200
    selection = json.loads(json_format.MessageToJson(open_selection(mesh)))
    request = {"requestId": "b1", "selections": [selection], "stake": _eur(500)}
    status, placed = call(mesh, "POST", "/v1/bets", {**request, "oddsChangePolicy": "ODDS_CHANGE_POLICY_ANY"}, t)
    assert status == 200, placed
    bet_id = placed["bet"]["betId"]
    # more than the bet can ever pay: refused, with the field
    too_much = int(placed["bet"]["potentialPayout"]["minorUnits"]) + 1
    status, err = call(mesh, "PUT", f"/v1/bets/{bet_id}/auto-cash-out", {"amount": _eur(too_much)}, t)
    assert status == 400 and err["code"] == 3 and "potential payout" in json.dumps(err), (status, err)
    # one cent: any offer reaches it, so the service cashes the bet out by itself once it is accepted
    # and its market open (a live match: the bet may be rejected in its delay; then nothing happens)
    status, got = call(mesh, "PUT", f"/v1/bets/{bet_id}/auto-cash-out", {"amount": _eur(1)}, t)
    assert status == 200 and got["bet"]["autoCashOut"]["minorUnits"] == "1", (status, got)

    def closed() -> str | None:
        s = call(mesh, "GET", f"/v1/bets/{bet_id}", token=t)[1]["bet"]["status"]
        return s if s in ("BET_STATUS_CASHED_OUT", "BET_STATUS_REJECTED") else None

    wait_for(closed, 60, interval=0.5, what="the bet cashed out (or rejected in its delay)")
    bet = call(mesh, "GET", f"/v1/bets/{bet_id}", token=t)[1]["bet"]
    if bet["status"] == "BET_STATUS_CASHED_OUT":
        assert int(bet["payout"]["minorUnits"]) >= 1 and "autoCashOut" not in bet
        status, bal = call(mesh, "GET", "/v1/wallet/balance/EUR", token=t)
        assert int(bal["available"]["minorUnits"]) == 5000 - 500 + int(bet["payout"]["minorUnits"])
    else:  # rejected in its delay: no rule is kept on a closed bet
        status, err = call(mesh, "PUT", f"/v1/bets/{bet_id}/auto-cash-out", {"amount": _eur(1)}, t)
        assert status == 400 and err["code"] == 9, (status, err)


def test_rest_errors_are_http_statuses_with_a_reason(mesh: Mesh) -> None:
    t = token(mesh, f"rest-{uuid.uuid4().hex[:6]}")
    status, err = call(mesh, "POST", "/v1/bets", {"requestId": "x"})
    assert status == 401, err
    status, err = call(mesh, "POST", "/v1/bets", {"requestId": "x", "stake": {"currencyCode": "EUR"}}, t)
    assert status == 400 and err is not None and err["code"] == 3 and "selections" in err["message"], (status, err)
    status, err = call(mesh, "POST", "/v1/bets", raw=b"{not json", token=t)
    assert status == 400, err
    status, err = call(mesh, "GET", "/v1/matches?no_such_param=1")
    assert status == 400, err
    status, err = call(mesh, "GET", f"/v1/bets/{uuid.uuid4()}", token=t)
    assert status == 404, err


def test_rest_rate_limit_is_429_and_places_nothing(mesh: Mesh) -> None:
    t = token(mesh, f"rest-flood-{uuid.uuid4().hex[:6]}")
    call(mesh, "POST", "/v1/wallet/deposits", {"requestId": "d1", "amount": _eur(1_000_000)}, t)
    selection = json.loads(json_format.MessageToJson(open_selection(mesh)))

    def one(i: int) -> int:
        body = {
            "requestId": f"f{i}",
            "selections": [selection],
            "stake": _eur(100),
            "oddsChangePolicy": "ODDS_CHANGE_POLICY_ANY",
        }
        return call(mesh, "POST", "/v1/bets", body, t)[0]

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(one, range(60)))
    assert statuses.count(429) >= 60 - 20 - 10, statuses
    status, page = call(mesh, "GET", "/v1/bets?page_size=100", token=t)
    assert status == 200 and len(page["bets"]) == statuses.count(200)


def test_watch_odds_streams_newline_delimited_json(mesh: Mesh) -> None:
    match_id = open_selection(mesh).outcome.market.match_id
    host, port = mesh.edge.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
    body = json.dumps({"matchIds": [match_id], "heartbeatIntervalMs": 300})
    conn.request("POST", "/v1/odds:watch", body=body, headers={"content-type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    first = json.loads(resp.readline())
    assert first["image"]["matchId"] == match_id
    following = [json.loads(resp.readline()) for _ in range(2)]  # each line one message, as it comes
    assert all({"delta", "heartbeat", "image"} & set(m) for m in following), following
    conn.close()


def _eur(units: int) -> dict[str, str]:
    return {"currencyCode": "EUR", "minorUnits": str(units)}


def test_player_protection_over_rest(mesh: Mesh) -> None:
    t = token(mesh, f"rest-rg-{uuid.uuid4().hex[:6]}")
    status, got = call(mesh, "PUT", "/v1/wallet/deposit-limits", {"limits": {"maxDaily": _eur(3000)}}, t)
    assert status == 200 and got["limits"]["maxDaily"]["decimal"] == "30.00", (status, got)
    assert call(mesh, "POST", "/v1/wallet/deposits", {"requestId": "d1", "amount": _eur(2000)}, t)[0] == 200
    status, err = call(mesh, "POST", "/v1/wallet/deposits", {"requestId": "d2", "amount": _eur(2000)}, t)
    assert status == 400 and err["code"] == 9 and "up to 10.00 EUR" in err["message"], (status, err)
    status, got = call(mesh, "PUT", "/v1/wallet/loss-limits", {"limits": {"maxWeekly": _eur(5000)}}, t)
    assert status == 200 and got["limits"]["maxWeekly"]["decimal"] == "50.00", (status, got)
    status, got = call(mesh, "POST", "/v1/wallet/breaks", {"duration": "86400s"}, t)
    assert status == 200 and got["until"], (status, got)
    status, got = call(mesh, "GET", "/v1/wallet/limits?currency_code=EUR", token=t)
    assert status == 200 and got["deposit"]["maxDaily"]["decimal"] == "30.00" and got["breakUntil"], got
    assert got["loss"]["maxWeekly"]["decimal"] == "50.00", got
    status, err = call(mesh, "POST", "/v1/wallet/deposits", {"requestId": "d3", "amount": _eur(100)}, t)
    assert status == 400 and "break" in err["message"], (status, err)


_COMBINABLE = ("1x2", "btts", "odd_even", "double_chance")


def _builder_outcomes(mesh: Mesh) -> list[dict[str, Any]]:
    """Two priced outcomes of open, combinable markets of one live simulated match (empty if none)."""
    status, page = call(mesh, "GET", "/v1/matches?page_size=50")
    assert status == 200, page
    for m in page["matches"]:
        status, snap = call(mesh, "GET", f"/v1/matches/{m['matchId']}/odds")
        if status != 200:
            continue
        picked = []
        for market in snap["odds"].get("markets", []):
            priced = [o for o in market.get("outcomes", []) if o.get("odds", {}).get("decimal")]
            if market.get("status") == "MARKET_STATUS_OPEN" and market["ref"]["marketType"] in _COMBINABLE and priced:
                ref = {"matchId": m["matchId"], "marketKey": market["ref"]["marketKey"]}
                picked.append({"market": ref, "outcomeId": priced[0]["outcomeId"]})
        if len(picked) >= 2:
            return picked[:2]
    return []


def test_a_bet_builder_quoted_and_placed_over_rest(mesh: Mesh) -> None:
    account = f"rest-bb-{uuid.uuid4().hex[:6]}"
    t = token(mesh, account)
    assert call(mesh, "POST", "/v1/wallet/deposits", {"requestId": "d1", "amount": _eur(5000)}, t)[0] == 200
    placed: list[dict[str, Any]] = []
    quotes: list[dict[str, Any]] = []

    def attempt() -> bool:  # a goal may suspend the markets between the snapshot and the calls
        outcomes = _builder_outcomes(mesh)
        if not outcomes:
            return False
        status, quote = call(mesh, "POST", "/v1/bet-builder:quote", {"outcomes": outcomes}, t)
        if status != 200:
            assert status == 400, quote  # FAILED_PRECONDITION: not open, or not offered together
            return False
        selections = [
            {"outcome": o, "marketVersion": v} for o, v in zip(outcomes, quote["marketVersions"], strict=True)
        ]
        body = {
            "requestId": uuid.uuid4().hex,
            "selections": selections,
            "stake": _eur(200),
            "oddsChangePolicy": "ODDS_CHANGE_POLICY_ANY",
            "betBuilderOdds": quote["odds"],
        }
        status, got = call(mesh, "POST", "/v1/bets", body, t)
        if status != 200:
            assert status == 400, got
            return False
        quotes.append(quote)
        placed.append(got["bet"])
        return True

    wait_for(attempt, 60, interval=0.5, what="a bet builder quoted and placed")
    bet, quote = placed[0], quotes[0]
    assert bet["betBuilder"] is True and len(bet["selections"]) == 2
    assert bet["status"] in ("BET_STATUS_PENDING", "BET_STATUS_ACCEPTED")
    assert [s["requestedOdds"]["decimal"] for s in bet["selections"]] == [quote["odds"]["decimal"]] * 2
    assert len(quote["singleOdds"]) == 2 and int(quote["matchVersion"]) > 0
    status, got = call(mesh, "GET", f"/v1/bets/{bet['betId']}", token=t)
    assert status == 200 and got["bet"]["betBuilder"] is True
    # one outcome is not a bet builder: a 400 naming the field
    status, err = call(mesh, "POST", "/v1/bet-builder:quote", {"outcomes": _builder_outcomes(mesh)[:1]}, t)
    assert status == 400 and "2-10 outcomes" in err["message"], err
