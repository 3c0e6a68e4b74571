"""Spill files: readings the database could not take yet, kept on local disk in order.

Each file holds a run of ``Rows`` (an ``.npz``, no pickle) and is named by a sequence
number, so replay order is the order of acceptance. Files are written under a temporary
name, fsynced and renamed: a crash leaves either a whole file or none. Files survive a
restart: a new writer on the same directory replays them first. An exclusive lock on the
directory keeps two writers from replaying the same files.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gridwatch.domain import DeviceKind
from gridwatch.errors import StorageError
from storage.rows import Rows
from storage.schema import TABLES

log = logging.getLogger(__name__)

_FILE = re.compile(r"^(\d{12})\.npz$")
FORMAT_VERSION = 1


class SpillDir:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fh = (self.path / ".lock").open("a+")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_fh.close()
            raise StorageError(
                f"spill directory {self.path} is in use by another writer; give each writer "
                "its own spill_dir"
            ) from None
        for tmp in self.path.glob(".*.tmp"):  # a crash mid-write: the batch was never acked
            tmp.unlink()
        existing = self.files()
        self._next = int(_FILE.match(existing[-1].name).group(1)) + 1 if existing else 1  # type: ignore[union-attr]

    def files(self) -> list[Path]:
        """Spill files, oldest first."""
        return sorted(p for p in self.path.iterdir() if _FILE.match(p.name))

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.files())

    def write(self, runs: Sequence[Rows]) -> Path:
        """Persist ``runs`` (in order) as the newest spill file; durable when this returns."""
        arrays: dict[str, np.ndarray] = {
            "meta": np.array([FORMAT_VERSION, len(runs)], dtype=np.int64)
        }
        for i, r in enumerate(runs):
            arrays[f"k{i}"] = np.array([r.kind.code], dtype=np.int8)
            arrays[f"d{i}"] = r.device
            arrays[f"t{i}"] = r.ts_ms
            arrays[f"n{i}"] = np.array(TABLES[r.kind].fields, dtype=np.str_)
            for j, col in enumerate(r.fields):
                arrays[f"f{i}_{j}"] = col
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        seq = self._next
        self._next += 1
        final = self.path / f"{seq:012d}.npz"
        tmp = self.path / f".{seq:012d}.tmp"
        with tmp.open("wb") as fh:
            fh.write(buf.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(final)
        _fsync_dir(self.path)
        return final

    def read(self, path: Path) -> list[Rows]:
        """The runs of one spill file; a file that cannot be read raises ``StorageError``."""
        try:
            with np.load(path, allow_pickle=False) as npz:
                version, n = (int(v) for v in npz["meta"])
                if version != FORMAT_VERSION:
                    raise StorageError(f"{path}: spill format {version}, expected {FORMAT_VERSION}")
                out = []
                for i in range(n):
                    kind = DeviceKind.from_code(int(npz[f"k{i}"][0]))
                    names = [str(x) for x in npz[f"n{i}"]]
                    saved = {name: npz[f"f{i}_{j}"] for j, name in enumerate(names)}
                    t = TABLES[kind]
                    device = npz[f"d{i}"]
                    fields = tuple(
                        saved[f].astype(d)
                        if f in saved
                        else np.full(device.shape[0], np.nan, dtype=d)
                        for f, d in zip(t.fields, t.dtypes, strict=True)
                    )
                    out.append(Rows(kind, device, npz[f"t{i}"], fields))
                return out
        except (OSError, ValueError, KeyError) as exc:
            raise StorageError(f"spill file {path} is unreadable: {exc}") from exc

    def quarantine(self, path: Path, reason: str) -> Path:
        """Move a file aside (``*.bad``) so replay can go on; nothing is deleted."""
        bad = path.with_suffix(".bad")
        path.replace(bad)
        log.error("spill file quarantined", extra={"file": str(bad), "reason": reason})
        return bad

    def remove(self, path: Path) -> None:
        path.unlink()
        _fsync_dir(self.path)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
        self._lock_fh.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
