"""Which tables' planner statistics are stale, and nothing to do on SQLite."""

from __future__ import annotations

from libs.db import Database
from libs.db.statistics import MIN_CHANGES, TableActivity, refresh_statistics, stale


def test_a_table_never_analyzed_since_its_rows_came_is_stale():
    # Never analyzed: every row inserted counts as a change.
    assert stale([TableActivity("node", live_rows=1000, changed_since_analyze=1000)]) == ["node"]


def test_a_few_changes_leave_a_table_alone_whatever_its_size():
    few = MIN_CHANGES - 1
    assert stale([TableActivity("port", live_rows=few, changed_since_analyze=few)]) == []


def test_a_big_table_is_stale_once_a_fifth_of_it_changed():
    tables = [
        TableActivity("node", live_rows=100_000, changed_since_analyze=19_999),
        TableActivity("instance", live_rows=100_000, changed_since_analyze=20_000),
    ]
    assert stale(tables) == ["instance"]


def test_a_table_emptied_by_deletions_is_stale():
    # 1,000 instances deleted since the last ANALYZE: none live, all of them changes.
    assert stale([TableActivity("instance", live_rows=0, changed_since_analyze=1000)]) == [
        "instance"
    ]


def test_sqlite_has_nothing_to_refresh(db: Database):
    assert refresh_statistics(db) == []
