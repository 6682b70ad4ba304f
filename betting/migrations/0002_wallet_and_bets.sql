-- The wallet ledger, bets and the outbox.
--
-- Money is bigint minor units everywhere. Every movement is one row in transactions and two or
-- more rows in postings whose amounts sum to zero (checked when the transaction commits). The
-- balance of an account is kept in ledger_accounts and moved only by the trigger on postings, so
-- a balance always equals the sum of its postings. Ledger rows cannot be updated or deleted.

CREATE TABLE betting.ledger_accounts (
    account_id  text PRIMARY KEY,                 -- e.g. player:alice:EUR, held:alice:EUR, house:EUR
    kind        text NOT NULL CHECK (kind IN ('player', 'held', 'house', 'cash')),
    owner       text NOT NULL,                    -- the player's account id, or '' for house and cash
    currency    char(3) NOT NULL,
    balance     bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- a player's money and the stakes held for them never go below zero, whatever the isolation
    -- level: the row is updated in place under its lock and the check runs on every update
    CONSTRAINT player_and_held_never_negative CHECK (kind IN ('house', 'cash') OR balance >= 0)
);
CREATE INDEX ledger_accounts_owner ON betting.ledger_accounts (owner, currency);

CREATE TABLE betting.transactions (
    transaction_id uuid PRIMARY KEY,
    kind           text NOT NULL CHECK (kind IN ('deposit', 'withdrawal', 'stake_hold', 'stake_release',
                                                 'settlement', 'correction')),
    owner          text NOT NULL,                 -- whose money it is about
    currency       char(3) NOT NULL,
    bet_id         uuid,
    request_id     text,                          -- the caller's idempotency key, if any
    request_digest bytea,
    reason         text NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now()
);
-- a wallet call's request id is used once per player
CREATE UNIQUE INDEX transactions_request ON betting.transactions (owner, request_id)
    WHERE request_id IS NOT NULL AND kind IN ('deposit', 'withdrawal');
CREATE INDEX transactions_owner ON betting.transactions (owner, created_at DESC);

CREATE TABLE betting.postings (
    posting_id     bigserial PRIMARY KEY,
    transaction_id uuid NOT NULL REFERENCES betting.transactions,
    account_id     text NOT NULL REFERENCES betting.ledger_accounts,
    amount         bigint NOT NULL CHECK (amount <> 0),   -- + credits the account's balance
    balance_after  bigint NOT NULL DEFAULT 0              -- set by the trigger
);
CREATE INDEX postings_transaction ON betting.postings (transaction_id);
CREATE INDEX postings_account ON betting.postings (account_id, posting_id);

-- A posting moves its account's balance; the balance after it is recorded with it. Its id is drawn
-- once the account row is locked, so an account's postings in id order replay to its balance.
CREATE FUNCTION betting.apply_posting() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE betting.ledger_accounts SET balance = balance + NEW.amount
     WHERE account_id = NEW.account_id
     RETURNING balance INTO NEW.balance_after;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no ledger account %', NEW.account_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    NEW.posting_id := nextval(pg_get_serial_sequence('betting.postings', 'posting_id'));
    RETURN NEW;
END $$;
CREATE TRIGGER postings_apply BEFORE INSERT ON betting.postings
    FOR EACH ROW EXECUTE FUNCTION betting.apply_posting();

-- Every transaction balances: its postings sum to zero when it commits.
CREATE FUNCTION betting.check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE total bigint;
BEGIN
    SELECT coalesce(sum(amount), 0) INTO total FROM betting.postings WHERE transaction_id = NEW.transaction_id;
    IF total <> 0 THEN
        RAISE EXCEPTION 'ledger transaction % does not balance (sum %)', NEW.transaction_id, total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER postings_balanced AFTER INSERT ON betting.postings
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION betting.check_balanced();

-- The ledger is append-only: corrections are new transactions.
CREATE FUNCTION betting.immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are immutable; book a correction instead', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER postings_immutable BEFORE UPDATE OR DELETE ON betting.postings
    FOR EACH ROW EXECUTE FUNCTION betting.immutable();
CREATE TRIGGER transactions_immutable BEFORE UPDATE OR DELETE ON betting.transactions
    FOR EACH ROW EXECUTE FUNCTION betting.immutable();
CREATE TRIGGER postings_no_truncate BEFORE TRUNCATE ON betting.postings
    FOR EACH STATEMENT EXECUTE FUNCTION betting.immutable();
CREATE TRIGGER transactions_no_truncate BEFORE TRUNCATE ON betting.transactions
    FOR EACH STATEMENT EXECUTE FUNCTION betting.immutable();

CREATE TABLE betting.bets (
    bet_id          uuid PRIMARY KEY,
    account_id      text NOT NULL,
    request_id      text NOT NULL,
    request_digest  bytea NOT NULL,
    currency        char(3) NOT NULL,
    stake           bigint NOT NULL CHECK (stake > 0),
    policy          smallint NOT NULL,
    status          text NOT NULL CHECK (status IN ('pending', 'accepted', 'rejected', 'settled', 'voided')),
    odds            numeric(12, 2) NOT NULL CHECK (odds >= 1.01),  -- combined odds (at acceptance)
    potential_payout bigint NOT NULL,
    in_play         boolean NOT NULL,
    reject_reason   smallint NOT NULL DEFAULT 0,
    reject_detail   text NOT NULL DEFAULT '',
    placed_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    decide_at       timestamptz NOT NULL,                       -- end of the in-play delay
    decided_at      timestamptz,
    result          smallint NOT NULL DEFAULT 0,
    payout          bigint NOT NULL DEFAULT 0,
    settled_at      timestamptz,
    settlement_version integer NOT NULL DEFAULT 0,
    UNIQUE (account_id, request_id)
);
CREATE INDEX bets_account ON betting.bets (account_id, placed_at DESC, bet_id DESC);
CREATE INDEX bets_pending ON betting.bets (decide_at) WHERE status = 'pending';

CREATE TABLE betting.selections (
    bet_id          uuid NOT NULL REFERENCES betting.bets,
    leg             smallint NOT NULL,
    match_id        text NOT NULL,
    market_key      text NOT NULL,                -- canonical, e.g. total|total=2.5
    market_type     text NOT NULL,
    outcome_id      text NOT NULL,
    requested_odds  numeric(12, 2) NOT NULL,
    market_version  bigint NOT NULL,              -- the market version the client saw
    seen_version    bigint NOT NULL,              -- the match version the bet was checked against
    odds            numeric(12, 2) NOT NULL,      -- the price the leg stands at
    result          smallint NOT NULL DEFAULT 0,
    PRIMARY KEY (bet_id, leg)
);
CREATE INDEX selections_market ON betting.selections (match_id, market_key, outcome_id);

-- Worst-case payout per outcome over the accepted open bets (an accumulator counts on every leg).
CREATE TABLE betting.liability (
    match_id    text NOT NULL,
    market_key  text NOT NULL,
    outcome_id  text NOT NULL,
    currency    char(3) NOT NULL,
    amount      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (match_id, market_key, outcome_id, currency)
);

-- Per-player limits (absent: the configured defaults).
CREATE TABLE betting.account_limits (
    account_id       text NOT NULL,
    currency         char(3) NOT NULL,
    max_stake        bigint,           -- per bet
    max_daily_stake  bigint,           -- over the last 24 hours
    PRIMARY KEY (account_id, currency)
);

-- Events leave through this outbox, written in the same transaction as the change they report;
-- the relay publishes them to the JetStream stream BETS with Nats-Msg-Id = msg_id.
CREATE TABLE betting.outbox (
    id           bigserial PRIMARY KEY,
    subject      text NOT NULL,
    msg_id       text NOT NULL,
    payload      bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON betting.outbox (id) WHERE published_at IS NULL;
