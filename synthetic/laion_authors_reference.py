"""The LAION-Face authors' metadata filter, reproduced step for step; kept as the reference for tests and the benchmark.

Source: FacePerceiver/LAION-Face ``convert_parquet.py``. Per split ``i`` it builds ``set(all_samples[i])``,
reads the whole part into pandas, maps a Python lambda over SAMPLE_ID, keeps the matching rows and writes
``pa.Table.from_pandas(...)``, which leaks a ``__index_level_0__`` column and turns nullable int columns
into float64. The engine is :func:`facelake.laion.meta.filter_meta_part`; do not use this in pipelines.
Only the ``torch.load`` of the id file is left out: callers pass the split's ids already loaded (safely).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from synthetic.laion_meta import meta_part_name


def authors_output_name(split_num: int) -> str:
    """The authors' output file name for split ``split_num``."""
    return f"laion_face_part_{str(split_num).zfill(5)}.parquet"


def authors_convert_part(big_parquet_file: str, split_samples: Iterable, output_file: str) -> int:
    """One iteration of the authors' loop: filter one part to the split's ids; returns the kept row count."""
    samples = set(split_samples)
    big_table = pq.read_table(big_parquet_file).to_pandas()
    big_table["has_face"] = big_table["SAMPLE_ID"].map(lambda x: x in samples)
    big_table = big_table[big_table["has_face"]]
    del big_table["has_face"]
    pq.write_table(pa.Table.from_pandas(big_table), output_file)
    return len(big_table)


def authors_convert_all(
    all_samples: Sequence, laion_meta_dir: str, laion_face_meta_dir: str, splits: Iterable[int] = range(32)
) -> int:
    """The authors' main loop over the splits (their ``all_count``), with the ids passed in already loaded."""
    all_count = 0
    os.makedirs(laion_face_meta_dir, exist_ok=True)
    for split_num in splits:
        all_count += authors_convert_part(
            f"{laion_meta_dir}/{meta_part_name(split_num)}",
            all_samples[split_num],
            os.path.join(laion_face_meta_dir, authors_output_name(split_num)),
        )
    return all_count
