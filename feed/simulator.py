"""``python -m feed.simulator``: live football matches pushed into the feed service over gRPC.

    python -m feed.simulator --target 127.0.0.1:50100 [--matches 8] [--seed 1] [--speed 60]
                             [--rounds 0] [--uof] [--stagger 120]

``--speed`` is match seconds per real second (60: a 90-minute match in about 90 s plus breaks);
``--rounds 0`` plays new rounds of matches for ever (a new seed each round); ``--uof`` sends the
matches as UOF XML (fixtures, odds_change, bet_stop, alive) instead of normalised events, through
the same ingestion path a real provider uses. Deterministic for a seed (:mod:`feed.domain.simulator`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import grpc
from livebet.common.v1 import common_pb2
from livebet.feed.v1 import event_pb2 as ev
from livebet.feed.v1 import feed_service_pb2 as fs
from livebet.feed.v1 import feed_service_pb2_grpc

from feed.domain.simulator import Incident, Kind, SimMatch, simulate
from mesh import access
from pricing.football import POISSON, MatchState, Period, score_model
from pricing.margin import apply_margin
from pricing.markets import fair_probabilities

log = logging.getLogger("feed.simulator")
PROVIDER = "sim"

_PERIOD = {
    Period.FIRST_HALF: ev.PERIOD_FIRST_HALF,
    Period.HALF_TIME: ev.PERIOD_HALFTIME,
    Period.SECOND_HALF: ev.PERIOD_SECOND_HALF,
    Period.FULL_TIME: ev.PERIOD_FULL_TIME,
}
_DANGER = {
    Kind.DANGEROUS_ATTACK: ev.DANGER_LEVEL_DANGEROUS_ATTACK,
    Kind.POSSIBLE_GOAL: ev.DANGER_LEVEL_POSSIBLE_GOAL,
    Kind.SAFE: ev.DANGER_LEVEL_SAFE,
}
_SIDE = {"home": common_pb2.SIDE_HOME, "away": common_pb2.SIDE_AWAY, "": common_pb2.SIDE_UNSPECIFIED}


def prematch_odds(m: SimMatch, margin: float = 0.04) -> tuple[list[str], list[str]]:
    """1X2 and over/under 2.5 odds for the fixture, from its expected goals with a margin."""
    f = fair_probabilities(score_model(m.home_xg, m.away_xg, MatchState(), POISSON))
    one = apply_margin([f["1x2"]["home"], f["1x2"]["draw"], f["1x2"]["away"]], margin, "shin")
    ou = apply_margin([f["total:2.5"]["over"], f["total:2.5"]["under"]], margin, "shin")
    return [f"{o:.2f}" for o in one], [f"{o:.2f}" for o in ou]


class Normaliser:
    """Incidents → normalised events, with per-match sequence numbers and running card counts."""

    def __init__(self) -> None:
        self.seq: dict[str, int] = {}
        self.yellows: dict[str, list[int]] = {}

    def _event(self, m: SimMatch, suffix: str, at_ms: int) -> ev.FeedEvent:
        n = self.seq[m.match_id] = self.seq.get(m.match_id, 0) + 1
        e = ev.FeedEvent(
            event_id=f"{PROVIDER}:{m.match_id}:{n}:{suffix}", provider=PROVIDER, match_id=m.match_id, sequence=n
        )
        e.produced_at.FromMilliseconds(at_ms)
        return e

    def fixture(self, m: SimMatch, start_ms: int) -> ev.FeedEvent:
        e = self._event(m, "fixture", int(time.time() * 1000))
        f = e.fixture_change.fixture
        f.match_id, f.sport, f.competition = m.match_id, common_pb2.SPORT_FOOTBALL, "livebet simulated league"
        f.home.team_id, f.home.name = m.home.lower().replace(" ", "-"), m.home
        f.away.team_id, f.away.name = m.away.lower().replace(" ", "-"), m.away
        f.start_time.FromMilliseconds(start_ms)
        one, ou = prematch_odds(m)
        o = f.pre_match_odds
        o.home.decimal, o.draw.decimal, o.away.decimal = one
        o.over_2_5.decimal, o.under_2_5.decimal = ou
        return e

    def state(self, m: SimMatch, i: Incident, at_ms: int) -> ev.FeedEvent:
        e = self._event(m, f"state:{i.kind.value}", at_ms)
        s = e.match_state.state
        s.match_id = m.match_id
        s.status = ev.MATCH_STATUS_ENDED if i.kind is Kind.FULL_TIME else ev.MATCH_STATUS_LIVE
        s.period = _PERIOD[i.period]
        s.clock.minute = i.minute
        s.clock.stoppage_announced = i.stoppage
        s.clock.running = i.period in (Period.FIRST_HALF, Period.SECOND_HALF)
        s.score.home, s.score.away = i.home_goals, i.away_goals
        y = self.yellows.get(m.match_id, [0, 0])
        s.home_cards.yellow, s.away_cards.yellow = y
        s.home_cards.red, s.away_cards.red = i.home_reds, i.away_reds
        s.betting_open = i.kind is not Kind.FULL_TIME
        return e

    def events(self, m: SimMatch, i: Incident, at_ms: int) -> list[ev.FeedEvent]:
        out: list[ev.FeedEvent] = []
        side = _SIDE[i.side]
        if i.kind in _DANGER:
            e = self._event(m, i.kind.value, at_ms)
            e.danger.side, e.danger.level, e.danger.minute = side, _DANGER[i.kind], i.minute
            out.append(e)
        elif i.kind is Kind.GOAL:
            e = self._event(m, "goal", at_ms)
            e.goal.side, e.goal.minute = side, i.minute
            e.goal.score.home, e.goal.score.away = i.home_goals, i.away_goals
            out += [e, self.state(m, i, at_ms)]
        elif i.kind in (Kind.YELLOW, Kind.RED):
            if i.kind is Kind.YELLOW:
                y = self.yellows.setdefault(m.match_id, [0, 0])
                y[0 if i.side == "home" else 1] += 1
            e = self._event(m, i.kind.value, at_ms)
            e.card.side, e.card.minute = side, i.minute
            e.card.card_type = ev.CARD_TYPE_YELLOW if i.kind is Kind.YELLOW else ev.CARD_TYPE_RED
            out += [e, self.state(m, i, at_ms)]
        elif i.kind in (Kind.PENALTY_AWARDED, Kind.PENALTY_MISSED):
            e = self._event(m, i.kind.value, at_ms)
            e.penalty.side, e.penalty.minute = side, i.minute
            e.penalty.phase = ev.PENALTY_PHASE_AWARDED if i.kind is Kind.PENALTY_AWARDED else ev.PENALTY_PHASE_MISSED
            out.append(e)
        elif i.kind in (Kind.VAR_STARTED, Kind.VAR_STANDS, Kind.VAR_OVERTURNED):
            e = self._event(m, i.kind.value, at_ms)
            e.var_check.subject, e.var_check.side, e.var_check.minute = "goal", side, i.minute
            e.var_check.phase = {
                Kind.VAR_STARTED: ev.VAR_PHASE_STARTED,
                Kind.VAR_STANDS: ev.VAR_PHASE_DECISION_STANDS,
                Kind.VAR_OVERTURNED: ev.VAR_PHASE_OVERTURNED,
            }[i.kind]
            out.append(e)
        else:  # kick-off, clock, stoppage, half time, second half, full time
            out.append(self.state(m, i, at_ms))
        return out


def uof_odds_change(e: ev.FeedEvent) -> bytes:
    """A match state as the UOF ``odds_change`` a provider would send."""
    s = e.match_state.state
    status = "3" if s.status == ev.MATCH_STATUS_ENDED else "1"
    match_status = {
        ev.PERIOD_FIRST_HALF: "6",
        ev.PERIOD_SECOND_HALF: "7",
        ev.PERIOD_HALFTIME: "31",
        ev.PERIOD_FULL_TIME: "100",
    }.get(s.period, "0")
    return (
        f'<odds_change event_id="{e.match_id}" timestamp="{e.produced_at.ToMilliseconds()}" product="1">'
        f'<sport_event_status status="{status}" match_status="{match_status}" home_score="{s.score.home}" '
        f'away_score="{s.score.away}"><clock match_time="{s.clock.minute}:00"/><statistics>'
        f'<yellow_cards home="{s.home_cards.yellow}" away="{s.away_cards.yellow}"/>'
        f'<red_cards home="{s.home_cards.red}" away="{s.away_cards.red}"/></statistics></sport_event_status>'
        f"</odds_change>"
    ).encode()


def uof_fixture(e: ev.FeedEvent) -> bytes:
    f = e.fixture_change.fixture
    start = datetime.fromtimestamp(f.start_time.seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    return (
        f'<fixtures_fixture><fixture id="{f.match_id}" start_time="{start}"><tournament name="{f.competition}">'
        f'<sport id="sr:sport:1"/></tournament><competitors>'
        f'<competitor id="{f.home.team_id}" name="{f.home.name}" qualifier="home"/>'
        f'<competitor id="{f.away.team_id}" name="{f.away.name}" qualifier="away"/>'
        f"</competitors></fixture></fixtures_fixture>"
    ).encode()


def schedule(matches: list[SimMatch]) -> Iterator[tuple[int, SimMatch, Incident]]:
    """Every incident of every match in match-time order: (absolute second, match, incident)."""
    items = [(m.kick_off_offset + i.second, k, m, i) for k, m in enumerate(matches) for i in m.incidents]
    items.sort(key=lambda t: (t[0], t[1]))
    for second, _, m, i in items:
        yield second, m, i


async def run(
    target: str, n: int, seed: int, speed: float, rounds: int, uof: bool, stagger: int, token: str = ""
) -> None:
    # through the edge with a provider's token, or straight to a feed service as the platform's own tool
    if token:
        channel = grpc.aio.insecure_channel(target)
        md: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),)
    else:
        channel, md = access.aio_channel(target, "svc:simulator", [access.FEED]), ()
    stub = feed_service_pb2_grpc.FeedServiceStub(channel)
    round_no = 0
    last_alive = 0.0

    async def send(events: list[ev.FeedEvent]) -> None:
        if uof:
            raw = []
            for e in events:
                kind = e.WhichOneof("payload")
                if kind == "fixture_change":
                    raw.append(uof_fixture(e))
                elif kind == "match_state":
                    raw.append(uof_odds_change(e))
                elif kind == "danger" and e.danger.level == ev.DANGER_LEVEL_POSSIBLE_GOAL:
                    raw.append(
                        f'<bet_stop event_id="{e.match_id}" timestamp="{e.produced_at.ToMilliseconds()}" '
                        f'product="1" groups="all"/>'.encode()
                    )
            request = fs.PublishBatchRequest(
                provider=PROVIDER, raw_messages=[fs.RawMessage(format=fs.RAW_FORMAT_UOF_XML, payload=r) for r in raw]
            )
        else:
            request = fs.PublishBatchRequest(provider=PROVIDER, events=events)
        await publish(request)

    async def publish(request: fs.PublishBatchRequest) -> None:
        for attempt in range(30):  # the feed may be restarting: retry (ids make it idempotent)
            try:
                await stub.PublishBatch(request, timeout=10, metadata=md)
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    log.error("batch refused: %s %s", exc.code().name, exc.details())
                    return
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))

    while rounds == 0 or round_no < rounds:
        round_seed = seed + round_no
        matches = simulate(n, round_seed, stagger)
        norm = Normaliser()
        start = time.time()
        await send([norm.fixture(m, int((start + m.kick_off_offset / speed) * 1000)) for m in matches])
        if round_no == 0:
            # like a provider recovering after a (re)connect: its state is sent, then snapshot_complete,
            # which lifts a "provider down" the feed may have declared while the simulator was away
            done = ev.FeedEvent(event_id=f"{PROVIDER}:snapshot_complete:{int(start * 1000)}", provider=PROVIDER)
            done.snapshot_complete.request_id = "startup"
            done.produced_at.FromMilliseconds(int(start * 1000))
            await publish(fs.PublishBatchRequest(provider=PROVIDER, events=[done]))
        pending: list[ev.FeedEvent] = []
        for second, m, i in schedule(matches):
            due = start + second / speed
            now = time.time()
            if due > now:
                if pending:
                    await send(pending)
                    pending = []
                if now - last_alive > 5:
                    alive = ev.FeedEvent(event_id=f"{PROVIDER}:alive:{int(now * 1000)}", provider=PROVIDER)
                    alive.provider_alive.subscribed = True
                    alive.produced_at.FromMilliseconds(int(now * 1000))
                    if not uof:
                        await send([alive])
                    last_alive = now
                await asyncio.sleep(due - time.time())
            pending += norm.events(m, i, int(due * 1000))
        if pending:
            await send(pending)
        log.info("round %d finished", round_no)
        round_no += 1
    await channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m feed.simulator", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default="127.0.0.1:50100", help="the feed service (or Envoy) host:port")
    parser.add_argument("--token", default="", help="a token with the feed role, to publish through Envoy")
    parser.add_argument("--matches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--speed", type=float, default=60.0, help="match seconds per real second (default 60)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds of matches; 0 = for ever")
    parser.add_argument("--stagger", type=int, default=120, help="match seconds between kick-offs")
    parser.add_argument("--uof", action="store_true", help="send UOF XML instead of normalised events")
    args = parser.parse_args(argv)
    if args.matches < 1 or args.speed <= 0:
        parser.error("--matches must be at least 1 and --speed positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(args.target, args.matches, args.seed, args.speed, args.rounds, args.uof, args.stagger, args.token))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
