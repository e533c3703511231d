"""The results store: every profiled measurement, appended to one local SQLite database.

One row per measurement (a task's artifact timed with one runtime on one device). Rows are never changed
or deleted (triggers refuse it), so the store is an audit trail reports can read. Each row says where the
number comes from (`provenance`: measured / emulated / simulated / estimated) and whether the runtime's
output matched the bundle's reference vectors.

Location: `--store PATH`, else `$EDGEMTL_RESULTS`, else `~/.cache/edgemtl/results.sqlite`. Several
profile jobs may write at once: WAL journal, a busy timeout, and one `BEGIN IMMEDIATE` transaction per
append. The schema version lives in `PRAGMA user_version`; a store written by a newer edgemtl is refused.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from edgemtl.errors import EdgemtlError

SCHEMA_VERSION = 1
PROVENANCES = ("measured", "emulated", "simulated", "estimated")
BUSY_TIMEOUT_S = 30.0

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp TEXT NOT NULL,
    device_key TEXT NOT NULL,
    device_description TEXT NOT NULL DEFAULT '',
    bundle TEXT NOT NULL DEFAULT '',
    task TEXT NOT NULL,
    artifact TEXT NOT NULL DEFAULT '',
    artifact_sha256 TEXT NOT NULL DEFAULT '',
    runtime TEXT NOT NULL,
    runs INTEGER NOT NULL,
    median_ms REAL NOT NULL,
    p90_ms REAL NOT NULL,
    min_ms REAL NOT NULL,
    provenance TEXT NOT NULL CHECK (provenance IN ({", ".join(f"'{p}'" for p in PROVENANCES)})),
    max_abs_diff REAL,
    check_passed INTEGER,
    details TEXT NOT NULL DEFAULT '{{}}'
);
CREATE INDEX IF NOT EXISTS measurements_device_task ON measurements (device_key, task);
CREATE TRIGGER IF NOT EXISTS measurements_no_update BEFORE UPDATE ON measurements
    BEGIN SELECT RAISE(ABORT, 'the results store is append-only'); END;
CREATE TRIGGER IF NOT EXISTS measurements_no_delete BEFORE DELETE ON measurements
    BEGIN SELECT RAISE(ABORT, 'the results store is append-only'); END;
"""

_COLUMNS = ("timestamp", "device_key", "device_description", "bundle", "task", "artifact", "artifact_sha256",
            "runtime", "runs", "median_ms", "p90_ms", "min_ms", "provenance", "max_abs_diff", "check_passed",
            "details")


@dataclass(frozen=True)
class Measurement:
    """One timed artifact. Times in milliseconds; `check_passed` is None when no reference was available."""

    device_key: str
    task: str
    runtime: str
    runs: int
    median_ms: float
    p90_ms: float
    min_ms: float
    provenance: str
    device_description: str = ""
    bundle: str = ""
    artifact: str = ""
    artifact_sha256: str = ""
    max_abs_diff: float | None = None
    check_passed: bool | None = None
    timestamp: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    details: dict[str, Any] = field(default_factory=dict)
    id: int | None = None

    def __post_init__(self) -> None:
        if self.provenance not in PROVENANCES:
            raise ValueError(f"provenance must be one of {', '.join(PROVENANCES)}, not {self.provenance!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_store_path() -> Path:
    env = os.environ.get("EDGEMTL_RESULTS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgemtl" / "results.sqlite"


class ResultsStore:
    """Append-only SQLite store of measurements. Each call opens its own short-lived connection, so one
    store object is safe to use from several threads and several processes may write the same file."""

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path).expanduser() if path is not None else default_store_path()
        if self.path.is_dir():
            raise EdgemtlError(f"results store {self.path} is a folder; give a file path with --store")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgemtlError(f"cannot create the results store's folder {self.path.parent}: {exc.strerror}") from None
        with self._connect() as conn:
            self._migrate(conn)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise EdgemtlError(f"results store {self.path} is not an SQLite database ({exc})") from None
        return _Closing(conn)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise EdgemtlError(f"results store {self.path} has schema version {version}, newer than this "
                                   f"edgemtl's {SCHEMA_VERSION}; upgrade edgemtl or use another --store")
            if version == SCHEMA_VERSION:
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:  # another writer may have won
                    _run_script(conn, _SCHEMA)
                    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as exc:
            raise EdgemtlError(f"results store {self.path} is not a usable SQLite database ({exc})") from None

    def append(self, measurements: Measurement | Iterable[Measurement]) -> list[int]:
        """Append rows in one transaction; returns their ids."""
        rows = [measurements] if isinstance(measurements, Measurement) else list(measurements)
        ids = []
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for m in rows:
                    values = [getattr(m, c) for c in _COLUMNS]
                    values[_COLUMNS.index("check_passed")] = None if m.check_passed is None else int(bool(m.check_passed))
                    values[_COLUMNS.index("details")] = json.dumps(m.details, sort_keys=True, default=str)
                    cursor = conn.execute(f"INSERT INTO measurements ({', '.join(_COLUMNS)}) "
                                          f"VALUES ({', '.join('?' * len(_COLUMNS))})", values)
                    ids.append(cursor.lastrowid)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return ids

    def query(self, device: str | None = None, task: str | None = None, bundle: str | None = None,
              runtime: str | None = None, limit: int | None = None) -> list[Measurement]:
        """Rows, oldest first (the newest `limit` when given), filtered by exact device key / task / bundle."""
        where, args = [], []
        for column, value in (("device_key", device), ("task", task), ("bundle", bundle), ("runtime", runtime)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = f"SELECT id, {', '.join(_COLUMNS)} FROM measurements"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._connect() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [_row(r) for r in reversed(rows)]

    def count(self) -> int:
        with self._connect() as conn:
            return conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]


def _row(row: tuple) -> Measurement:
    values = dict(zip(("id", *_COLUMNS), row))
    values["check_passed"] = None if values["check_passed"] is None else bool(values["check_passed"])
    values["details"] = json.loads(values["details"] or "{}")
    return Measurement(**values)


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """executescript() would COMMIT the open transaction first; run the statements one by one instead."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""


class _Closing:
    """A connection that closes at the end of a `with` block (sqlite3's own context manager only commits)."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def __enter__(self) -> sqlite3.Connection:
        return self._conn

    def __exit__(self, *exc: object) -> None:
        self._conn.close()

    def execute(self, *args: Any) -> sqlite3.Cursor:
        return self._conn.execute(*args)
