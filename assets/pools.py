"""Where an asset runs (DESIGN §4): the GPU pool and tags for model-bound stages, the CPU queue for the rest.

Every executable step carries a ``dagster-celery/queue`` tag (``cpu`` or ``gpu``): a step without one would
wait on dagster-celery's default ``dagster`` queue, which no facelake worker consumes."""

import functools
from collections.abc import Callable

from dagster import asset

from facelake.lake.commit import PartitionArtifact
from facelake.lake.storage import Storage

QUEUE_TAG = "dagster-celery/queue"
QUEUES = ("cpu", "gpu")
GPU_TAGS = {
    QUEUE_TAG: "gpu",
    "dagster-k8s/config": {"container_config": {"resources": {"limits": {"nvidia.com/gpu": 1}}}},
}
CPU_TAGS = {QUEUE_TAG: "cpu"}

RESOURCE_TAG = "facelake/resource"
DOWNLOAD_RUN_TAGS = {RESOURCE_TAG: "download"}
GPU_RUN_TAGS = {RESOURCE_TAG: "gpu"}
"""RUN tags (not op tags) the queued run coordinator limits by (deploy/dagster.yaml ``tag_concurrency_limits``):
a job, schedule, backfill or automation that downloads or needs the GPU puts one of these on its runs."""

ArtifactFor = Callable[[Storage, str], PartitionArtifact]
"""Where an asset's partition lives, given the lake and the partition key."""

gpu_asset = functools.partial(asset, pool="gpu", op_tags=GPU_TAGS, kinds={"pytorch", "parquet"})
"""``@asset`` for GPU-bound stages: the ``gpu`` pool, celery queue and k8s GPU limit of DESIGN §4."""

cpu_asset = functools.partial(asset, op_tags=CPU_TAGS)
"""``@asset`` for CPU stages: the celery ``cpu`` queue."""
