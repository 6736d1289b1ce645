"""Opt-out blocklists (CSV/parquet, by SAMPLE_ID or URL) and the schedule's part planning."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from facelake.laion.optout import read_blocklists, split_blocked
from facelake.laion.scheduling import plan_part_requests
from facelake.lake.errors import InputError


def test_blocklists_by_id_and_url_split_rows_in_order(local_storage, tmp_path):
    ids_csv = tmp_path / "ids.csv"
    ids_csv.write_text("SAMPLE_ID\n3\n5\n5\n")
    urls_parquet = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"URL": ["http://x/7.jpg"]}), urls_parquet)
    blocklist = read_blocklists([str(ids_csv), str(urls_parquet)], local_storage)
    assert blocklist.num_rows == 3
    meta = pa.table({"SAMPLE_ID": list(range(10)), "URL": [f"http://x/{i}.jpg" for i in range(10)]})
    kept, blocked = split_blocked(meta, blocklist)
    assert blocked["SAMPLE_ID"].to_pylist() == [3, 5, 7]
    assert kept["SAMPLE_ID"].to_pylist() == [0, 1, 2, 4, 6, 8, 9]


def test_bad_blocklists_name_the_file(local_storage, tmp_path):
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("name\nalice\n")
    with pytest.raises(InputError, match=r"wrong\.csv: blocklist needs a SAMPLE_ID or URL column"):
        read_blocklists([str(wrong)], local_storage)
    with pytest.raises(InputError, match=r"missing\.csv: opt-out blocklist not found"):
        read_blocklists([str(tmp_path / "missing.csv")], local_storage)
    text_ids = tmp_path / "text.csv"
    text_ids.write_text("SAMPLE_ID\nabc\n")
    with pytest.raises(InputError, match=r"text\.csv: SAMPLE_ID is not an integer"):
        read_blocklists([str(text_ids)], local_storage)


def test_plan_skips_committed_and_in_flight_and_respects_the_limit():
    parts = ["00000", "00002", "00005", "00008"]
    assert plan_part_requests(parts, committed={"00000"}, in_flight=set(), max_in_flight=2) == [
        "00002",
        "00005",
    ]
    assert plan_part_requests(parts, committed=set(), in_flight={"00000"}, max_in_flight=2) == ["00002"]
    assert plan_part_requests(parts, committed=set(), in_flight={"00000", "00002"}, max_in_flight=2) == []
    assert plan_part_requests(parts, committed=set(parts), in_flight=set(), max_in_flight=4) == []
