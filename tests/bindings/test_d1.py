"""D1 on a real SQLite file: statements, results' shape, batches in one transaction, exec, D1's errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from stepstone.bindings.d1 import D1Database
from stepstone.bindings.errors import D1Error


@pytest.fixture
def db(tmp_path: Path) -> D1Database:
    database = D1Database(str(tmp_path / "d1" / "app.sqlite3"), name="app")
    yield database
    database.close()


async def setup(db: D1Database) -> None:
    await db.exec(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE NOT NULL, name TEXT, avatar BLOB);\n"
        "INSERT INTO users (email, name) VALUES ('ada@example.com', 'Ada');"
    )


async def test_prepare_bind_first_all_run_raw(db: D1Database) -> None:
    await setup(db)
    insert = db.prepare("INSERT INTO users (email, name, avatar) VALUES (?1, ?2, ?3)")
    run = await insert.bind("bob@example.com", "Bob", b"\x89PNG").run()
    assert run.success is True and run["success"] is True
    assert run.meta.changes == 1 and run.meta.last_row_id == 2 and run.meta.changed_db is True
    assert {"duration", "rows_read", "rows_written", "size_after", "served_by"} <= set(run.meta)
    assert run.results == []

    rows = await db.prepare("SELECT id, email, name FROM users ORDER BY id").all()
    assert rows.results == [
        {"id": 1, "email": "ada@example.com", "name": "Ada"},
        {"id": 2, "email": "bob@example.com", "name": "Bob"},
    ]
    assert rows["results"][1].name == "Bob"  # attribute access, as JsProxy allows
    assert rows.meta.changes == 0

    bob = await db.prepare("SELECT * FROM users WHERE email = ?").bind("bob@example.com").first()
    assert bob["avatar"] == b"\x89PNG" and bob.id == 2
    assert await db.prepare("SELECT name FROM users WHERE id = ?").bind(1).first("name") == "Ada"
    assert await db.prepare("SELECT * FROM users WHERE id = ?").bind(99).first() is None
    raw = await db.prepare("SELECT id, name FROM users ORDER BY id").raw(columnNames=True)
    assert raw == [["id", "name"], [1, "Ada"], [2, "Bob"]]
    assert await db.prepare("SELECT id FROM users ORDER BY id").raw() == [[1], [2]]
    assert await db.prepare("SELECT ? AS t, ? AS n").bind(True, None).first() == {"t": 1, "n": None}


async def test_batch_is_one_transaction(db: D1Database) -> None:
    await setup(db)
    stmt = db.prepare("INSERT INTO users (email) VALUES (?)")
    results = await db.batch([stmt.bind("c@x"), stmt.bind("d@x"), db.prepare("SELECT COUNT(*) AS n FROM users")])
    assert [r.meta.changes for r in results] == [1, 1, 0] and results[2].results == [{"n": 3}]
    with pytest.raises(D1Error, match=r"^D1_ERROR: UNIQUE constraint failed: users.email: SQLITE_CONSTRAINT$"):
        await db.batch([stmt.bind("e@x"), stmt.bind("ada@example.com")])
    count = await db.prepare("SELECT COUNT(*) AS n FROM users").first("n")
    assert count == 3  # e@x rolled back with the failing statement


async def test_the_file_is_a_real_sqlite_database_shared_by_two_bindings(db: D1Database, tmp_path: Path) -> None:
    import sqlite3

    await setup(db)
    other = D1Database(db.path)
    try:
        await other.prepare("INSERT INTO users (email) VALUES (?)").bind("z@x").run()
        assert await db.prepare("SELECT COUNT(*) AS n FROM users").first("n") == 2
    finally:
        other.close()
    with sqlite3.connect(db.path) as conn:
        assert conn.execute("SELECT email FROM users ORDER BY id").fetchall() == [("ada@example.com",), ("z@x",)]


async def test_exec_counts_statements(db: D1Database) -> None:
    result = await db.exec("CREATE TABLE t (x);\nINSERT INTO t VALUES (1);\n\n-- a comment\nINSERT INTO t VALUES (2);")
    assert result.count == 3 and result.duration >= 0


@pytest.mark.parametrize(
    ("sql", "params", "message"),
    [
        ("SELECT * FROM nope", (), "D1_ERROR: no such table: nope: SQLITE_ERROR"),
        ("SELEC 1", (), 'D1_ERROR: near "SELEC": syntax error: SQLITE_ERROR'),
        ("SELECT * FROM users WHERE id = ?", (), "D1_ERROR: Wrong number of parameter bindings for SQL query."),
        ("INSERT INTO users (name) VALUES (?)", ("x",), "D1_ERROR: NOT NULL constraint failed: users.email"),
        ("SELECT 1; SELECT 2", (), "D1_ERROR: A prepared SQL statement must contain only one statement."),
    ],
)
async def test_d1_errors(db: D1Database, sql: str, params: tuple[object, ...], message: str) -> None:
    await setup(db)
    with pytest.raises(D1Error) as caught:
        await db.prepare(sql).bind(*params).all()
    assert str(caught.value).startswith(message)


async def test_bind_types_and_column_errors(db: D1Database) -> None:
    await setup(db)
    with pytest.raises(D1Error, match=r"^D1_TYPE_ERROR: Type 'object' not supported for value '\{\"a\": 1\}'$"):
        db.prepare("SELECT ?").bind({"a": 1})
    with pytest.raises(D1Error, match="D1_COLUMN_NOTFOUND: Column not found"):
        await db.prepare("SELECT name FROM users").first("nope")
    with pytest.raises(D1Error, match=r"^D1_EXEC_ERROR: Error in line 2: SELECT \* FROM nope;: no such table: nope"):
        await db.exec("SELECT 1;\nSELECT * FROM nope;")
