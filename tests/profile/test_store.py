"""The results store: append-only rows with provenance, schema versioning, concurrent writers."""

import multiprocessing
import sqlite3

import pytest

from edgemtl.errors import EdgemtlError
from edgemtl.profile.store import SCHEMA_VERSION, Measurement, ResultsStore, default_store_path


def _row(**overrides):
    values = dict(device_key="arm64-emu", task="depth", runtime="tvm", runs=20, median_ms=1.5, p90_ms=2.0, min_ms=1.2,
                  provenance="emulated", device_description="emulated arm64", bundle="/b", artifact="tasks/depth/x.so",
                  artifact_sha256="ab" * 32, max_abs_diff=1e-6, check_passed=True, details={"number": 1})
    values.update(overrides)
    return Measurement(**values)


def test_rows_round_trip_and_filter(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    ids = store.append([_row(), _row(task="scene", check_passed=None, max_abs_diff=None),
                        _row(device_key="local", provenance="measured", check_passed=False)])
    assert ids == [1, 2, 3]
    rows = store.query()
    assert [r.id for r in rows] == [1, 2, 3]
    first = rows[0]
    assert (first.device_key, first.runtime, first.provenance, first.check_passed, first.details) == (
        "arm64-emu", "tvm", "emulated", True, {"number": 1})
    assert first.timestamp.endswith("+00:00")
    assert rows[1].check_passed is None and rows[1].max_abs_diff is None
    assert rows[2].check_passed is False
    assert [r.id for r in store.query(device="arm64-emu")] == [1, 2]
    assert [r.id for r in store.query(task="depth", device="local")] == [3]
    assert [r.id for r in store.query(limit=2)] == [2, 3]  # the newest two, oldest first
    assert store.count() == 3


def test_store_is_append_only(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    store.append(_row())
    conn = sqlite3.connect(store.path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE measurements SET median_ms = 0")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM measurements")
    with pytest.raises(sqlite3.IntegrityError):  # provenance is one of four words, enforced by the schema too
        conn.execute("INSERT INTO measurements (timestamp, device_key, task, runtime, runs, median_ms, p90_ms, min_ms, "
                     "provenance) VALUES ('t', 'd', 't', 'r', 1, 1, 1, 1, 'guessed')")
    conn.close()
    assert store.query()[0].median_ms == 1.5


def test_provenance_must_be_known():
    with pytest.raises(ValueError, match="provenance"):
        _row(provenance="fast")


def test_schema_version_and_bad_files(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultsStore(path)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    ResultsStore(path).append(_row())  # reopening keeps the rows
    assert ResultsStore(path).count() == 1
    newer = tmp_path / "newer.sqlite"
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(EdgemtlError, match="newer"):
        ResultsStore(newer)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all, just some bytes " * 100)
    with pytest.raises(EdgemtlError, match="not an SQLite database|not a usable"):
        ResultsStore(junk)
    with pytest.raises(EdgemtlError, match="is a folder"):
        ResultsStore(tmp_path)


def test_default_path_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEMTL_RESULTS", str(tmp_path / "env.sqlite"))
    assert default_store_path() == tmp_path / "env.sqlite"
    assert ResultsStore().path == tmp_path / "env.sqlite"
    monkeypatch.delenv("EDGEMTL_RESULTS")
    assert default_store_path().parts[-3:] == (".cache", "edgemtl", "results.sqlite")


def _writer(path: str, worker: int, count: int) -> None:
    store = ResultsStore(path)
    for i in range(count):
        store.append(_row(task=f"w{worker}", runs=i + 1))


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "r.sqlite"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_writer, args=(str(path), w, 25)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    store = ResultsStore(path)
    assert store.count() == 100
    for w in range(4):
        assert sorted(r.runs for r in store.query(task=f"w{w}")) == list(range(1, 26))
