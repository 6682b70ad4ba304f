"""Margin removal and application against the published definitions."""

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pricing.margin import METHODS, MarginError, apply_margin, remove_margin

# Reference values computed once with penaltyblog 1.13.1 (`penaltyblog.implied.calculate_implied`),
# an independent implementation of the same definitions; failures are recorded as text.
REFERENCE = [
    (
        [2.1, 3.4, 3.6],
        {
            "multiplicative": [0.4543429844, 0.280623608, 0.2650334076],
            "additive": [0.4601618425, 0.2780890134, 0.2617491441],
            "power": [0.4601744579, 0.2779799641, 0.2618455781],
            "shin": [0.458665716, 0.2787376371, 0.2625966469],
            "odds_ratio": [0.4577949693, 0.2790092537, 0.263195777],
        },
    ),
    (
        [1.9, 1.9],
        {
            "multiplicative": [0.5, 0.5],
            "additive": [0.5, 0.5],
            "power": [0.5, 0.5],
            "shin": [0.5, 0.5],
            "odds_ratio": [0.5, 0.5],
        },
    ),
    (
        [1.25, 6.0, 13.0],
        {
            "multiplicative": [0.7665847666, 0.1597051597, 0.0737100737],
            "additive": [0.7854700855, 0.1521367521, 0.0623931624],
            "power": [0.7879200288, 0.1474993839, 0.0645805873],
            "shin": [0.7806413752, 0.1538748864, 0.0654837384],
            "odds_ratio": [0.7803008513, 0.1508036431, 0.0688955057],
        },
    ),
    (
        [1.05, 12.0],
        {
            "multiplicative": [0.9195402299, 0.0804597701],
            "additive": [0.9345238095, 0.0654761905],
            "power": [0.9447325552, 0.0552674448],
            "shin": [0.9345238095, 0.0654761905],
            "odds_ratio": [0.93683837, 0.06316163],
        },
    ),
    (
        [3.1, 3.3, 2.45],
        {
            "multiplicative": [0.3120416827, 0.2931300656, 0.3948282516],
            "additive": [0.311322574, 0.2917722319, 0.3969051941],
            "power": [0.3113081916, 0.2918667836, 0.3968250248],
            "shin": [0.3115054969, 0.2921201117, 0.3963743914],
            "odds_ratio": [0.3115999569, 0.2924278302, 0.3959722129],
        },
    ),
    (
        [4.5, 5.0, 6.5, 3.2, 9.0],
        {
            "multiplicative": [0.2222934701, 0.2000641231, 0.1538954793, 0.3126001924, 0.1111467351],
            "additive": [0.2222863248, 0.2000641026, 0.1539102564, 0.3125641026, 0.1111752137],
            "power": [0.2222912597, 0.2000664869, 0.1539056365, 0.3125750755, 0.1111615413],
            "shin": "f(a) and f(b) must have different signs",
            "odds_ratio": [0.2222935528, 0.2000660323, 0.1538998794, 0.3125886623, 0.1111518733],
        },
    ),
    (
        [1.52, 2.62],
        {
            "multiplicative": [0.6328502415, 0.3671497585],
            "additive": [0.6381076738, 0.3618923262],
            "power": [0.6407781249, 0.3592218751],
            "shin": [0.6381076738, 0.3618923262],
            "odds_ratio": [0.6383422614, 0.3616577386],
        },
    ),
]


@pytest.mark.parametrize(("odds", "expected"), REFERENCE)
def test_removal_agrees_with_penaltyblog_to_1e_6(odds: list[float], expected: dict[str, object]) -> None:
    for method in METHODS:
        want = expected[method]
        if isinstance(want, str):
            with pytest.raises(MarginError):
                remove_margin(odds, method)
            continue
        got = remove_margin(odds, method)
        assert got == pytest.approx(want, abs=1e-6), method


def test_additive_removal_that_would_go_negative_is_refused() -> None:
    with pytest.raises(MarginError, match="negative probability"):
        remove_margin([1.2, 5.0, 100.0], "additive")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: remove_margin([2.0, 2.0], "magic"), "unknown margin method"),
        (lambda: remove_margin([2.0], "shin"), "at least two outcomes"),
        (lambda: remove_margin([0.9, 2.0], "shin"), "greater than 1"),
        (lambda: apply_margin([0.5, 0.6], 0.05), "sum to 1"),
        (lambda: apply_margin([0.0, 1.0], 0.05), "strictly between 0 and 1"),
        (lambda: apply_margin([0.5, 0.5], float("nan")), "margin must be"),
        (lambda: apply_margin([0.5, 0.5], -0.05, "shin"), "at least 0"),
    ],
)
def test_bad_input_is_refused_with_the_reason(call: object, message: str) -> None:
    with pytest.raises(MarginError, match=message):
        call()  # type: ignore[operator]


probability_vectors = st.lists(st.floats(0.02, 1.0), min_size=2, max_size=8).map(lambda xs: [x / sum(xs) for x in xs])


@settings(max_examples=150, deadline=None)
@given(p=probability_vectors, margin=st.floats(0.0, 0.15), method=st.sampled_from(METHODS))
def test_applied_margin_gives_exactly_the_target_booksum(p: list[float], margin: float, method: str) -> None:
    try:
        odds = apply_margin(p, margin, method)
    except MarginError as exc:  # only when the favourite would be priced at or below 1.00
        assert "odds <= 1.00" in str(exc) or "cannot reach" in str(exc)
        assert max(p) * (1 + margin) > 0.9 or method == "shin"
        return
    assert sum(1 / o for o in odds) == pytest.approx(1 + margin, abs=1e-9)
    assert all(o > 1 for o in odds)


@settings(max_examples=150, deadline=None)
@given(p=probability_vectors, margin=st.floats(0.001, 0.15), method=st.sampled_from(METHODS))
def test_removing_an_applied_margin_gives_back_the_probabilities(p: list[float], margin: float, method: str) -> None:
    assume(max(p) < 0.85)  # leaves room for the margin below odds of 1.00
    odds = apply_margin(p, margin, method)
    try:
        back = remove_margin(odds, method)
    except MarginError:  # additive removal of very long odds can be infeasible by definition
        assert method == "additive"
        return
    assert back == pytest.approx(p, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(p=probability_vectors, method=st.sampled_from(METHODS))
def test_a_larger_margin_never_lengthens_any_price(p: list[float], method: str) -> None:
    assume(max(p) < 0.85)
    low, high = apply_margin(p, 0.02, method), apply_margin(p, 0.08, method)
    assert all(h <= lo + 1e-12 for h, lo in zip(high, low, strict=True))


def test_a_fair_book_has_no_margin() -> None:
    p = [0.5, 0.3, 0.2]
    for method in METHODS:
        assert apply_margin(p, 0.0, method) == pytest.approx([2.0, 1 / 0.3, 5.0])
        assert math.isclose(sum(remove_margin([2.0, 1 / 0.3, 5.0], method)), 1.0)
