"""State files are private: the SQLite database (API-key hashes, sealed secrets) is created
0600 in a 0700 folder, and so is the secret key file."""

from __future__ import annotations

import stat

from keel_server.db import make_engine
from keel_server.migrate import upgrade
from keel_server.platform.security import SECRET_KEY_FILE, sealing_key
from keel_server.platform.settings import Settings


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_sqlite_database_and_its_journal_are_owner_only(tmp_path) -> None:
    path = tmp_path / "state" / "keel.db"
    upgrade(f"sqlite:///{path}")
    engine = make_engine(f"sqlite:///{path}")
    with engine.connect() as conn:  # WAL mode: the -wal and -shm files exist while connected
        conn.exec_driver_sql("SELECT count(*) FROM jobs")
        journals = [p for p in path.parent.iterdir() if p.name != path.name]
        modes = {p.name: _mode(p) for p in [path, *journals]}
    engine.dispose()
    assert _mode(path.parent) == 0o700
    assert journals and set(modes.values()) == {0o600}, modes


def test_the_secret_key_file_is_owner_only_and_stable(tmp_path) -> None:
    settings = Settings(home=tmp_path / "home")
    key = sealing_key(settings)
    assert sealing_key(settings) == key  # created once, then read
    assert _mode(settings.home / SECRET_KEY_FILE) == 0o600
    assert _mode(settings.home) == 0o700
    assert sealing_key(settings.model_copy(update={"secret_key": "given"})) == "given"
