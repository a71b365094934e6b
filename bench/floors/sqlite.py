#!/usr/bin/env python3
"""SQLite's floor for a record written twice, beside its batched limit (see run.sh): WAL,
synchronous=FULL, page_size 4096 as oncely's store; batches of 1,000 36-character UUID keys,
each batch its own transaction. Python's sqlite3 (executemany), so compare the ratios, not the
rates, with `oncely bench`.

    python3 bench/floors/sqlite.py [KEYS]
"""
import os, sqlite3, sys, tempfile, time, uuid

KEYS = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
BATCH = 1000

def db(path, schema):
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA page_size=4096")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(schema)
    return conn

def run(name, schema, steps):
    keys = [str(uuid.uuid4()) for _ in range(KEYS)]
    with tempfile.TemporaryDirectory() as d:
        conn = db(os.path.join(d, name + ".db"), schema)
        t0 = time.perf_counter()
        for i in range(0, KEYS, BATCH):
            rows = [(k,) for k in keys[i:i + BATCH]]
            for sql in steps:
                conn.execute("BEGIN")
                conn.executemany(sql, rows)
                conn.execute("COMMIT")
        return KEYS / (time.perf_counter() - t0)

limit = run("limit", "CREATE TABLE keys (key TEXT PRIMARY KEY) WITHOUT ROWID;",
            ["INSERT OR IGNORE INTO keys (key) VALUES (?)"])
two = run("two", "CREATE TABLE two (key TEXT PRIMARY KEY, done INTEGER NOT NULL) WITHOUT ROWID;",
          ["INSERT OR IGNORE INTO two (key, done) VALUES (?, 0)",
           "UPDATE two SET done = 1 WHERE key = ?"])
print(f"limit={limit:,.0f} keys/s (1.00x) two={two:,.0f} keys/s ({two / limit:.2f}x)")
