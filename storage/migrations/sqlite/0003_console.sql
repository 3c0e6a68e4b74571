-- gridwatch storage schema 3 (SQLite): dispatcher console accounts, sessions and
-- sign-in attempts. Owned by alerts/console; storage/users.py is the only code that
-- writes SQL against these tables. Times are epoch milliseconds (the console's clock).

-- One row per account. A password is stored only as a KDF hash
-- ("scrypt$N$r$p$salt$hash"); disabled accounts cannot sign in and their sessions die.
CREATE TABLE console_users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('dispatcher', 'supervisor', 'admin')),
    street TEXT,
    password_hash TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);

-- The grids a dispatcher (or supervisor, in addition to the street) works on.
CREATE TABLE console_user_grids (
    user_id INTEGER NOT NULL REFERENCES console_users (id) ON DELETE CASCADE,
    grid TEXT NOT NULL,
    PRIMARY KEY (user_id, grid)
);

-- Browser sessions (kind 'cookie') and API bearer tokens (kind 'bearer'). Only the
-- SHA-256 of the secret is stored, so a leaked table signs nobody in.
CREATE TABLE console_sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash TEXT NOT NULL UNIQUE,
    user_id INTEGER NOT NULL REFERENCES console_users (id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('cookie', 'bearer')),
    label TEXT,
    remote TEXT,
    created_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    revoked_ms INTEGER
);
CREATE INDEX console_sessions_user ON console_sessions (user_id);
CREATE INDEX console_sessions_expires ON console_sessions (expires_ms);

-- Every sign-in attempt (outcome 'ok', 'fail', or 'refused' while locked out) and every
-- administrative 'unlock'. Lockout counts the failures since the later of the window
-- start and the last success or unlock; the per-address limit counts 'fail' and 'refused'.
-- The name is stored as typed (it may be no account at all).
CREATE TABLE console_login_attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    remote TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('ok', 'fail', 'refused', 'unlock'))
);
CREATE INDEX console_login_attempts_name ON console_login_attempts (name, ts_ms);
CREATE INDEX console_login_attempts_remote ON console_login_attempts (remote, ts_ms);

-- The console's board: every open alert red -> green, newest first, one page at a time.
-- An administrator's board covers all grids, which the per-grid board indexes of
-- 0002_alerts.sql cannot order; with this index SQLite walks the alerts in board order
-- and stops after a page (about 30 ms -> 4 ms at 10,000 open alerts). Not partial:
-- SQLite uses a partial index only when the query repeats its WHERE literally, and the
-- board's state list is a parameter.
CREATE INDEX console_alerts_board ON alerts (severity DESC, opened_ms DESC, id DESC);
-- Alerts counted per grid, street, grade and state (board header, grid overview) from
-- the index alone, in group order.
CREATE INDEX console_alerts_counts ON alerts (grid, street, grade, state);
