"""On-disk conformer cache (SQLite, stdlib): a rerun does no RDKit work.

Two tables, both keyed by a hash that includes the ``ConformerConfig`` (seed, fallbacks, MMFF, time limit) and the
RDKit version:
  * ``conformers``: canonical isomeric SMILES -> result (atoms, coordinates, source, warnings) or a failure reason
    (unparsable SMILES, keyed by the input instead; unembeddable). A time-out is cached with its time limit and
    reused only under a limit no larger; worker crashes are never cached.
  * ``aliases``: the input string exactly as given -> canonical key, so a repeated input is found without parsing.
Readers may be many processes (workers look up canonical keys); only the parent writes.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sqlite3
from collections.abc import Iterable
from typing import Any

_SCHEMA = ("CREATE TABLE IF NOT EXISTS conformers (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
           "CREATE TABLE IF NOT EXISTS aliases (raw TEXT PRIMARY KEY, key TEXT NOT NULL)")


def cache_key(kind: str, text: str, settings: str) -> str:
    """sha256 of (kind, text, settings) as hex: kind is "canonical" or "raw"."""
    return hashlib.sha256(f"{kind}\x00{settings}\x00{text}".encode()).hexdigest()


class ConformerCache:
    """``ConformerCache(path)``; ``get_raw``/``get``/``put``; values are small dicts (see ``conformers.py``)."""

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False):
        self.path = os.fspath(path)
        if readonly:
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=60)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")
            for stmt in _SCHEMA:
                self._db.execute(stmt)
            self._db.commit()

    def close(self) -> None:
        self._db.close()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM conformers").fetchone()[0]

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT value FROM conformers WHERE key = ?", (key,)).fetchone()
        return pickle.loads(row[0]) if row else None

    def get_raw_many(self, raw_keys: list[str]) -> dict[str, dict[str, Any]]:
        """raw key -> cached value for every raw key whose alias and value exist (one query per 500 keys)."""
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(raw_keys), 500):
            chunk = raw_keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT a.raw, c.value FROM aliases a JOIN conformers c ON a.key = c.key "
                                    f"WHERE a.raw IN ({marks})", chunk)
            out.update((raw, pickle.loads(value)) for raw, value in rows)
        return out

    def put_many(self, items: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
        """Store (raw key, canonical key, value) triples in one transaction."""
        items = list(items)
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO conformers VALUES (?, ?)",
                                 [(key, pickle.dumps(value, protocol=5)) for _, key, value in items])
            self._db.executemany("INSERT OR REPLACE INTO aliases VALUES (?, ?)", [(raw, key) for raw, key, _ in items])
