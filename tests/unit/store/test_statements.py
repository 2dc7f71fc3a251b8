"""store.statements.InsertRows on a real SQLite file: one statement per 64 rows, every row as given."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from confledger.store.statements import InsertRows

METADATA = sa.MetaData()
THINGS = sa.Table(
    "things",
    METADATA,
    sa.Column("position", sa.BigInteger, primary_key=True),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("body", sa.JSON, nullable=False),
)


@pytest.mark.parametrize(
    ("rows", "statements"),
    [
        (1, 1),  # one row: the one-row statement
        (2, 1),  # a reload's batch: one statement, not one step per row
        (64, 1),  # as many rows as one statement takes
        (65, 2),  # one more: a second statement
        (150, 3),  # 64 + 64 + 22
    ],
)
def test_rows_go_in_one_statement_per_64(tmp_path: Path, rows: int, statements: int) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'things.db'}")
    METADATA.create_all(engine)
    insert = InsertRows(THINGS, engine.dialect, encoded=("body",))
    given = [
        {"position": index, "name": f"thing {index}", "body": json.dumps({"n": index})}
        for index in range(rows)
    ]
    traced: list[str] = []
    with engine.begin() as connection:
        driver: Any = connection.connection.driver_connection
        driver.set_trace_callback(traced.append)
        insert.run(connection, given)
        driver.set_trace_callback(None)
        stored = connection.execute(sa.select(THINGS).order_by(THINGS.c.position)).all()
    assert sum(statement.startswith("INSERT") for statement in traced) == statements
    assert [(row.position, row.name, row.body) for row in stored] == [
        (index, f"thing {index}", {"n": index}) for index in range(rows)
    ]
    engine.dispose()
