"""betting.domain.protection: a player's own limits tighten at once and loosen only after the
cooling-off; deposit limits over rolling periods; breaks only get longer."""

from datetime import UTC, datetime, timedelta

import pytest

from betting.domain.protection import LimitSet, break_until, deposit_refusal, loss_refusal, tighter

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def test_tighter_treats_none_as_no_limit() -> None:
    assert tighter(None, None) is None
    assert tighter(None, 5) == 5 and tighter(5, None) == 5
    assert tighter(3, 5) == 3 and tighter(5, 3) == 3


def test_a_first_limit_and_a_lower_one_hold_at_once() -> None:
    first = LimitSet((None, None)).change((500, None), NOW, DAY)
    assert first == LimitSet((500, None))
    lower = first.change((300, 2_000), NOW, DAY)
    assert lower == LimitSet((300, 2_000))  # both tighter: nothing pending


def test_a_higher_limit_waits_out_the_cooling_off() -> None:
    before = LimitSet((500, 2_000))
    after = before.change((800, 2_000), NOW, DAY)
    assert after.amounts == (500, 2_000)
    assert after.pending == (800, 2_000) and after.pending_from == NOW + DAY
    assert after.at(NOW + DAY - timedelta(seconds=1)).amounts == (500, 2_000)
    assert after.at(NOW + DAY) == LimitSet((800, 2_000))


def test_removing_a_limit_is_loosening_it() -> None:
    after = LimitSet((500, 2_000)).change((500, None), NOW, DAY)
    assert after.amounts == (500, 2_000) and after.pending == (500, None)
    assert after.at(NOW + DAY).amounts == (500, None)


def test_a_mixed_change_tightens_now_and_loosens_later() -> None:
    after = LimitSet((500, None)).change((800, 1_000), NOW, DAY)
    assert after.amounts == (500, 1_000)  # the daily limit is new: at once; the stake limit waits
    assert after.pending == (800, 1_000) and after.pending_from == NOW + DAY


def test_asking_again_replaces_what_was_pending() -> None:
    pending = LimitSet((500,)).change((800,), NOW, DAY)
    tighter_now = pending.change((400,), NOW + timedelta(hours=1), DAY)
    assert tighter_now == LimitSet((400,))  # the raise asked for before is gone
    again = pending.change((900,), NOW + timedelta(hours=5), DAY)
    assert again.amounts == (500,) and again.pending == (900,)
    assert again.pending_from == NOW + timedelta(hours=5) + DAY  # a new cooling-off


def test_a_change_after_the_cooling_off_starts_from_what_is_in_force_then() -> None:
    pending = LimitSet((500,)).change((800,), NOW, DAY)
    later = pending.change((700,), NOW + 2 * DAY, DAY)
    assert later == LimitSet((700,))  # 800 was in force by then: 700 is tighter


def test_asking_for_the_same_limits_clears_a_pending_change() -> None:
    pending = LimitSet((500,)).change((800,), NOW, DAY)
    assert pending.change((500,), NOW, DAY) == LimitSet((500,))


def test_a_change_must_name_every_limit_of_the_set() -> None:
    with pytest.raises(ValueError):
        LimitSet((500, None)).change((500,), NOW, DAY)


def test_a_deposit_is_refused_by_the_first_period_it_would_pass() -> None:
    limits = (5_000, 8_000, None)
    assert deposit_refusal(limits, [3_000, 3_000, 3_000], 2_000, "EUR") is None  # exactly at the limit
    why = deposit_refusal(limits, [3_000, 3_000, 3_000], 2_001, "EUR")
    assert why is not None and "24 hours" in why and "50.00 EUR" in why and "up to 20.00 EUR" in why
    why = deposit_refusal(limits, [1_000, 7_000, 9_000], 1_500, "EUR")
    assert why is not None and "7 days" in why and "up to 10.00 EUR" in why
    assert deposit_refusal((None, None, None), [10**9] * 3, 10**9, "EUR") is None
    why = deposit_refusal((None, None, 100), [0, 0, 500], 1, "JPY")
    assert why is not None and "30 days" in why and "up to 0 JPY" in why


def test_a_loss_refusal_names_the_period_the_loss_and_the_room_left() -> None:
    why = loss_refusal(0, 1_000, 600, 500, "EUR")
    assert why == (
        "net losses over 24 hours would be 11.00 EUR if this bet lost, above your limit of 10.00 EUR"
        " (you can stake up to 4.00 EUR now)"
    )
    # a player ahead (a negative net loss) has more room than the limit itself
    assert "up to 13.80 EUR" in loss_refusal(2, 1_000, -380, 1_381, "EUR")
    assert "30 days" in loss_refusal(2, 1, 0, 2, "EUR")
    assert "up to 0.00 EUR" in loss_refusal(1, 1_000, 1_200, 10, "EUR")  # already over: none


def test_a_break_only_gets_longer() -> None:
    assert break_until(None, NOW, DAY) == NOW + DAY
    running = NOW + 10 * DAY
    assert break_until(running, NOW, DAY) == running
    assert break_until(running, NOW, 30 * DAY) == NOW + 30 * DAY
