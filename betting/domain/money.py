"""Money as integer minor units of a currency (pure). Never a binary float.

``Money`` in the API carries ``minor_units`` and/or ``decimal`` (major units as a string); this
module turns either into minor units, refusing anything the currency cannot hold.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

#: ISO 4217 minor-unit exponents of the currencies livebet accepts.
EXPONENT: dict[str, int] = {
    "EUR": 2, "GBP": 2, "USD": 2, "SEK": 2, "NOK": 2, "DKK": 2, "CHF": 2, "PLN": 2, "CZK": 2,
    "CAD": 2, "AUD": 2, "BRL": 2, "JPY": 0, "KRW": 0, "BHD": 3, "KWD": 3,
}  # fmt: skip
#: The largest amount anything may be, in minor units (1e15: far above any limit, far below 2^63).
MAX_MINOR = 10**15
_DECIMAL = re.compile(r"^[0-9]{1,16}(\.[0-9]{1,6})?$")


class MoneyError(ValueError):
    """An amount the API refuses; the message says why (for a field violation)."""


def exponent(currency: str) -> int:
    if currency not in EXPONENT:
        raise MoneyError(f"currency {currency!r} is not supported (one of {', '.join(sorted(EXPONENT))})")
    return EXPONENT[currency]


def parse_decimal(text: str, currency: str) -> int:
    """``"10.50"`` EUR → 1050. Plain digits only: no sign, exponent, NaN or infinity."""
    e = exponent(currency)
    if not _DECIMAL.match(text):
        raise MoneyError(f"amount {text!r} is not a plain decimal like 10.50")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise MoneyError(f"amount {text!r} is not a decimal") from None
    units = value.scaleb(e)
    if units != units.to_integral_value():
        raise MoneyError(f"amount {text!r} has more decimals than {currency} has ({e})")
    return int(units)


def to_minor(currency: str, minor_units: int, decimal: str) -> int:
    """Minor units from an API ``Money`` (either field, or both when they agree); positive."""
    exponent(currency)
    if decimal:
        value = parse_decimal(decimal, currency)
        if minor_units and minor_units != value:
            raise MoneyError(f"minor_units {minor_units} and decimal {decimal!r} disagree")
    else:
        value = minor_units
    if value <= 0:
        raise MoneyError("amount must be positive")
    if value > MAX_MINOR:
        raise MoneyError(f"amount {format_minor(value, currency)} {currency} is too large")
    return value


def format_minor(units: int, currency: str) -> str:
    """1050 EUR → ``"10.50"``."""
    e = EXPONENT.get(currency, 2)
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), 10**e)
    return f"{sign}{whole}.{frac:0{e}d}" if e else f"{sign}{whole}"


def major_to_minor(amount: Decimal, currency: str) -> int:
    """A configured limit in major units as minor units of ``currency``."""
    return int((amount.scaleb(exponent(currency))).to_integral_value())
