-- gridwatch storage schema 1 (SQLite, the embedded default): registry, telemetry,
-- rollups, dead letters, detector checkpoints. Same tables and columns as the PostgreSQL
-- schema; every time is epoch milliseconds (``ts_ms``), there is no partitioning
-- (retention deletes by ``ts_ms``), and partitioning is recorded as 'none'.

-- Key/value facts about this database (e.g. partitioning = native | timescale).
CREATE TABLE storage_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO storage_meta (key, value) VALUES ('partitioning', 'none');

-- The device registry. device_key is the stable integer that readings store instead of
-- the text id; it is never reused, and a device dropped from the registry is retired,
-- not deleted, so its history stays readable.
CREATE TABLE devices (
    device_key INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('elevator', 'sewage', 'highfall')),
    street TEXT NOT NULL,
    community TEXT NOT NULL,
    grid TEXT NOT NULL,
    building TEXT,
    floors INTEGER,
    floor_height_m REAL,
    rated_speed_mps REAL,
    depth_m REAL,
    overflow_level_m REAL,
    interval_s REAL NOT NULL,
    active INTEGER NOT NULL DEFAULT 1,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX devices_grid ON devices (grid);

-- Refused input, one row per (message, reason); see gridwatch.deadletter.
CREATE TABLE dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ms INTEGER NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    rows INTEGER NOT NULL,
    detail TEXT NOT NULL,
    excerpt BLOB NOT NULL
);
CREATE INDEX dead_letters_reason_received ON dead_letters (reason, received_ms);
CREATE INDEX dead_letters_received ON dead_letters (received_ms);

-- Detector state: a named set of numpy arrays stored as one .npz blob.
CREATE TABLE detector_checkpoints (
    name TEXT PRIMARY KEY,
    saved_ms INTEGER NOT NULL,
    arrays INTEGER NOT NULL,
    nbytes INTEGER NOT NULL,
    state BLOB NOT NULL
);

-- Telemetry: one wide WITHOUT ROWID table per device kind keyed by (device, ts_ms),
-- which makes re-writing a reading a no-op (INSERT OR IGNORE). Rollups: one row per
-- device and minute, maintained by storage.rollups.

-- elevator: one typed column per field of gridwatch.domain.FIELDS[ELEVATOR]
CREATE TABLE readings_elevator (
    device INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    position_m REAL,
    speed_mps REAL,
    vibration_mps2 REAL,
    door_open REAL,
    occupancy REAL,
    load_kg REAL,
    PRIMARY KEY (device, ts_ms)
) WITHOUT ROWID;
CREATE INDEX readings_elevator_ts ON readings_elevator (ts_ms);

CREATE TABLE rollup_1m_elevator (
    device INTEGER NOT NULL,
    minute_ms INTEGER NOT NULL,
    n INTEGER NOT NULL,
    position_m_avg REAL,
    position_m_min REAL,
    position_m_max REAL,
    speed_mps_avg REAL,
    speed_mps_min REAL,
    speed_mps_max REAL,
    vibration_mps2_avg REAL,
    vibration_mps2_min REAL,
    vibration_mps2_max REAL,
    door_open_avg REAL,
    door_open_min REAL,
    door_open_max REAL,
    occupancy_avg REAL,
    occupancy_min REAL,
    occupancy_max REAL,
    load_kg_avg REAL,
    load_kg_min REAL,
    load_kg_max REAL,
    PRIMARY KEY (device, minute_ms)
) WITHOUT ROWID;
CREATE INDEX rollup_1m_elevator_minute ON rollup_1m_elevator (minute_ms);

-- sewage: one typed column per field of gridwatch.domain.FIELDS[SEWAGE]
CREATE TABLE readings_sewage (
    device INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    level_m REAL,
    tilt_deg REAL,
    rain_mmph REAL,
    PRIMARY KEY (device, ts_ms)
) WITHOUT ROWID;
CREATE INDEX readings_sewage_ts ON readings_sewage (ts_ms);

CREATE TABLE rollup_1m_sewage (
    device INTEGER NOT NULL,
    minute_ms INTEGER NOT NULL,
    n INTEGER NOT NULL,
    level_m_avg REAL,
    level_m_min REAL,
    level_m_max REAL,
    tilt_deg_avg REAL,
    tilt_deg_min REAL,
    tilt_deg_max REAL,
    rain_mmph_avg REAL,
    rain_mmph_min REAL,
    rain_mmph_max REAL,
    PRIMARY KEY (device, minute_ms)
) WITHOUT ROWID;
CREATE INDEX rollup_1m_sewage_minute ON rollup_1m_sewage (minute_ms);

-- highfall: one typed column per field of gridwatch.domain.FIELDS[HIGHFALL]
CREATE TABLE readings_highfall (
    device INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    track_id INTEGER,
    height_m REAL,
    horizontal_m REAL,
    "end" REAL,
    PRIMARY KEY (device, ts_ms)
) WITHOUT ROWID;
CREATE INDEX readings_highfall_ts ON readings_highfall (ts_ms);

CREATE TABLE rollup_1m_highfall (
    device INTEGER NOT NULL,
    minute_ms INTEGER NOT NULL,
    n INTEGER NOT NULL,
    track_id_avg REAL,
    track_id_min REAL,
    track_id_max REAL,
    height_m_avg REAL,
    height_m_min REAL,
    height_m_max REAL,
    horizontal_m_avg REAL,
    horizontal_m_min REAL,
    horizontal_m_max REAL,
    end_avg REAL,
    end_min REAL,
    end_max REAL,
    PRIMARY KEY (device, minute_ms)
) WITHOUT ROWID;
CREATE INDEX rollup_1m_highfall_minute ON rollup_1m_highfall (minute_ms);
