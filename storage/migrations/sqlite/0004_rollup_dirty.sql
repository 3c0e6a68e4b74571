-- gridwatch storage schema 4 (SQLite): minutes whose 1-minute rollups are stale.
--
-- Every reading writer records the minutes it wrote, in the transaction that writes the
-- readings, so a minute is marked if and only if its rows are committed (a crash loses
-- neither). One writer at a time (SQLite's write lock) takes the marks and
-- refreshes those minutes for all devices (storage.rollups.refresh_dirty), whichever
-- worker or partition wrote them: late readings (a replay after an outage) are folded in
-- too. No unique key on purpose: concurrent writers append without waiting on each other;
-- the refresher collapses repeats.
CREATE TABLE rollup_dirty (
    kind TEXT NOT NULL,
    minute_ms BIGINT NOT NULL
);
CREATE INDEX rollup_dirty_minute ON rollup_dirty (minute_ms);
