"""Where an asset runs (DESIGN §4): the GPU pool and tags for model-bound stages, the CPU queue for the rest."""

import functools
from collections.abc import Callable

from dagster import asset

from facelake.lake.commit import PartitionArtifact
from facelake.lake.storage import Storage

GPU_TAGS = {
    "dagster-celery/queue": "gpu",
    "dagster-k8s/config": {"container_config": {"resources": {"limits": {"nvidia.com/gpu": 1}}}},
}
GPU_FREE_TAGS = {"dagster-celery/queue": "cpu"}

ArtifactFor = Callable[[Storage, str], PartitionArtifact]
"""Where an asset's partition lives, given the lake and the partition key."""

gpu_asset = functools.partial(asset, pool="gpu", op_tags=GPU_TAGS, kinds={"pytorch", "parquet"})
"""``@asset`` for GPU-bound stages: the ``gpu`` pool, celery queue and k8s GPU limit of DESIGN §4."""
