"""The DuckDB catalog over the committed parquet artifacts (:mod:`facelake.catalog`) as a Dagster resource."""

from __future__ import annotations

import duckdb
import pyarrow as pa
from dagster import ConfigurableResource, MetadataValue, TableColumn, TableRecord, TableSchema
from dagster import TableMetadataValue as TableMetadata

from facelake.catalog import open_catalog
from facelake.lake.storage import Storage


class CatalogResource(ConfigurableResource):
    """Opens DuckDB with every view of the catalog (:data:`facelake.catalog.SECTIONS`: LAION-Face, faces,
    identity clusters, CelebA-HQ, HyperFace, CLIP, SFHQ) over the committed partitions."""

    database: str = ":memory:"
    """``:memory:`` (default: nothing persists, no file lock) or the path of a DuckDB file."""

    def connect(self, storage: Storage) -> duckdb.DuckDBPyConnection:
        """A connection with the views over ``storage``'s committed partitions; close it (``with``) when done."""
        return open_catalog(storage, self.database)


def table_metadata(table: pa.Table) -> TableMetadata:
    """An Arrow table of scalar columns (e.g. :func:`facelake.catalog.run_report`) as table metadata."""
    schema = TableSchema(columns=[TableColumn(field.name, str(field.type)) for field in table.schema])
    return MetadataValue.table(records=[TableRecord(row) for row in table.to_pylist()], schema=schema)
