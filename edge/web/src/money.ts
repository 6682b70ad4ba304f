// Money and odds without binary floats: amounts are bigint minor units, odds are decimal strings
// turned into integers scaled by 10^ODDS_SCALE. The server's figure always wins; these are only
// for the bet slip's "potential return" while the player types.

const ODDS_SCALE = 6;
const SCALE = 10n ** BigInt(ODDS_SCALE);

/** "2.35" -> 2350000n (scaled by 10^6); null when malformed. */
export function parseOdds(decimal: string): bigint | null {
  const m = /^(\d+)(?:\.(\d{1,6}))?$/.exec(decimal.trim());
  if (!m) return null;
  return BigInt(m[1]) * SCALE + BigInt((m[2] ?? "").padEnd(ODDS_SCALE, "0"));
}

/** Product of several odds, rounded down at 2 decimals like the server's combined odds. */
export function combine(odds: string[]): string | null {
  let acc = SCALE;
  for (const o of odds) {
    const v = parseOdds(o);
    if (v === null) return null;
    acc = (acc * v) / SCALE;
  }
  const hundredths = acc / (SCALE / 100n);
  return `${hundredths / 100n}.${(hundredths % 100n).toString().padStart(2, "0")}`;
}

/** "12.50" in a currency with 2 decimals -> 1250n; null when malformed or too precise. */
export function parseAmount(text: string, exponent = 2): bigint | null {
  const m = /^(\d{1,12})(?:[.,](\d+))?$/.exec(text.trim());
  if (!m) return null;
  const frac = m[2] ?? "";
  if (frac.length > exponent) return null;
  return BigInt(m[1]) * 10n ** BigInt(exponent) + BigInt(frac.padEnd(exponent, "0") || "0");
}

/** Stake x odds, rounded down to the minor unit. */
export function potentialReturn(stakeMinor: bigint, decimalOdds: string): bigint | null {
  const v = parseOdds(decimalOdds);
  return v === null ? null : (stakeMinor * v) / SCALE;
}

export function formatMinor(minor: bigint, currency = "EUR", exponent = 2): string {
  const neg = minor < 0n;
  const abs = neg ? -minor : minor;
  const unit = 10n ** BigInt(exponent);
  const text = `${abs / unit}.${(abs % unit).toString().padStart(exponent, "0")}`;
  return `${neg ? "-" : ""}${text} ${currency}`;
}
