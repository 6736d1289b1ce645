"""The shared lake every pipeline writes to: storage (local or S3), the manifest-last commit protocol, per-shard
stages, hashing, safe loading of outside files, image and parquet reading, the webdataset reader, plots, and
the catalog machinery."""
