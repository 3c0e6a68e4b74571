-- gridwatch storage schema 5 (PostgreSQL, native partitioning): time-first keys.
--
-- The unique (device, ts) btree of 0001 puts every reading of a device-shuffled stream on
-- a random leaf page of the day's index; once that index outgrows shared_buffers (a few
-- million rows: minutes of the district) each row's insert reads and dirties a page, and
-- the COPY cost rose from 4.7 to 10.9 us/row over 16 M rows and kept rising. Here the
-- same uniqueness (device, ts) is kept by an index whose leading column is the UTC
-- second of ts: inserts go to the last seconds' part of the index, which stays in memory
-- all day (1.9-2.3 us/row, flat). A device's series still finds its rows by index
-- descents, one per second of the range (storage.queries passes the seconds); its
-- latest reading by a backward scan of the newest seconds. Rollups get (minute, device)
-- as their key for the same reason: a refresh appends a minute instead of touching one
-- leaf per device of the whole history.
--
-- The expression must stay exactly as storage.schema.SECOND_SQL spells it: the planner
-- matches query expressions to the index by their parse tree.
-- TimescaleDB deployments keep their hypertables' own indexes (storage.timescale).
DO $$
BEGIN
    IF coalesce((SELECT value FROM storage_meta WHERE key = 'partitioning'), 'native')
            <> 'native' THEN
        RETURN;
    END IF;
    DROP INDEX IF EXISTS readings_elevator_device_ts;
    CREATE UNIQUE INDEX readings_elevator_second_device_ts
        ON readings_elevator ((floor(date_part('epoch', ts AT TIME ZONE 'UTC'))::bigint), device, ts);
    ALTER TABLE rollup_1m_elevator DROP CONSTRAINT rollup_1m_elevator_pkey;
    ALTER TABLE rollup_1m_elevator ADD PRIMARY KEY (minute, device);
    DROP INDEX IF EXISTS readings_sewage_device_ts;
    CREATE UNIQUE INDEX readings_sewage_second_device_ts
        ON readings_sewage ((floor(date_part('epoch', ts AT TIME ZONE 'UTC'))::bigint), device, ts);
    ALTER TABLE rollup_1m_sewage DROP CONSTRAINT rollup_1m_sewage_pkey;
    ALTER TABLE rollup_1m_sewage ADD PRIMARY KEY (minute, device);
    DROP INDEX IF EXISTS readings_highfall_device_ts;
    CREATE UNIQUE INDEX readings_highfall_second_device_ts
        ON readings_highfall ((floor(date_part('epoch', ts AT TIME ZONE 'UTC'))::bigint), device, ts);
    ALTER TABLE rollup_1m_highfall DROP CONSTRAINT rollup_1m_highfall_pkey;
    ALTER TABLE rollup_1m_highfall ADD PRIMARY KEY (minute, device);
END
$$;
