"""Instance counts by ``(account, workflow, status)``, kept by triggers as instances change (both backends).

``list``'s ``total_count`` and the per-status counts of ``GET /workflows`` were a ``COUNT(*)`` over index
entries, one per instance: linear in the population (hundreds of ms at 100,000 finished instances). Triggers on
``instances`` keep the count in the same transaction as the change (insert, status change, delete: a create,
a claim, a finish, a restart, a purge batch, a workflow delete), so a crash never leaves it disagreeing.

SQLite has one writer: a row per ``(account, workflow, status)`` updated in place. On PostgreSQL one hot row
would serialize every worker's status changes on its lock until commit, so the triggers only append delta rows
(``instance_count_deltas``, no key, no lock taken); a read sums the folded row and the deltas, and a fold (at a
read that saw many deltas, and after each purge) moves the deltas into ``instance_counts`` in one transaction.
Inserts and deletes are statement triggers with transition tables: a batch create or a purge batch of 1,000
appends one delta per status, not 1,000.
"""

from __future__ import annotations

from typing import Final

SQLITE_MIGRATION: Final = (
    """CREATE TABLE instance_counts (
        account TEXT NOT NULL,
        workflow TEXT NOT NULL,
        status TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (account, workflow, status)
    ) WITHOUT ROWID""",
    "INSERT INTO instance_counts (account, workflow, status, n) "
    "SELECT account, workflow, status, COUNT(*) FROM instances GROUP BY account, workflow, status",
    """CREATE TRIGGER instance_counts_inserted AFTER INSERT ON instances BEGIN
        INSERT INTO instance_counts (account, workflow, status, n) VALUES (new.account, new.workflow, new.status, 1)
            ON CONFLICT (account, workflow, status) DO UPDATE SET n = n + 1;
    END""",
    """CREATE TRIGGER instance_counts_changed AFTER UPDATE OF status, account, workflow ON instances
    WHEN old.status IS NOT new.status OR old.account IS NOT new.account OR old.workflow IS NOT new.workflow
    BEGIN
        UPDATE instance_counts SET n = n - 1
            WHERE account = old.account AND workflow = old.workflow AND status = old.status;
        INSERT INTO instance_counts (account, workflow, status, n) VALUES (new.account, new.workflow, new.status, 1)
            ON CONFLICT (account, workflow, status) DO UPDATE SET n = n + 1;
    END""",
    """CREATE TRIGGER instance_counts_deleted AFTER DELETE ON instances BEGIN
        UPDATE instance_counts SET n = n - 1
            WHERE account = old.account AND workflow = old.workflow AND status = old.status;
    END""",
)
"""The SQLite migration: the table, its backfill from existing rows, the three triggers."""

POSTGRES_MIGRATION: Final = (
    """CREATE TABLE instance_counts (
        account TEXT NOT NULL,
        workflow TEXT NOT NULL,
        status TEXT NOT NULL,
        n BIGINT NOT NULL,
        PRIMARY KEY (account, workflow, status)
    )""",
    """CREATE TABLE instance_count_deltas (
        account TEXT NOT NULL,
        workflow TEXT NOT NULL,
        status TEXT NOT NULL,
        n BIGINT NOT NULL
    )""",
    "CREATE INDEX instance_count_deltas_by_workflow ON instance_count_deltas (account, workflow)",
    "INSERT INTO instance_counts (account, workflow, status, n) "
    "SELECT account, workflow, status, COUNT(*) FROM instances GROUP BY account, workflow, status",
    """CREATE FUNCTION stepstone_counts_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO instance_count_deltas (account, workflow, status, n)
            SELECT account, workflow, status, COUNT(*) FROM new_rows GROUP BY account, workflow, status;
        RETURN NULL;
    END $$""",
    """CREATE FUNCTION stepstone_counts_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO instance_count_deltas (account, workflow, status, n)
            SELECT account, workflow, status, -COUNT(*) FROM old_rows GROUP BY account, workflow, status;
        RETURN NULL;
    END $$""",
    """CREATE FUNCTION stepstone_counts_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO instance_count_deltas (account, workflow, status, n)
            VALUES (OLD.account, OLD.workflow, OLD.status, -1), (NEW.account, NEW.workflow, NEW.status, 1);
        RETURN NULL;
    END $$""",
    "CREATE TRIGGER instance_counts_inserted AFTER INSERT ON instances REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION stepstone_counts_inserted()",
    "CREATE TRIGGER instance_counts_deleted AFTER DELETE ON instances REFERENCING OLD TABLE AS old_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION stepstone_counts_deleted()",
    # a row trigger: its WHEN is checked without calling the function, so the updates of a step that leave the
    # status alone cost nothing (a statement trigger with transition tables cannot name columns)
    "CREATE TRIGGER instance_counts_changed AFTER UPDATE OF status, account, workflow ON instances FOR EACH ROW "
    "WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.account IS DISTINCT FROM NEW.account "
    "OR OLD.workflow IS DISTINCT FROM NEW.workflow) EXECUTE FUNCTION stepstone_counts_changed()",
)
"""The PostgreSQL migration: the folded counts, the delta rows, the backfill, the triggers."""

SQLITE_BY_STATUS: Final = (
    "SELECT status, n FROM instance_counts WHERE account = ? AND workflow = ? AND n != 0 ORDER BY status"
)
SQLITE_ONE_STATUS: Final = "SELECT n FROM instance_counts WHERE account = ? AND workflow = ? AND status = ?"

POSTGRES_BY_STATUS: Final = (
    "SELECT status, SUM(n)::bigint, COUNT(*) FILTER (WHERE delta) FROM ("
    "SELECT status, n, false AS delta FROM instance_counts WHERE account = %s AND workflow = %s "
    "UNION ALL SELECT status, n, true FROM instance_count_deltas WHERE account = %s AND workflow = %s"
    ") AS c GROUP BY status ORDER BY status"
)
"""Per status: the count, and how many delta rows made it (a read that sees many folds them)."""

ZERO_COUNTS: Final = "DELETE FROM instance_counts WHERE account = ? AND workflow = ? AND n = 0"
"""A deleted workflow's rows that count nothing (no sum changes: only zeros go; ``?`` is ``%s`` on PostgreSQL)."""

FOLD_AT: Final = 256
"""Delta rows of one workflow above which a read folds them."""

POSTGRES_FOLD: Final = (
    "WITH d AS (DELETE FROM instance_count_deltas {where} RETURNING account, workflow, status, n) "
    "INSERT INTO instance_counts (account, workflow, status, n) "
    "SELECT account, workflow, status, SUM(n) FROM d GROUP BY account, workflow, status "
    "ON CONFLICT (account, workflow, status) DO UPDATE SET n = instance_counts.n + excluded.n"
)
"""Move delta rows into the folded counts (``{where}``: empty for all, or one workflow's)."""

FOLD_LOCK: Final = 0x5354_4543
"""The transaction advisory lock a fold takes (two folds at once: the second skips)."""


def counted_total(status: str | None, created_after: float | None, created_before: float | None) -> bool:
    """Whether a list's total can be read from the counts: unfiltered, or filtered by a stored status only."""
    return created_after is None and created_before is None and status != "rollingBack"
