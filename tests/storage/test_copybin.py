"""Binary COPY payloads built with numpy read back exactly (NaN as NULL) in PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.copybin import HEADER, TRAILER, encode_rows
from storage.schema import PG_EPOCH_OFFSET_MS

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def conn(pg_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_url) as c:
        c.execute(
            "CREATE TEMP TABLE t (device integer, ts timestamptz, a real, b bigint, "
            "c double precision, d real)"
        )
        yield c


def _roundtrip(conn: psycopg.Connection, dev, ts, fields):  # type: ignore[no-untyped-def]
    conn.execute("TRUNCATE t")
    with conn.cursor() as cur, cur.copy("COPY t FROM STDIN (FORMAT BINARY)") as cp:
        cp.write(encode_rows(dev, ts, fields))
    return conn.execute(
        "SELECT device, (extract(epoch FROM ts) * 1000)::bigint, a, b, c, d FROM t ORDER BY device"
    ).fetchall()


def test_header_and_empty_payload() -> None:
    empty = encode_rows(np.zeros(0, np.int32), np.zeros(0, np.int64), [np.zeros(0, np.float32)])
    assert empty == HEADER + TRAILER


def test_values_nulls_and_extremes(conn: psycopg.Connection) -> None:
    dev = np.array([0, 1, 2, 3], np.int32)
    ts = np.array([0, PG_EPOCH_OFFSET_MS, 1_780_000_000_123, -1_000], np.int64)
    a = np.array([1.5, np.nan, -0.0, 3.4e38], np.float32)
    b = np.array([0, -(2**62), 2**62, 7], np.int64)
    c = np.array([np.nan, np.nan, 1e-300, 2.0], np.float64)
    d = np.array([np.nan, 1.0, np.nan, 2.0], np.float32)
    rows = _roundtrip(conn, dev, ts, [a, b, c, d])
    assert rows == [
        (0, 0, 1.5, 0, None, None),
        (1, PG_EPOCH_OFFSET_MS, None, -(2**62), None, 1.0),
        (2, 1_780_000_000_123, -0.0, 2**62, 1e-300, None),
        (3, -1_000, pytest.approx(3.4e38, rel=1e-6), 7, 2.0, 2.0),
    ]


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(width=32, allow_nan=True, allow_infinity=False),
            st.floats(allow_nan=True, allow_infinity=False),
            st.floats(width=32, allow_nan=True, allow_infinity=False),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_any_nan_pattern_round_trips(conn: psycopg.Connection, values: list[tuple]) -> None:  # type: ignore[type-arg]
    n = len(values)
    a = np.array([v[0] for v in values], np.float32)
    c = np.array([v[1] for v in values], np.float64)
    d = np.array([v[2] for v in values], np.float32)
    b = np.arange(n, dtype=np.int64) * 3
    rows = _roundtrip(
        conn, np.arange(n, dtype=np.int32), np.arange(n, dtype=np.int64), [a, b, c, d]
    )
    assert len(rows) == n
    for i, row in enumerate(rows):
        for got, want in zip(row[2:], (a[i], b[i], c[i], d[i]), strict=True):
            if isinstance(want, np.floating) and np.isnan(want):
                assert got is None
            else:
                assert got == want
