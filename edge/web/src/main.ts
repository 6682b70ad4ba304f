// livebet web app: live matches and prices over a gRPC-web stream (WatchOdds), a bet slip for
// singles, accumulators and bet builders (outcomes of one match priced together by
// QuoteBetBuilder), the wallet balance and the player's bets with their live status.
// The page never reloads: a dropped stream reconnects with backoff and resumes from the last
// version it saw, so nothing is missed.
import { ConnectError, Code } from "@connectrpc/connect";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { betting, odds, session, wallet } from "./api";
import { combine, formatMinor, parseAmount, potentialReturn } from "./money";
import { BetStatus, OddsChangePolicy, RejectReason, BetResult, type Bet } from "./gen/livebet/betting/v1/bet_pb";
import type { Money } from "./gen/livebet/common/v1/common_pb";
import { MarketStatus, type Market, type MatchOdds } from "./gen/livebet/odds/v1/market_pb";
import type { WatchOddsResponse } from "./gen/livebet/odds/v1/odds_service_pb";
import type { CashOutOffer } from "./gen/livebet/betting/v1/betting_service_pb";
import type { GetLimitsResponse } from "./gen/livebet/betting/v1/wallet_service_pb";

// --- state -----------------------------------------------------------------------------------
interface MatchView {
  odds: MatchOdds;
  markets: Map<string, Market>; // by market_key, in arrival order
}
interface Leg {
  matchId: string;
  marketKey: string;
  marketType: string;
  outcomeId: string;
  label: string;
}

const matches = new Map<string, MatchView>();
const slip = new Map<string, Leg>(); // by slipKey: one leg per market
const slipKey = (matchId: string, marketKey: string) => `${matchId}|${marketKey}`;
// a bet builder's price, from QuoteBetBuilder, for the legs and market versions in `key`
let quote: { key: string; odds?: string; versions?: bigint[]; error?: string } | null = null;
let quoting = false;
const bets = new Map<string, Bet>();
// cash-out: the offer per accepted bet (or why there is none), and the bets being cashed out
const offers = new Map<string, { amount: Money; delayMs: number } | string>();
const cashing = new Set<string>();
const OFFER_INTERVAL_MS = 250; // the stream sends what changed at most this often
const flashes = new Map<string, "up" | "down">(); // outcome key -> direction, for one render
let balance: { available: bigint; held: bigint; currency: string } | null = null;
let betsStream: AbortController | null = null;
let offersStream: AbortController | null = null;

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const outcomeKey = (matchId: string, marketKey: string, outcomeId: string) => `${matchId}|${marketKey}|${outcomeId}`;
const esc = (s: string) =>
  s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);

function setConnection(state: "live" | "reconnecting", detail = ""): void {
  const el = $("connection");
  el.textContent = state === "live" ? "● live" : `○ reconnecting… ${detail}`;
  el.className = state;
}

// --- live odds -------------------------------------------------------------------------------
function price(m: Market, outcomeId: string): string | undefined {
  return m.outcomes.find((o) => o.outcomeId === outcomeId)?.odds?.decimal;
}

function applyMarkets(view: MatchView, markets: Market[]): void {
  for (const m of markets) {
    const key = m.ref?.marketKey ?? "";
    const before = view.markets.get(key);
    if (before && before.version > m.version) continue; // never go back
    for (const o of m.outcomes) {
      const old = before ? price(before, o.outcomeId) : undefined;
      const now = o.odds?.decimal;
      if (old && now && old !== now) {
        flashes.set(outcomeKey(view.odds.matchId, key, o.outcomeId), Number(now) > Number(old) ? "up" : "down");
      }
    }
    view.markets.set(key, m);
  }
}

function onOdds(res: WatchOddsResponse): void {
  const msg = res.message;
  if (msg.case === "image") {
    const image = msg.value;
    const view = matches.get(image.matchId);
    if (view && !res.resync && view.odds.version >= image.version) return;
    const fresh: MatchView = { odds: image, markets: new Map() };
    if (view) fresh.markets = view.markets; // keep for up/down against the old prices
    applyMarkets(fresh, image.markets);
    // markets gone from a fresh image are gone
    const keep = new Set(image.markets.map((m) => m.ref?.marketKey ?? ""));
    for (const k of [...fresh.markets.keys()]) if (!keep.has(k)) fresh.markets.delete(k);
    matches.set(image.matchId, fresh);
    renderMatch(image.matchId);
  } else if (msg.case === "delta") {
    const d = msg.value;
    const view = matches.get(d.matchId);
    if (!view || d.version <= view.odds.version) return;
    applyMarkets(view, d.markets);
    view.odds.version = d.version;
    if (d.score) view.odds.score = d.score;
    view.odds.minute = d.minute || view.odds.minute;
    renderMatch(d.matchId);
  }
  renderSlip();
}

// A dead connection is not always reported: the server sends a heartbeat every HEARTBEAT_MS, so a
// stream silent for SILENCE_MS is dropped and reopened. Going offline drops it at once.
const HEARTBEAT_MS = 2000;
const SILENCE_MS = 3 * HEARTBEAT_MS;
let online = new AbortController(); // aborted when the browser goes offline
window.addEventListener("offline", () => online.abort());
window.addEventListener("online", () => (online = new AbortController()));

/** Wait ``ms``, or less if the network comes back. */
function backoffSleep(ms: number): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      window.removeEventListener("online", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    window.addEventListener("online", done);
  });
}

async function watchOdds(): Promise<void> {
  let backoff = 250;
  for (;;) {
    const ctrl = new AbortController();
    const stop = () => ctrl.abort();
    online.signal.addEventListener("abort", stop);
    let watchdog = setTimeout(stop, SILENCE_MS);
    try {
      if (!navigator.onLine) throw new Error("offline");
      const resumeFrom: { [id: string]: bigint } = {};
      for (const [id, v] of matches) resumeFrom[id] = v.odds.version;
      const stream = odds.watchOdds({ matchIds: [], resumeFrom, heartbeatIntervalMs: HEARTBEAT_MS }, { signal: ctrl.signal });
      for await (const res of stream) {
        clearTimeout(watchdog);
        watchdog = setTimeout(stop, SILENCE_MS);
        setConnection("live");
        backoff = 250;
        onOdds(res);
      }
    } catch (err) {
      setConnection("reconnecting", navigator.onLine ? (err instanceof ConnectError ? Code[err.code] : "") : "offline");
    } finally {
      clearTimeout(watchdog);
      online.signal.removeEventListener("abort", stop);
    }
    await backoffSleep(backoff);
    backoff = Math.min(backoff * 2, 5000);
  }
}

// --- rendering -------------------------------------------------------------------------------
// The main markets first (shown), every other one under "more markets". Keys are the contracts'
// market_key: the type, then its specifiers ("total|total=2.5").
const MAIN_MARKETS = ["1x2", "total|total=2.5", "next_goal", "btts", "double_chance", "draw_no_bet"];

function marketRank(m: Market): number {
  const key = m.ref?.marketKey ?? "";
  const i = MAIN_MARKETS.findIndex((k) => key === k || key.startsWith(`${k}|`));
  return i < 0 ? MAIN_MARKETS.length : i;
}

function marketHtml(matchId: string, m: Market): string {
  const key = m.ref?.marketKey ?? "";
  const open = m.status === MarketStatus.OPEN;
  const leg = slip.get(slipKey(matchId, key));
  const buttons = m.outcomes
    .map((o) => {
      const k = outcomeKey(matchId, key, o.outcomeId);
      const flash = flashes.get(k) ?? "";
      const picked = leg && leg.marketKey === key && leg.outcomeId === o.outcomeId ? "picked" : "";
      const usable = open && o.active && o.odds?.decimal;
      return `<button class="price ${flash} ${picked}" data-k="${esc(k)}" ${usable ? "" : "disabled"}>
        <span class="name">${esc(o.name || o.outcomeId)}</span><span class="odds">${esc(o.odds?.decimal ?? "-")}</span></button>`;
    })
    .join("");
  const status = open ? "" : `<span class="status">${esc(MarketStatus[m.status] ?? "")}</span>`;
  return `<div class="market ${open ? "open" : "suspended"}" data-market="${esc(key)}">
    <div class="market-name">${esc(m.name || key)} ${status}</div><div class="outcomes">${buttons}</div></div>`;
}

function renderMatch(matchId: string): void {
  const view = matches.get(matchId);
  if (!view) return;
  let card = document.getElementById(`m:${matchId}`);
  if (!card) {
    card = document.createElement("section");
    card.id = `m:${matchId}`;
    card.className = "match";
    card.dataset.match = matchId;
    $("matches").appendChild(card);
    $("empty").hidden = true;
  }
  const o = view.odds;
  const markets = [...view.markets.values()].sort((a, b) => marketRank(a) - marketRank(b));
  const main = markets.slice(0, 4).map((m) => marketHtml(matchId, m)).join("");
  const more = markets.slice(4).map((m) => marketHtml(matchId, m)).join("");
  const wasOpen = card.querySelector("details")?.open ?? false;
  card.innerHTML = `<header><span class="teams">${esc(o.homeTeam)} – ${esc(o.awayTeam)}</span>
    <span class="score">${esc(o.score || "0-0")}</span><span class="clock">${o.inPlay ? `${o.minute}'` : "pre-match"}</span>
    <span class="version" title="odds version">v${o.version}</span></header>
    <div class="markets">${main}</div>
    ${more ? `<details ${wasOpen ? "open" : ""}><summary>${markets.length - 4} more markets</summary>${more}</details>` : ""}`;
  for (const k of [...flashes.keys()]) if (k.startsWith(`${matchId}|`)) flashes.delete(k);
}

// --- bet slip --------------------------------------------------------------------------------
function pick(k: string): void {
  const [matchId, marketKey, outcomeId] = k.split("|");
  const view = matches.get(matchId);
  const market = view?.markets.get(marketKey);
  const outcome = market?.outcomes.find((o) => o.outcomeId === outcomeId);
  if (!view || !market || !outcome) return;
  const at = slipKey(matchId, marketKey);
  const current = slip.get(at);
  if (current && current.outcomeId === outcomeId) slip.delete(at);
  else
    slip.set(at, {
      matchId,
      marketKey,
      marketType: market.ref?.marketType ?? "",
      outcomeId,
      label: `${view.odds.homeTeam} – ${view.odds.awayTeam}: ${market.name || marketKey} · ${outcome.name || outcomeId}`,
    });
  $("slip-result").textContent = "";
  renderMatch(matchId);
  renderSlip();
}

function legNow(leg: Leg): { market?: Market; odds?: string; open: boolean } {
  const market = matches.get(leg.matchId)?.markets.get(leg.marketKey);
  const o = market?.outcomes.find((x) => x.outcomeId === leg.outcomeId);
  return { market, odds: o?.odds?.decimal, open: !!market && market.status === MarketStatus.OPEN && !!o?.active };
}

/** What the slip holds: a single, an accumulator (one leg per match), a bet builder (2+ legs, one
 * match) or a mix that cannot be placed (a match with several legs beside other matches). */
function slipKind(legs: Leg[]): "single" | "accumulator" | "builder" | "mixed" {
  const matchIds = new Set(legs.map((l) => l.matchId));
  if (legs.length <= 1) return "single";
  if (matchIds.size === 1) return "builder";
  return matchIds.size === legs.length ? "accumulator" : "mixed";
}

const quoteKeyOf = (legs: Leg[]) =>
  legs.map((l) => `${l.matchId}|${l.marketKey}|${l.outcomeId}@${legNow(l).market?.version ?? 0n}`).join(",");

/** Price the bet builder in the slip (one call at a time; renderSlip asks again when the legs or
 * their market versions changed meanwhile). */
async function requestQuote(legs: Leg[], key: string): Promise<void> {
  quoting = true;
  try {
    const r = await betting.quoteBetBuilder({
      outcomes: legs.map((l) => ({
        market: { matchId: l.matchId, marketType: l.marketType, marketKey: l.marketKey },
        outcomeId: l.outcomeId,
      })),
    });
    quote = { key, odds: r.odds?.decimal, versions: r.marketVersions };
  } catch (err) {
    const e = ConnectError.from(err);
    quote = { key, error: e.rawMessage };
  } finally {
    quoting = false;
    renderSlip();
  }
}

function renderSlip(): void {
  const legs = [...slip.values()];
  const kind = slipKind(legs);
  $("slip-empty").hidden = legs.length > 0;
  $("slip-form").hidden = legs.length === 0;
  $("slip-kind").textContent = {
    single: "Single",
    accumulator: `Accumulator (${legs.length} legs)`,
    builder: `Bet builder (${legs.length} legs, priced together)`,
    mixed: "Legs on one match combine only with each other (a bet builder): remove the others",
  }[kind];
  $("slip-legs").innerHTML = legs
    .map((leg) => {
      const now = legNow(leg);
      const at = slipKey(leg.matchId, leg.marketKey);
      return `<li class="${now.open ? "" : "suspended"}">${esc(leg.label)} <b>${esc(now.odds ?? "-")}</b>
        ${now.open ? "" : "<em>suspended</em>"}<button class="remove" data-remove="${esc(at)}">×</button></li>`;
    })
    .join("");
  let combined: string | null = null;
  let note = "";
  if (kind === "builder") {
    const key = quoteKeyOf(legs);
    if (!session.token) note = "sign in to price a bet builder";
    else if (quote?.key !== key) {
      if (!quoting) void requestQuote(legs, key);
      note = "pricing…";
    }
    if (quote?.key === key) {
      combined = quote.odds ?? null;
      note = quote.error ?? "";
    }
  } else if (kind !== "mixed") combined = combine(legs.map((l) => legNow(l).odds ?? "0"));
  const stake = parseAmount(($("stake") as HTMLInputElement).value);
  const ret = stake !== null && combined ? potentialReturn(stake, combined) : null;
  $("slip-odds").textContent = combined ?? "-";
  $("slip-return").textContent = ret !== null ? formatMinor(ret) : "-";
  $("slip-note").textContent = note;
  const canPlace =
    !!session.token &&
    legs.length > 0 &&
    kind !== "mixed" &&
    combined !== null &&
    stake !== null &&
    legs.every((l) => legNow(l).open);
  ($("place") as HTMLButtonElement).disabled = !canPlace;
}

async function placeBet(): Promise<void> {
  const stake = parseAmount(($("stake") as HTMLInputElement).value);
  if (stake === null) return;
  const policy = Number(($("policy") as HTMLSelectElement).value) as OddsChangePolicy;
  const legs = [...slip.values()];
  const builder = slipKind(legs) === "builder" ? quote : null;
  if (builder && (builder.key !== quoteKeyOf(legs) || !builder.odds)) return; // priced again first
  const selections = legs.map((leg, i) => {
    const now = legNow(leg);
    return {
      outcome: {
        market: { matchId: leg.matchId, marketType: leg.marketType, marketKey: leg.marketKey },
        outcomeId: leg.outcomeId,
      },
      requestedOdds: { decimal: builder ? "" : (now.odds ?? "") },
      marketVersion: builder ? (builder.versions?.[i] ?? 0n) : (now.market?.version ?? 0n),
    };
  });
  const out = $("slip-result");
  out.className = "";
  out.textContent = "placing…";
  try {
    const res = await betting.placeBet({
      requestId: crypto.randomUUID(),
      selections,
      stake: { currencyCode: "EUR", minorUnits: stake },
      oddsChangePolicy: policy,
      betBuilderOdds: builder ? { decimal: builder.odds ?? "" } : undefined,
    });
    if (res.bet) upsertBet(res.bet);
    out.textContent = `bet placed: ${BetStatus[res.bet?.status ?? 0]}`;
    out.className = "ok";
    for (const [at, leg] of [...slip.entries()]) {
      slip.delete(at);
      renderMatch(leg.matchId);
    }
    renderSlip();
    void refreshBalance();
  } catch (err) {
    const e = ConnectError.from(err);
    out.textContent = `${Code[e.code]}: ${e.rawMessage}`;
    out.className = "error";
  }
}

// --- account: balance and bets ---------------------------------------------------------------
function renderAccount(): void {
  const signedIn = !!session.token;
  $("signed-out").hidden = signedIn;
  $("signed-in").hidden = !signedIn;
  $("safe").hidden = !signedIn;
  $("account").textContent = session.account;
  $("balance").textContent = balance
    ? `${formatMinor(balance.available, balance.currency)} (held ${formatMinor(balance.held, balance.currency)})`
    : "-";
  renderSlip();
}

async function refreshBalance(): Promise<void> {
  if (!session.token) return;
  try {
    const r = await wallet.getBalance({ currencyCode: "EUR" });
    balance = { available: r.available?.minorUnits ?? 0n, held: r.held?.minorUnits ?? 0n, currency: "EUR" };
  } catch (err) {
    if (ConnectError.from(err).code === Code.Unauthenticated) signOut("your token was refused: sign in again");
  }
  renderAccount();
}

// --- play safe: the player's own deposit and loss limits and breaks (WalletService) ------------
const when = (t: Parameters<typeof timestampDate>[0]) => timestampDate(t).toLocaleString();
const amountText = (m: Money | undefined) => (m ? formatMinor(m.minorUnits, m.currencyCode) : "no limit");

function renderLimits(r: GetLimitsResponse): void {
  const lines = [`Deposits per day: ${amountText(r.deposit?.maxDaily)}`];
  if (r.depositPending && r.depositPendingFrom) {
    lines.push(`… ${amountText(r.depositPending.maxDaily)} from ${when(r.depositPendingFrom)}`);
  }
  lines.push(`Losses per week: ${amountText(r.loss?.maxWeekly)}`);
  if (r.lossPending && r.lossPendingFrom) {
    lines.push(`… ${amountText(r.lossPending.maxWeekly)} from ${when(r.lossPendingFrom)}`);
  }
  if (r.stake?.maxStake) lines.push(`Stake per bet: ${amountText(r.stake.maxStake)}`);
  realityEveryMs = r.realityCheckInterval ? Number(r.realityCheckInterval.seconds) * 1000 : 0;
  lines.push(`Reality check: ${realityEveryMs ? `every ${realityEveryMs / 60000} minutes` : "never"}`);
  ($("reality-every") as HTMLSelectElement).value = String(realityEveryMs / 1000);
  if (r.breakUntil) lines.push(`On a break until ${when(r.breakUntil)}: no bets, no deposits.`);
  $("safe-status").innerHTML = lines.map((l) => `<div>${esc(l)}</div>`).join("");
  $("safe-status").classList.toggle("on-break", !!r.breakUntil);
}

async function refreshLimits(): Promise<void> {
  if (!session.token) return;
  try {
    renderLimits(await wallet.getLimits({ currencyCode: "EUR" }));
  } catch (err) {
    $("safe-result").textContent = ConnectError.from(err).rawMessage;
  }
}

async function safeCall(call: () => Promise<unknown>): Promise<void> {
  $("safe-result").textContent = "";
  try {
    await call();
  } catch (err) {
    $("safe-result").textContent = ConnectError.from(err).rawMessage;
  }
  await refreshLimits();
}

/** The amount typed in ``input`` (none: no limit) handed to ``set``, or why it is not an amount. */
function setLimit(input: string, set: (units: bigint | null) => Promise<unknown>): Promise<void> {
  const text = ($(input) as HTMLInputElement).value.trim();
  const units = text ? parseAmount(text) : null;
  if (text && (units === null || units <= 0n)) {
    $("safe-result").textContent = "the limit must be an amount such as 50 or 50.00";
    return Promise.resolve();
  }
  return safeCall(() => set(units));
}

const setDepositLimit = () =>
  setLimit("deposit-limit", (units) =>
    wallet.setDepositLimits(
      units === null ? { currencyCode: "EUR" } : { limits: { maxDaily: { currencyCode: "EUR", minorUnits: units } } },
    ),
  );

const setLossLimit = () =>
  setLimit("loss-limit", (units) =>
    wallet.setLossLimits(
      units === null ? { currencyCode: "EUR" } : { limits: { maxWeekly: { currencyCode: "EUR", minorUnits: units } } },
    ),
  );

function setRealityCheck(): Promise<void> {
  const seconds = BigInt(($("reality-every") as HTMLSelectElement).value);
  return safeCall(() => wallet.setRealityCheck(seconds ? { interval: { seconds, nanos: 0 } } : {}));
}

// --- reality check: every so often (the player's choice, kept with the account) how long they
// have been playing since they signed in, and how the bets placed since stand (GetActivity);
// the page stays covered until they answer
const SINCE_KEY = "livebet.playingSince";
let realityEveryMs = 0; // 0: never
let lastReality = 0;

function playingSince(): number {
  const kept = Number(sessionStorage.getItem(SINCE_KEY)); // a reload in this tab keeps the session
  if (kept) return kept;
  const now = Date.now();
  sessionStorage.setItem(SINCE_KEY, String(now));
  return now;
}

async function realityCheck(): Promise<void> {
  if (!session.token || !realityEveryMs || !$("reality").hidden) return;
  const now = Date.now();
  if (!lastReality) lastReality = playingSince();
  if (now - lastReality < realityEveryMs) return;
  const since = new Date(Math.max(playingSince(), now - 24 * 3600_000 + 60_000)); // GetActivity reads 24 hours back
  $("reality-what").textContent =
    `You have been playing for ${Math.round((now - playingSince()) / 60000)} minutes, since ${since.toLocaleTimeString()}.`;
  $("reality-figures").textContent = "";
  $("reality").hidden = false;
  try {
    const a = await wallet.getActivity({ since: timestampFromDate(since), currencyCode: "EUR" });
    const open = a.openStakes && a.openStakes.minorUnits > 0n ? ` (${amountText(a.openStakes)} still on open bets)` : "";
    $("reality-figures").textContent =
      `Bets placed: ${a.betsPlaced}. Staked ${amountText(a.staked)}, returned ${amountText(a.returned)}: ` +
      `net ${amountText(a.net)}${open}.`;
  } catch (err) {
    $("reality-figures").textContent = ConnectError.from(err).rawMessage;
  }
}

function answerReality(keepPlaying: boolean): void {
  $("reality").hidden = true;
  lastReality = Date.now();
  if (!keepPlaying) signOut("you stopped at a reality check");
}

function takeBreak(): Promise<void> {
  const days = Number(($("break-days") as HTMLSelectElement).value);
  if (!confirm(`No bets and no deposits for ${days} day(s). This cannot be undone. Start the break?`)) {
    return Promise.resolve();
  }
  return safeCall(() => wallet.takeBreak({ duration: { seconds: BigInt(days * 86400), nanos: 0 } }));
}

async function depositDemoMoney(): Promise<void> {
  $("deposit-error").textContent = "";
  try {
    await wallet.deposit({ requestId: crypto.randomUUID(), amount: { currencyCode: "EUR", minorUnits: 10000n } });
  } catch (err) {
    $("deposit-error").textContent = ConnectError.from(err).rawMessage;
  }
  void refreshBalance();
}

// bets whose cash-out WatchBets has shown: a later event of theirs on the stream (which keeps each
// bet's events in order), or the list read when the stream reconnects, is newer: e.g. the cash-out
// annulled by a bet cancel. A call's own answer may be older than the stream's event.
const cashedOutOnStream = new Set<string>();

function upsertBet(b: Bet, fromStream = false): void {
  const old = bets.get(b.betId);
  if (old && old.status === BetStatus.SETTLED && b.status !== BetStatus.SETTLED && b.settlementVersion <= old.settlementVersion) return;
  if (fromStream && b.status === BetStatus.CASHED_OUT) cashedOutOnStream.add(b.betId);
  else if (fromStream && cashedOutOnStream.delete(b.betId)) {
    // the cash-out was annulled after it was shown: take what the stream says now
  } else if (old && old.status === BetStatus.CASHED_OUT && b.status !== BetStatus.CASHED_OUT) return; // an older answer
  bets.set(b.betId, b);
  renderBets();
}

function betStatusHtml(b: Bet): string {
  switch (b.status) {
    case BetStatus.PENDING: {
      const due = b.decideAt ? timestampDate(b.decideAt).getTime() : 0;
      const left = Math.max(0, Math.ceil((due - Date.now()) / 1000));
      return `<span class="pending">pending <span class="countdown" data-due="${due}">${left}s</span></span>`;
    }
    case BetStatus.ACCEPTED: {
      const o = offers.get(b.betId);
      let action = "";
      if (cashing.has(b.betId)) action = `<span class="cashing">cashing out…</span>`;
      else if (typeof o === "string") action = `<span class="no-offer">no cash-out: ${esc(o)}</span>`;
      else if (o) {
        const wait = o.delayMs > 0 ? ` (${Math.round(o.delayMs / 1000)} s)` : "";
        action = `<button class="cash-out" data-cash-out="${esc(b.betId)}">cash out ${formatMinor(o.amount.minorUnits, o.amount.currencyCode)}${wait}</button>`;
        action += ` <button class="cash-out-half" data-cash-out-half="${esc(b.betId)}" title="cash out half the stake; the other half rides on">half</button>`;
      }
      return `<span class="accepted">accepted</span> ${action} ${autoHtml(b)}`;
    }
    case BetStatus.CASHED_OUT:
      return `<span class="cashed-out">cashed out · paid ${b.payout ? formatMinor(b.payout.minorUnits, b.payout.currencyCode) : "-"}</span>`;
    case BetStatus.REJECTED:
      return `<span class="rejected">rejected: ${esc(RejectReason[b.rejectReason] ?? "")} ${esc(b.rejectDetail)}</span>`;
    case BetStatus.SETTLED:
      return `<span class="settled">settled: ${esc(BetResult[b.result] ?? "")} · paid ${b.payout ? formatMinor(b.payout.minorUnits, b.payout.currencyCode) : "-"}</span>`;
    default:
      return esc(BetStatus[b.status] ?? "");
  }
}

/** The bet's automatic cash-out: the amount with a button to remove it, or a button to set one. */
function autoHtml(b: Bet): string {
  const id = esc(b.betId);
  if (b.autoCashOut) {
    const at = formatMinor(b.autoCashOut.minorUnits, b.autoCashOut.currencyCode);
    return `<span class="auto">auto at ${at} <button class="auto-clear" data-auto-clear="${id}" title="remove">×</button></span>`;
  }
  return `<button class="auto" data-auto="${id}" title="cash out by itself at an amount">auto…</button>`;
}

let autoBet = "";

/** Open the automatic cash-out form for a bet, offering 20 % over its offer now (at most its potential payout). */
function openAuto(betId: string): void {
  const b = bets.get(betId);
  if (!b) return;
  autoBet = betId;
  const o = offers.get(betId);
  const max = b.potentialPayout?.minorUnits ?? 0n;
  let guess = o && typeof o !== "string" ? (o.amount.minorUnits * 12n) / 10n : max;
  if (guess > max) guess = max;
  $("auto-what").textContent = `bet ${betId.slice(0, 8)}: at most ${formatMinor(max, b.stake?.currencyCode ?? "EUR")}`;
  ($("auto-amount") as HTMLInputElement).value = formatMinor(guess, "").trim();
  $("auto-result").textContent = "";
  $("auto-form").hidden = false;
  ($("auto-amount") as HTMLInputElement).focus();
}

async function setAuto(betId: string, minor: bigint | null): Promise<void> {
  const b = bets.get(betId);
  const currencyCode = b?.stake?.currencyCode ?? "EUR";
  try {
    const res = await betting.setAutoCashOut({
      betId,
      amount: minor === null ? undefined : { currencyCode, minorUnits: minor },
    });
    if (res.bet) upsertBet(res.bet);
    if (betId === autoBet) $("auto-form").hidden = true;
  } catch (err) {
    $("auto-result").textContent = ConnectError.from(err).rawMessage;
    if (betId !== autoBet) $("auto-form").hidden = false;
  }
}

function renderBets(): void {
  const list = [...bets.values()].sort(
    (a, b) => Number((b.placedAt?.seconds ?? 0n) - (a.placedAt?.seconds ?? 0n)) || a.betId.localeCompare(b.betId),
  );
  $("bets").innerHTML = list
    .map((b) => {
      const legs =
        (b.betBuilder ? "Bet builder: " : "") +
        b.selections
          .map((s) => `${esc(s.outcome?.market?.marketKey ?? "")} ${esc(s.outcome?.outcomeId ?? "")}`)
          .join(b.betBuilder ? " + " : " × ");
      let stake = b.stake ? formatMinor(b.stake.minorUnits, b.stake.currencyCode) : "";
      if (b.cashedOutStake && b.cashedOutAmount) {
        const part = formatMinor(b.cashedOutStake.minorUnits, b.cashedOutStake.currencyCode);
        const paid = formatMinor(b.cashedOutAmount.minorUnits, b.cashedOutAmount.currencyCode);
        stake += ` <span class="partly">(${part} cashed out for ${paid})</span>`;
      }
      return `<li class="bet" data-bet="${esc(b.betId)}" data-status="${esc(BetStatus[b.status] ?? "")}">
        <div>${legs} @ <b>${esc(b.acceptedOdds?.decimal ?? "")}</b> · ${stake}</div><div>${betStatusHtml(b)}</div></li>`;
    })
    .join("");
}

/** One offer from WatchCashOutOffers: the amount, why there is none, or gone (a closed bet). */
function onOffer(o: CashOutOffer): void {
  if (o.closed) offers.delete(o.betId);
  else if (o.amount) {
    const delayMs = o.delay ? Number(o.delay.seconds) * 1000 + o.delay.nanos / 1e6 : 0;
    offers.set(o.betId, { amount: o.amount, delayMs });
  } else offers.set(o.betId, o.unavailableMessage);
}

/** Keep a signed-in stream open until `ctrl` aborts or the token goes: `open(signal, live)` runs
 * one connection (calling `live()` at each message) and is run again after a drop, with backoff,
 * aborted when the browser goes offline. A refused token ends it (`refused`). */
async function keepSignedIn(
  ctrl: AbortController,
  open: (signal: AbortSignal, live: () => void) => Promise<void>,
  refused: () => void,
): Promise<void> {
  let backoff = 250;
  while (!ctrl.signal.aborted && session.token) {
    const attempt = new AbortController();
    const stop = () => attempt.abort();
    ctrl.signal.addEventListener("abort", stop);
    online.signal.addEventListener("abort", stop);
    try {
      if (!navigator.onLine) throw new Error("offline");
      await open(attempt.signal, () => (backoff = 250));
    } catch (err) {
      if (ctrl.signal.aborted) return;
      if (ConnectError.from(err).code === Code.Unauthenticated) return refused();
    } finally {
      ctrl.signal.removeEventListener("abort", stop);
      online.signal.removeEventListener("abort", stop);
    }
    await backoffSleep(backoff);
    backoff = Math.min(backoff * 2, 5000);
  }
}

/** The cash-out offers of the open bets, pushed by the betting service as the odds move
 * (WatchCashOutOffers: the first message has them all, then only what changed). */
async function watchOffers(): Promise<void> {
  offersStream?.abort();
  const ctrl = new AbortController();
  offersStream = ctrl;
  const interval = { seconds: 0n, nanos: OFFER_INTERVAL_MS * 1_000_000 };
  await keepSignedIn(
    ctrl,
    async (signal, live) => {
      for await (const res of betting.watchCashOutOffers({ interval }, { signal })) {
        live();
        for (const o of res.offers) onOffer(o);
        renderBets();
      }
    },
    () => {}, // the bets' stream signs out
  );
}

/** Cash the bet out at its offer; with half, half its stake (priced first: the offer shown is the
 * whole bet's), the other half riding on. */
async function cashOut(betId: string, half = false): Promise<void> {
  const o = offers.get(betId);
  const b = bets.get(betId);
  if (!o || typeof o === "string" || !b?.stake || cashing.has(betId)) return;
  cashing.add(betId);
  renderBets();
  try {
    const stake = half ? { currencyCode: b.stake.currencyCode, minorUnits: b.stake.minorUnits / 2n } : undefined;
    const amount = stake ? (await betting.getCashOutOffer({ betId, stake })).amount : o.amount;
    // the offer as shown: the bet is cashed out at the offer when decided, never less than this
    const res = await betting.cashOut({ requestId: crypto.randomUUID(), betId, amount, stake });
    if (res.bet) upsertBet(res.bet);
    void refreshBalance();
  } catch (err) {
    const e = ConnectError.from(err);
    offers.set(betId, `${Code[e.code]}: ${e.rawMessage}`);
  } finally {
    cashing.delete(betId);
    renderBets();
  }
}

async function watchBets(): Promise<void> {
  betsStream?.abort();
  const ctrl = new AbortController();
  betsStream = ctrl;
  await keepSignedIn(
    ctrl,
    async (signal, live) => {
      const page = await betting.listBets({ pageSize: 20 }, { signal });
      for (const b of page.bets) upsertBet(b, true);
      for await (const res of betting.watchBets({ includeOpen: true }, { signal })) {
        live();
        const ev = res.event;
        if (ev?.bet) upsertBet(ev.bet, true);
        if (ev?.balance && balance) {
          balance.available = ev.balance.minorUnits;
          void refreshBalance();
        }
      }
    },
    () => signOut("your token was refused: sign in again"),
  );
}

function signIn(token: string): void {
  session.token = token.trim();
  playingSince(); // the session starts now (kept across a reload in this tab), not at the first reality-check tick
  bets.clear();
  renderBets();
  renderAccount();
  void refreshBalance();
  void refreshLimits();
  void watchBets();
  void watchOffers();
}

function signOut(why = ""): void {
  session.token = "";
  sessionStorage.removeItem(SINCE_KEY);
  lastReality = 0;
  betsStream?.abort();
  offersStream?.abort();
  offers.clear();
  balance = null;
  bets.clear();
  renderBets();
  renderAccount();
  $("signin-error").textContent = why;
}

// --- wiring ----------------------------------------------------------------------------------
function main(): void {
  const fromLink = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromLink) {
    session.token = fromLink;
    history.replaceState(null, "", location.pathname); // the token leaves the address bar
  }
  $("matches").addEventListener("click", (e) => {
    const b = (e.target as HTMLElement).closest("button.price") as HTMLButtonElement | null;
    if (b && !b.disabled && b.dataset.k) pick(b.dataset.k);
  });
  $("slip-legs").addEventListener("click", (e) => {
    const at = (e.target as HTMLElement).dataset.remove;
    const leg = at ? slip.get(at) : undefined;
    if (at && leg) {
      slip.delete(at);
      renderMatch(leg.matchId);
      renderSlip();
    }
  });
  $("stake").addEventListener("input", renderSlip);
  $("place").addEventListener("click", () => void placeBet());
  $("bets").addEventListener("click", (e) => {
    const data = (e.target as HTMLElement).dataset;
    if (data.cashOut) void cashOut(data.cashOut);
    if (data.cashOutHalf) void cashOut(data.cashOutHalf, true);
    if (data.auto) openAuto(data.auto);
    if (data.autoClear) void setAuto(data.autoClear, null);
  });
  $("auto-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const minor = parseAmount(($("auto-amount") as HTMLInputElement).value);
    if (minor === null || minor <= 0n) {
      $("auto-result").textContent = "the amount must be such as 12 or 12.50";
      return;
    }
    void setAuto(autoBet, minor);
  });
  $("auto-cancel").addEventListener("click", () => {
    $("auto-form").hidden = true;
  });
  $("signin").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn(($("token") as HTMLInputElement).value);
  });
  $("signout").addEventListener("click", () => signOut());
  $("deposit").addEventListener("click", () => void depositDemoMoney());
  $("deposit-limit-form").addEventListener("submit", (e) => {
    e.preventDefault();
    void setDepositLimit();
  });
  $("loss-limit-form").addEventListener("submit", (e) => {
    e.preventDefault();
    void setLossLimit();
  });
  $("break-form").addEventListener("submit", (e) => {
    e.preventDefault();
    void takeBreak();
  });
  $("reality-form").addEventListener("submit", (e) => {
    e.preventDefault();
    void setRealityCheck();
  });
  $("reality-continue").addEventListener("click", () => answerReality(true));
  $("reality-stop").addEventListener("click", () => answerReality(false));
  setInterval(() => void realityCheck(), 1000);
  setInterval(() => {
    for (const el of document.querySelectorAll<HTMLElement>(".countdown")) {
      el.textContent = `${Math.max(0, Math.ceil((Number(el.dataset.due) - Date.now()) / 1000))}s`;
    }
  }, 250);
  renderAccount();
  if (session.token) signIn(session.token);
  void watchOdds();
}

main();
