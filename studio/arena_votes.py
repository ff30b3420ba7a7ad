"""The arena's vote store: SQLite (WAL mode, one connection per thread, a busy timeout, ``BEGIN IMMEDIATE``
transactions) with battles, votes and settings; CSV/JSONL exports that escape spreadsheet formulas and keep, rotate
or drop voter pseudonyms; `VoteMirror` JSONL shards (what ``huggingface_hub.CommitScheduler`` pushes to a dataset)
and `restore_votes` to read them back. `studio.arena.Arena` runs battles on top of it.
"""
from __future__ import annotations

import csv
import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
import threading
import time
from pathlib import Path

LOG = logging.getLogger(__name__)
VOTE_COLUMNS = ("id", "battle_id", "created_at", "vote", "model_a", "model_b", "winner", "prompt", "category",
                "settings", "seed", "source", "voter")
VOTER_POLICIES = ("keep", "rotate", "drop")  # exports: stored pseudonyms, fresh per-export ones, or none
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")  # a CSV cell starting so is a formula to spreadsheets (OWASP)



_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS battles (
    id TEXT PRIMARY KEY, created_at REAL NOT NULL, prompt TEXT NOT NULL, category TEXT NOT NULL,
    settings TEXT NOT NULL, model_a TEXT NOT NULL, model_b TEXT NOT NULL, seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'voted')), source TEXT NOT NULL CHECK (source IN ('live', 'cache')),
    image_a TEXT NOT NULL, image_b TEXT NOT NULL, session TEXT NOT NULL, served_at REAL);
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, battle_id TEXT NOT NULL UNIQUE REFERENCES battles (id),
    created_at REAL NOT NULL, vote TEXT NOT NULL CHECK (vote IN ('A', 'B', 'tie', 'bad')),
    model_a TEXT NOT NULL, model_b TEXT NOT NULL, winner TEXT, prompt TEXT NOT NULL, category TEXT NOT NULL,
    settings TEXT NOT NULL, seed INTEGER NOT NULL, source TEXT NOT NULL, session TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS votes_pair ON votes (model_a, model_b);
CREATE INDEX IF NOT EXISTS votes_voter ON votes (session, created_at);
CREATE INDEX IF NOT EXISTS battles_voter ON battles (session, source);
"""
# the voter pseudonym is stored in the column "session" (its name in databases written before voters were
# server-side identities); it is read back as "voter"
_SELECT_VOTES = f"SELECT {', '.join(VOTE_COLUMNS[:-1])}, session AS voter FROM votes ORDER BY id"


def connect(db_path: str | Path, busy_timeout_ms: int = 30_000) -> sqlite3.Connection:
    """A new connection in autocommit mode (transactions are explicit) that waits for the write lock."""
    con = sqlite3.connect(db_path, timeout=busy_timeout_ms / 1000, isolation_level=None)
    con.row_factory = sqlite3.Row
    con.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    con.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable on application crash, fast commits
    return con


def create_schema(con: sqlite3.Connection) -> None:
    con.executescript(_SCHEMA)
    columns = {r[1] for r in con.execute("PRAGMA table_info(battles)")}
    if "served_at" not in columns:  # a database from before the minimum viewing time
        con.execute("ALTER TABLE battles ADD COLUMN served_at REAL")


def _vote_row(row: sqlite3.Row) -> dict:
    vote = dict(row)
    vote["settings"] = json.loads(vote["settings"])
    return vote


def load_votes(db_path: str | Path) -> list[dict]:
    """Every vote (columns `VOTE_COLUMNS`, settings parsed) in time order: the input of `studio.ratings`."""
    if not Path(db_path).is_file():
        raise ValueError(f"arena database not found: {Path(db_path).name}")
    con = connect(db_path)
    try:
        return [_vote_row(r) for r in con.execute(_SELECT_VOTES)]
    finally:
        con.close()


def read_setting(db_path: str | Path, key: str) -> object | None:
    """A JSON value stored with `write_setting` (e.g. the admin-chosen arena pool), or None."""
    if not Path(db_path).is_file():
        return None
    con = connect(db_path)
    try:
        con.executescript(_SCHEMA)
        row = con.execute("SELECT value FROM meta WHERE key = ?", (f"setting:{key}",)).fetchone()
        return json.loads(row[0]) if row else None
    finally:
        con.close()


def write_setting(db_path: str | Path, key: str, value: object) -> None:
    con = connect(db_path)
    try:
        create_schema(con)
        con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"setting:{key}", json.dumps(value)))
    finally:
        con.close()


def csv_cell(value: object) -> object:
    """A text cell made inert for spreadsheets: a leading ``= + - @``, tab or CR (or the escape ``'`` itself) gets a
    ``'`` in front. `read_export` removes exactly that one character again."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES + ("'",)):
        return "'" + value
    return value


def _uncsv(text: str) -> str:
    return text[1:] if text.startswith("'") else text


def public_votes(votes: list[dict], voters: str = "rotate") -> list[dict]:
    """Votes for publication: voter pseudonyms kept, replaced by fresh ones unlinkable to any other export
    (``rotate``), or removed (``drop``)."""
    if voters not in VOTER_POLICIES:
        raise ValueError(f"voters must be one of {', '.join(VOTER_POLICIES)}; got {voters!r}")
    if voters == "keep":
        return [dict(v) for v in votes]
    if voters == "drop":
        return [{k: x for k, x in v.items() if k != "voter"} for v in votes]
    key = secrets.token_bytes(16)
    return [{**v, "voter": hmac.new(key, v["voter"].encode(), hashlib.sha256).hexdigest()[:12]} for v in votes]


def export_votes(db_path: str | Path, out_path: str | Path, fmt: str | None = None, *,
                 voters: str = "rotate") -> int:
    """Write the votes as CSV or JSON (`fmt` or the file extension); returns the number of rows.

    ``voters``: `VOTER_POLICIES` (see `public_votes`). CSV text cells are escaped with `csv_cell`.
    """
    out_path = Path(out_path)
    fmt = fmt or out_path.suffix.lstrip(".").lower()
    if fmt not in ("csv", "json"):
        raise ValueError(f"export format must be one of csv, json; got {fmt!r}")
    votes = public_votes(load_votes(db_path), voters)
    if fmt == "json":
        out_path.write_text(json.dumps(votes, indent=1), encoding="utf-8")
    else:
        columns = [c for c in VOTE_COLUMNS if voters != "drop" or c != "voter"]
        with out_path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows({k: csv_cell(json.dumps(v["settings"], sort_keys=True) if k == "settings" else v[k])
                              for k in columns} for v in votes)
    return len(votes)


def read_export(path: str | Path) -> list[dict]:
    """Votes back from an `export_votes` file, with the same types as `load_votes`."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    with path.open(newline="", encoding="utf-8") as f:
        rows = [{k: _uncsv(v) for k, v in r.items()} for r in csv.DictReader(f)]
    for r in rows:
        r.update(id=int(r["id"]), created_at=float(r["created_at"]), seed=int(r["seed"]),
                 settings=json.loads(r["settings"]), winner=r["winner"] or None)
    return rows


class VoteMirror:
    """Appends every vote, without its voter, as one JSON line to a shard ``votes-<start>-<random>.jsonl`` in
    ``folder`` — the folder a ``huggingface_hub.CommitScheduler`` pushes to a dataset (pass its ``lock``)."""

    def __init__(self, folder: str | Path, lock=None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.lock = lock or threading.Lock()
        self.shard = self.folder / f"votes-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}.jsonl"

    def write(self, vote: dict) -> None:
        line = json.dumps(public_votes([vote], "drop")[0], sort_keys=True)
        with self.lock, self.shard.open("a", encoding="utf-8") as f:
            f.write(line + "\n")


def restore_votes(db_path: str | Path, folder: str | Path) -> int:
    """Import the votes of every ``*.jsonl`` shard in ``folder`` that the database lacks (matched by battle id);
    returns how many were added. Restored votes have no voter (the mirror never stores one)."""
    rows = []
    for shard in sorted(Path(folder).glob("*.jsonl")):
        for line in shard.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rows.append(json.loads(line))
    rows.sort(key=lambda r: r["created_at"])
    con = connect(db_path)
    try:
        create_schema(con)
        con.execute("BEGIN IMMEDIATE")
        before = con.total_changes
        con.executemany(
            "INSERT OR IGNORE INTO votes (battle_id, created_at, vote, model_a, model_b, winner, prompt, category,"
            " settings, seed, source, session) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '')",
            [(r["battle_id"], r["created_at"], r["vote"], r["model_a"], r["model_b"], r["winner"], r["prompt"],
              r["category"], json.dumps(r["settings"], sort_keys=True), r["seed"], r["source"]) for r in rows])
        added = con.total_changes - before
        con.execute("COMMIT")
        return added
    finally:
        con.close()
