from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from gridwatch.errors import StorageError
from storage.engine import MIGRATIONS_ROOT, Storage, open_storage
from storage.migrate import current_version, discover, split_sqlite_script
from storage.testing import migrations_through, temp_storage


def _tables(storage: Storage) -> set[str]:
    with storage.connection(readonly=True) as conn:
        if storage.dialect == "postgres":
            rows = conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            ).fetchall()
        else:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows}


def test_migrate_from_empty_creates_every_table(backend: str, tmp_path: Path, pg_url: str) -> None:
    with temp_storage(backend, pg_url=pg_url, tmp_dir=tmp_path, migrate=False) as s:  # type: ignore[arg-type]
        assert current_version(s) == 0
        applied = s.migrate()
        assert applied[0] == "0001_core"
        tables = _tables(s)
        for name in (
            "schema_migrations",
            "devices",
            "dead_letters",
            "detector_checkpoints",
            "storage_meta",
            "readings_elevator",
            "readings_sewage",
            "readings_highfall",
            "rollup_1m_sewage",
        ):
            assert name in tables, name
        assert current_version(s) >= 1


def test_rerun_is_a_noop(storage: Storage) -> None:
    before = _tables(storage)
    assert storage.migrate() == []
    assert storage.migrate() == []
    assert _tables(storage) == before


def test_upgrade_a_database_made_by_an_older_migration_set(
    backend: str, tmp_path: Path, pg_url: str
) -> None:
    old = migrations_through(backend, 1, tmp_path / "old")  # type: ignore[arg-type]  # release 1
    new = tmp_path / "new"
    shutil.copytree(MIGRATIONS_ROOT / backend, new)  # today's set, plus one more below
    (new / "0099_note_column.sql").write_text(
        "ALTER TABLE dead_letters ADD COLUMN note TEXT;\n"
        "UPDATE dead_letters SET note = 'migrated';\n"
    )
    with temp_storage(backend, pg_url=pg_url, tmp_dir=tmp_path, migrations_dir=old) as s:  # type: ignore[arg-type]
        from gridwatch.deadletter import DeadLetter

        s.write_dead_letters([DeadLetter.of("t/x", "bad_json", b"{", 1_000)])
        s.save_checkpoint("det", {"mean_": np.arange(3.0)})
        later = [m.label for m in discover(new) if m.version > 1]
        assert later[-1] == "0099_note_column"
        assert s.migrate(new) == later
        assert s.migrate(new) == []
        got = s.load_checkpoint("det")
        assert got is not None and got["mean_"].tolist() == [0.0, 1.0, 2.0]
        with s.connection(readonly=True) as conn:
            rows = conn.execute("SELECT reason, note FROM dead_letters").fetchall()
        assert [tuple(r) for r in rows] == [("bad_json", "migrated")]
        assert current_version(s) == 99


def test_edited_migration_is_refused(backend: str, tmp_path: Path, pg_url: str) -> None:
    mig = tmp_path / "mig"
    shutil.copytree(MIGRATIONS_ROOT / backend, mig)
    with temp_storage(backend, pg_url=pg_url, tmp_dir=tmp_path, migrations_dir=mig) as s:  # type: ignore[arg-type]
        first = sorted(mig.glob("0001_*.sql"))[0]
        first.write_text(first.read_text() + "\n-- edited\n")
        with pytest.raises(StorageError, match=r"0001_core was applied with checksum"):
            s.migrate(mig)


def test_failed_migration_rolls_back_and_names_the_file(
    backend: str, tmp_path: Path, pg_url: str
) -> None:
    mig = tmp_path / "mig"
    shutil.copytree(MIGRATIONS_ROOT / backend, mig)
    (mig / "0050_broken.sql").write_text(
        "CREATE TABLE half_done (x INTEGER);\nCREATE TABLE oops (;\n"
    )
    with temp_storage(backend, pg_url=pg_url, tmp_dir=tmp_path, migrations_dir=None) as s:  # type: ignore[arg-type]
        with pytest.raises(StorageError, match=r"0050_broken.sql failed"):
            s.migrate(mig)
        assert "half_done" not in _tables(s)
        assert current_version(s) == discover(MIGRATIONS_ROOT / backend)[-1].version


def test_bad_file_names_and_clashing_versions(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.sql").write_text("SELECT 1;")
    with pytest.raises(StorageError, match=r"share version 1"):
        discover(tmp_path)
    (tmp_path / "0001_b.sql").unlink()
    (tmp_path / "2_bad-name.sql").write_text("SELECT 1;")
    with pytest.raises(StorageError, match=r"NNNN_<lower_snake_name>.sql"):
        discover(tmp_path)


def test_sqlite_split_keeps_triggers_whole() -> None:
    script = (
        "-- comment\nCREATE TABLE a (x INTEGER);\n"
        "CREATE TRIGGER t AFTER INSERT ON a BEGIN\n  UPDATE a SET x = 1;\n  SELECT 1;\nEND;\n"
    )
    parts = split_sqlite_script(script)
    assert len(parts) == 2
    assert parts[1].startswith("CREATE TRIGGER") and parts[1].endswith("END;")
    with pytest.raises(StorageError, match="incomplete SQL statement"):
        split_sqlite_script("CREATE TABLE b (x INTEGER")


def test_open_storage_rejects_unknown_urls(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"scheme 'mysql' is not supported"):
        open_storage("mysql://x@y/z")
    with pytest.raises(StorageError, match="must name a file"):
        open_storage("sqlite://")
    with pytest.raises(StorageError, match="plain lower-case identifier"):
        open_storage("postgresql://postgres@127.0.0.1:5432/test", schema="Bad;Name")


def test_unreachable_postgres_is_a_clear_error() -> None:
    with pytest.raises(StorageError, match="cannot connect to PostgreSQL at"):
        open_storage("postgresql://postgres:secret@127.0.0.1:1/test", connect_timeout_s=1)


def test_schema_in_url_and_sqlite_wal(pg_url: str, tmp_path: Path) -> None:
    s = open_storage(f"sqlite:///{tmp_path}/a/b.db")
    with s.connection(readonly=True) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (tmp_path / "a" / "b.db").exists()
    from storage.testing import pg_schema

    with pg_schema(pg_url) as schema:
        pg = open_storage(f"{pg_url}?schema={schema}")
        try:
            with pg.connection() as conn:
                assert conn.execute("SELECT current_schema()").fetchone()[0] == schema
        finally:
            pg.close()


def test_connection_rolls_back_on_error(storage: Storage) -> None:
    with pytest.raises(RuntimeError), storage.connection() as conn:
        conn.execute(
            storage.sql("INSERT INTO storage_meta (key, value) VALUES (%s, %s)"), ("k", "v")
        )
        raise RuntimeError("boom")
    with storage.connection(readonly=True) as conn:
        assert conn.execute("SELECT count(*) FROM storage_meta WHERE key = 'k'").fetchone()[0] == 0
    with storage.connection() as conn:
        conn.execute(
            storage.sql("INSERT INTO storage_meta (key, value) VALUES (%s, %s)"), ("k", "v")
        )
    with storage.connection(readonly=True) as conn:
        assert conn.execute("SELECT count(*) FROM storage_meta WHERE key = 'k'").fetchone()[0] == 1


def test_masked_repr_hides_password(tmp_path: Path) -> None:
    from storage.engine import mask_url

    assert mask_url("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert "pw" not in repr(open_storage(f"sqlite:///{tmp_path}/x.db"))
