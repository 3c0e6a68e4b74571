-- gridwatch storage schema 2 (SQLite): alerts, their audit trail, the dispatch queues,
-- silences, emergency plans and the MQTT outbox. Owned by rules/ and alerts/;
-- storage/alerts.py is the only code that writes SQL against these tables.
-- Every time is epoch milliseconds: *_ms columns are wall time (the pipeline clock),
-- first_seen_ms / last_seen_ms are device time (the detections' timestamps).

-- One row per alert. At most one alert per dedup_key is not resolved (the partial unique
-- index): repeated detections update count / last_seen_ms / grade instead of adding rows.
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dedup_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    detection TEXT,
    grade TEXT NOT NULL CHECK (grade IN ('red', 'yellow', 'green')),
    severity INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'acknowledged', 'in_progress', 'resolved')),
    resolution TEXT CHECK (resolution IN ('resolved', 'auto_cleared')),
    scope TEXT NOT NULL CHECK (scope IN ('device', 'building', 'street')),
    scope_id TEXT NOT NULL,
    device_id TEXT,
    street TEXT NOT NULL,
    community TEXT,
    grid TEXT,
    building TEXT,
    rule TEXT NOT NULL,
    count INTEGER NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    value REAL,
    evidence TEXT NOT NULL,
    suggested_plan TEXT,
    opened_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    graded_ms INTEGER NOT NULL,
    acked_ms INTEGER,
    acked_by TEXT,
    resolved_ms INTEGER,
    resolved_by TEXT,
    esc_step INTEGER NOT NULL DEFAULT 0,
    esc_due_ms INTEGER
);
CREATE UNIQUE INDEX alerts_open_key ON alerts (dedup_key) WHERE state <> 'resolved';
CREATE INDEX alerts_grid_board ON alerts (grid, state, severity DESC, opened_ms DESC);
CREATE INDEX alerts_street_board ON alerts (street, state, severity DESC, opened_ms DESC);
CREATE INDEX alerts_esc_due ON alerts (esc_due_ms) WHERE esc_due_ms IS NOT NULL;
CREATE INDEX alerts_resolved ON alerts (resolved_ms) WHERE resolved_ms IS NOT NULL;

-- Every transition and notification of an alert: who, when, what, why.
CREATE TABLE alert_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id INTEGER NOT NULL REFERENCES alerts (id),
    ts_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT,
    grade TEXT,
    note TEXT
);
CREATE INDEX alert_events_alert ON alert_events (alert_id, id);

-- Dispatch queues: one logical queue per (level, queue) = ('grid', 's01c01g01'),
-- ('community', 's01c01') or ('street', 's01'). Delivery is at least once: a consumer
-- claims items with a lease (claimed_by, claim_until_ms) and acks them (done_ms); an
-- item whose lease ran out is claimable again. Items of one notification group
-- (group_key) that are not yet available collect further alerts (dispatch_item_alerts).
CREATE TABLE dispatch_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    level TEXT NOT NULL CHECK (level IN ('grid', 'community', 'street')),
    queue TEXT NOT NULL,
    item_kind TEXT NOT NULL,
    group_key TEXT,
    severity INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    available_ms INTEGER NOT NULL,
    claimed_by TEXT,
    claim_until_ms INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    done_ms INTEGER,
    done_by TEXT,
    status TEXT NOT NULL DEFAULT 'ready' CHECK (status IN ('ready', 'done', 'cancelled')),
    alert_id INTEGER,
    activation_id INTEGER,
    payload TEXT NOT NULL
);
CREATE INDEX dispatch_ready ON dispatch_queue (level, queue, severity DESC, created_ms, id)
    WHERE status = 'ready';
CREATE INDEX dispatch_group ON dispatch_queue (level, queue, group_key, available_ms)
    WHERE status = 'ready' AND group_key IS NOT NULL;
CREATE INDEX dispatch_activation ON dispatch_queue (activation_id) WHERE activation_id IS NOT NULL;

CREATE TABLE dispatch_item_alerts (
    item_id INTEGER NOT NULL REFERENCES dispatch_queue (id),
    alert_id INTEGER NOT NULL REFERENCES alerts (id),
    PRIMARY KEY (item_id, alert_id)
);
CREATE INDEX dispatch_item_alerts_alert ON dispatch_item_alerts (alert_id);

-- Silences and maintenance windows set at run time (the rules file may add more).
CREATE TABLE silences (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    scope TEXT NOT NULL CHECK (scope IN ('device', 'building', 'grid', 'community', 'street')),
    target TEXT NOT NULL,
    alerts TEXT NOT NULL DEFAULT '',
    starts_ms INTEGER NOT NULL,
    ends_ms INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    reason TEXT NOT NULL,
    revoked_ms INTEGER,
    revoked_by TEXT,
    CHECK (ends_ms > starts_ms)
);
CREATE INDEX silences_ends ON silences (ends_ms);

-- Emergency plan activations: at most one active activation per (plan, area).
CREATE TABLE plan_activations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    plan TEXT NOT NULL,
    area_level TEXT NOT NULL CHECK (area_level IN ('street', 'community', 'grid')),
    area_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'closed')),
    activated_ms INTEGER NOT NULL,
    activated_by TEXT NOT NULL,
    note TEXT,
    source_alert_id INTEGER,
    closed_ms INTEGER,
    closed_by TEXT,
    close_note TEXT
);
CREATE UNIQUE INDEX plan_active_area ON plan_activations (plan, area_level, area_id)
    WHERE state = 'active';

-- One task per grid of an activation: the queue item that carries it and the grid's
-- acknowledgement. UNIQUE makes the fan-out exactly once per grid.
CREATE TABLE plan_tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    activation_id INTEGER NOT NULL REFERENCES plan_activations (id),
    grid TEXT NOT NULL,
    item_id INTEGER NOT NULL REFERENCES dispatch_queue (id),
    created_ms INTEGER NOT NULL,
    acked_ms INTEGER,
    acked_by TEXT,
    note TEXT,
    UNIQUE (activation_id, grid)
);

-- Alert messages waiting for the MQTT publisher (written in the same transaction as
-- the alert change, deleted once the broker acknowledged them at QoS 1).
CREATE TABLE alert_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_ms INTEGER NOT NULL,
    grid TEXT NOT NULL,
    grade TEXT NOT NULL,
    payload TEXT NOT NULL
);
