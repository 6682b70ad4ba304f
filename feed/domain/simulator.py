"""Match simulator (pure, deterministic for a seed): N football matches as incident timelines.

Each match gets teams, a kick-off and pre-match expected goals drawn from the seed; its incidents
come from the model's own intensity profile (:mod:`pricing.football`): goals at a rate that rises
through the match and reacts to red cards, dangerous attacks and possible goals before goals (and
some without a goal), yellow and red cards, penalties (three in four scored), VAR checks (one goal
in ten checked, a fifth of those overturned), half time, stoppage time announced at 45' and 90',
full time. Time is match seconds; a driver turns it into wall-clock time at any speed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import Enum

from pricing.football import INPLAY, MatchState, Period, remaining_means

# the model's whole-match intensity in minute-weights, stoppage included (as pricing.football)
_TOTAL_WEIGHT = 90 + INPLAY.first_half_stoppage + INPLAY.second_half_stoppage * (1 + INPLAY.profile_slope / 2)
_PENALTY_SHARE = 0.1  # of goal chances that are penalties
_PENALTY_SCORED = 0.75
_SCORED_SHARE = 1 - _PENALTY_SHARE * (1 - _PENALTY_SCORED)  # chances that end in a goal

TEAMS = (
    "Arsenal",
    "Aston Villa",
    "Bournemouth",
    "Brentford",
    "Brighton",
    "Chelsea",
    "Crystal Palace",
    "Everton",
    "Fulham",
    "Ipswich",
    "Leicester",
    "Liverpool",
    "Man City",
    "Man United",
    "Newcastle",
    "Nott'm Forest",
    "Southampton",
    "Tottenham",
    "West Ham",
    "Wolves",
)


class Kind(Enum):
    KICK_OFF = "kick_off"
    CLOCK = "clock"  # a state update every match minute
    DANGEROUS_ATTACK = "dangerous_attack"
    POSSIBLE_GOAL = "possible_goal"
    SAFE = "safe"
    GOAL = "goal"
    YELLOW = "yellow"
    RED = "red"
    PENALTY_AWARDED = "penalty_awarded"
    PENALTY_MISSED = "penalty_missed"
    VAR_STARTED = "var_started"
    VAR_STANDS = "var_stands"
    VAR_OVERTURNED = "var_overturned"
    STOPPAGE_ANNOUNCED = "stoppage_announced"
    HALF_TIME = "half_time"
    SECOND_HALF = "second_half"
    FULL_TIME = "full_time"


@dataclass(frozen=True)
class Incident:
    second: int  # match seconds since kick-off, first-half stoppage included
    kind: Kind
    side: str = ""  # "home" / "away" / ""
    minute: int = 0  # match clock minute shown
    home_goals: int = 0
    away_goals: int = 0
    home_reds: int = 0
    away_reds: int = 0
    period: Period = Period.FIRST_HALF
    stoppage: int = 0  # announced stoppage of the current half, minutes


@dataclass
class SimMatch:
    match_id: str
    home: str
    away: str
    home_xg: float
    away_xg: float
    kick_off_offset: int  # seconds after the simulation starts
    incidents: list[Incident] = field(default_factory=list)

    @property
    def final_score(self) -> tuple[int, int]:
        last = self.incidents[-1]
        return last.home_goals, last.away_goals


def _clock_minute(second_in_half: int, half: int) -> int:
    return min(45, second_in_half // 60) + (45 if half == 2 else 0)


def simulate_match(
    rng: random.Random, match_id: str, home: str, away: str, home_xg: float, away_xg: float, kick_off_offset: int = 0
) -> SimMatch:
    m = SimMatch(match_id, home, away, home_xg, away_xg, kick_off_offset)
    score = {"home": 0, "away": 0}
    reds = {"home": 0, "away": 0}
    out = m.incidents
    stoppages = (rng.randint(1, 4), rng.randint(3, 8))
    t0 = 0
    period = Period.FIRST_HALF
    announced = 0
    half = 1
    length = 0

    def emit(at: int, kind: Kind, side: str = "") -> None:
        """An incident at half-second ``at`` (capped to the half), with the running score and cards."""
        at = min(at, length - 1) if length else at
        fixed = {Kind.HALF_TIME: 45, Kind.SECOND_HALF: 45, Kind.FULL_TIME: 90}
        minute = fixed.get(kind, _clock_minute(at, half))
        out.append(
            Incident(
                t0 + at, kind, side, minute, score["home"], score["away"], reds["home"], reds["away"], period, announced
            )
        )

    def goal(at: int, side: str) -> None:
        score[side] += 1
        emit(at, Kind.GOAL, side)

    emit(0, Kind.KICK_OFF)
    for half, period in ((1, Period.FIRST_HALF), (2, Period.SECOND_HALF)):
        length = (45 + stoppages[half - 1]) * 60
        announced = 0
        s = 0
        last_clock = -1
        cached: tuple[tuple[int, int, int], dict[str, float]] | None = None
        while s < length:
            clock = _clock_minute(s, half)
            if s // 60 != last_clock:  # a state update every match minute (stoppage minutes too)
                last_clock = s // 60
                if s:
                    emit(s, Kind.CLOCK)
            if s >= 45 * 60 and not announced:
                announced = stoppages[half - 1]
                emit(s, Kind.STOPPAGE_ANNOUNCED)
            # intensities per second from the model's profile with the red-card effects (per minute)
            key = (clock, reds["home"], reds["away"])
            if cached is None or cached[0] != key:
                st = MatchState(minute=float(clock), home_red_cards=key[1], away_red_cards=key[2], period=period)
                h_rate, a_rate = remaining_means(home_xg, away_xg, st, INPLAY, share=1.0)
                weight = (1 + INPLAY.profile_slope * (clock / 90 - 0.5)) / (_TOTAL_WEIGHT * 60 * _SCORED_SHARE)
                cached = (key, {"home": h_rate * weight, "away": a_rate * weight})
            for side, rate in cached[1].items():
                r = rng.random()
                if r < rate and rng.random() < _PENALTY_SHARE:  # a penalty: awarded, then scored or missed
                    emit(s, Kind.PENALTY_AWARDED, side)
                    taken = min(s + rng.randint(40, 90), length - 1)
                    if rng.random() < _PENALTY_SCORED:
                        goal(taken, side)
                    else:
                        emit(taken, Kind.PENALTY_MISSED, side)
                    s = taken
                elif r < rate:  # a chance that goes in: danger, possible goal, maybe VAR, goal
                    scored = min(s + rng.randint(8, 25), length - 1)
                    emit(s, Kind.DANGEROUS_ATTACK, side)
                    emit(min(s + rng.randint(3, 7), scored), Kind.POSSIBLE_GOAL, side)
                    s = scored
                    if rng.random() < 0.1:  # checked by VAR; a fifth of those are overturned
                        emit(scored, Kind.VAR_STARTED, side)
                        if rng.random() < 0.2:
                            emit(scored, Kind.VAR_OVERTURNED, side)
                            continue
                        emit(scored, Kind.VAR_STANDS, side)
                    goal(scored, side)
                elif r < rate + 1 / 150:  # a dangerous attack every couple of minutes per side
                    emit(s, Kind.DANGEROUS_ATTACK, side)
                    if rng.random() < 0.15:
                        emit(s + 4, Kind.POSSIBLE_GOAL, side)
                    emit(s + 12, Kind.SAFE, side)
                elif r < rate + 1 / 150 + 2.0 / 5400:  # ~2 yellow cards per side a match
                    emit(s, Kind.YELLOW, side)
                elif r < rate + 1 / 150 + 2.06 / 5400:  # ~0.12 reds a match
                    reds[side] += 1
                    emit(s, Kind.RED, side)
            s += 1
        t0 += length
        length = 0
        if half == 1:
            period = Period.HALF_TIME
            emit(0, Kind.HALF_TIME)
            t0 += 15 * 60
            period = Period.SECOND_HALF
            emit(0, Kind.SECOND_HALF)
    period = Period.FULL_TIME
    emit(0, Kind.FULL_TIME)
    out.sort(key=lambda i: i.second)
    return m


def simulate(n: int, seed: int, stagger_s: int = 0) -> list[SimMatch]:
    """``n`` matches, deterministic for ``seed``; kick-offs ``stagger_s`` match-seconds apart.

    With a stagger, each kick-off is also late by 0-59 s, as real ones are: a match's clock
    updates come every match minute from its own kick-off, and kick-offs exactly whole minutes
    apart would make every match's minute tick at the same instant (a burst of every match at
    once, every minute, that no real slate of matches sends). Drawn apart from the matches, so
    a seed plays the same matches with or without a stagger."""
    rng = random.Random(seed)
    late = random.Random(f"kick-off:{seed}")
    matches = []
    for i in range(n):
        home, away = rng.sample(TEAMS, 2)
        total = rng.uniform(2.2, 3.2)
        share = min(max(rng.gauss(0.55, 0.12), 0.2), 0.85)
        hx, ax = round(total * share, 3), round(total * (1 - share), 3)
        offset = i * stagger_s + (late.randint(0, 59) if stagger_s else 0)
        matches.append(simulate_match(rng, f"sim:{seed}:{i + 1}", home, away, hx, ax, offset))
    return matches


def poisson_mean_goals(matches: list[SimMatch]) -> float:
    """Average goals a match (for checking the simulator against its inputs)."""
    return sum(sum(m.final_score) for m in matches) / max(1, len(matches))


def expected_mean_goals(matches: list[SimMatch]) -> float:
    return sum(m.home_xg + m.away_xg for m in matches) / max(1, len(matches))
