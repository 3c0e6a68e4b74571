-- gridwatch storage schema 3 (PostgreSQL): dispatcher console accounts, sessions and
-- sign-in attempts. Owned by alerts/console; storage/users.py is the only code that
-- writes SQL against these tables. Times are epoch milliseconds (the console's clock).

-- One row per account. A password is stored only as a KDF hash
-- ("scrypt$N$r$p$salt$hash"); disabled accounts cannot sign in and their sessions die.
CREATE TABLE console_users (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('dispatcher', 'supervisor', 'admin')),
    street TEXT,
    password_hash TEXT NOT NULL,
    disabled BOOLEAN NOT NULL DEFAULT FALSE,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);

-- The grids a dispatcher (or supervisor, in addition to the street) works on.
CREATE TABLE console_user_grids (
    user_id BIGINT NOT NULL REFERENCES console_users (id) ON DELETE CASCADE,
    grid TEXT NOT NULL,
    PRIMARY KEY (user_id, grid)
);

-- Browser sessions (kind 'cookie') and API bearer tokens (kind 'bearer'). Only the
-- SHA-256 of the secret is stored, so a leaked table signs nobody in.
CREATE TABLE console_sessions (
    id BIGSERIAL PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    user_id BIGINT NOT NULL REFERENCES console_users (id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('cookie', 'bearer')),
    label TEXT,
    remote TEXT,
    created_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);
CREATE INDEX console_sessions_user ON console_sessions (user_id);
CREATE INDEX console_sessions_expires ON console_sessions (expires_ms);

-- Every sign-in attempt (outcome 'ok', 'fail', or 'refused' while locked out) and every
-- administrative 'unlock'. Lockout counts the failures since the later of the window
-- start and the last success or unlock; the per-address limit counts 'fail' and 'refused'.
-- The name is stored as typed (it may be no account at all).
CREATE TABLE console_login_attempts (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    remote TEXT NOT NULL,
    ts_ms BIGINT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('ok', 'fail', 'refused', 'unlock'))
);
CREATE INDEX console_login_attempts_name ON console_login_attempts (name, ts_ms);
CREATE INDEX console_login_attempts_remote ON console_login_attempts (remote, ts_ms);

-- The console's board: every open alert red -> green, newest first, one page at a time.
-- An administrator's board covers all grids, which the per-grid board indexes of
-- 0002_alerts.sql cannot order; this partial index turns that query from a sort of
-- every open alert into a short index scan (about 30 ms -> 1 ms at 10,000 open alerts).
-- Resolved alerts, the bulk of the table over time, are not in it.
CREATE INDEX console_alerts_board ON alerts (severity DESC, opened_ms DESC, id DESC)
    WHERE state <> 'resolved';
-- Open alerts counted per grid, street, grade and state (board header, grid overview)
-- from the index alone, in group order.
CREATE INDEX console_alerts_counts ON alerts (grid, street, grade, state)
    WHERE state <> 'resolved';
