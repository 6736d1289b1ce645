"""The UI's view of the code location: ``dagster-webserver -m dagster_project`` on a materialized instance.

Part 00000 is materialized in-process into a DAGSTER_HOME; the webserver (and the code server it spawns)
runs as a subprocess on that home with the world's FACELAKE_CONFIG, and its GraphQL endpoint must show the
assets with their 32 partitions, which partition is materialized, the download's metadata and the
success-rate check, as a person opening the UI would see them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from dagster import DagsterInstance

from facelake.laion import artifacts
from facelake.laion.formats import LAION_PARTS
from facelake.settings import load_settings
from synthetic.world import LaionWorld
from tests.cli_helpers import (
    BIN_DIR,
    CODE_LOCATION,
    PART,
    cli_env,
    expected_download_counts,
    free_port,
    make_dagster_home,
    materialize_part_in_process,
    served_world,
    start_process,
    stop_process_group,
    wait_for,
    world_definitions,
)

pytestmark = pytest.mark.slow

ASSETS = [  # the LAION-Face assets (other families live in the same code location)
    "laion400m_meta",
    "laion_sample2detect",
    "laion_face_ids",
    "laion_face_optout",
    "laion_face_meta",
    "laion_face_images",
    "laion_face_detections",
]

ASSET_NODES = """
query AssetNodes {
  assetNodes {
    assetKey { path }
    groupName
    isPartitioned
    partitionKeys
    assetPartitionStatuses { ... on DefaultPartitionStatuses { materializedPartitions } }
  }
}
"""

IMAGES_PART = """
query ImagesPart($partition: String!) {
  assetNodes(assetKeys: [{path: ["laion_face_images"]}]) {
    assetMaterializations(partitions: [$partition], limit: 1) {
      partition
      runId
      metadataEntries {
        label
        ... on JsonMetadataEntry { jsonString }
        ... on FloatMetadataEntry { floatValue }
        ... on IntMetadataEntry { intValue }
        ... on PathMetadataEntry { path }
        ... on BoolMetadataEntry { boolValue }
      }
    }
  }
  assetCheckExecutions(assetKey: {path: ["laion_face_images"]}, checkName: "success_rate", limit: 1) {
    runId
    status
    evaluation { metadataEntries { label ... on FloatMetadataEntry { floatValue } } }
  }
}
"""


class GraphQL:
    """POSTs queries to a webserver's /graphql endpoint; errors fail the test with the server's answer."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self, query: str, **variables: object) -> dict:
        answer = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60
        )
        answer.raise_for_status()
        body = answer.json()
        assert not body.get("errors"), body["errors"]
        return body["data"]


def metadata_of(event: dict) -> dict[str, object]:
    """GraphQL metadata entries as label -> value (JSON entries decoded)."""
    values = {}
    for entry in event["metadataEntries"]:
        fields = {k: v for k, v in entry.items() if k != "label"}
        (value,) = fields.values() or [None]
        values[entry["label"]] = json.loads(value) if "jsonString" in fields else value
    return values


@dataclass
class Served:
    """The world, the id of part 00000's run, and the GraphQL endpoint of a webserver on its instance."""

    world: LaionWorld
    part_run_id: str
    graphql: GraphQL


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("webserver")
    with served_world(base / "world") as world:
        home = make_dagster_home(base / "dagster_home")
        with DagsterInstance.from_config(str(home)) as instance:
            part_run_id = materialize_part_in_process(world_definitions(), instance)
        with running_webserver(home, base / "webserver.log") as graphql:
            yield Served(world, part_run_id, graphql)


@contextlib.contextmanager
def running_webserver(home: Path, log: Path) -> Iterator[GraphQL]:
    """``dagster-webserver -m dagster_project`` on ``home``, once its code location is loaded."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(BIN_DIR / "dagster-webserver"), *CODE_LOCATION, "-h", "127.0.0.1", "-p", str(port)]
    server = start_process(command, cli_env(home), log)
    try:

        def answers() -> bool:
            assert server.poll() is None, f"the webserver exited:\n{log.read_text()[-4000:]}"
            try:
                return requests.get(f"{url}/server_info", timeout=2).ok
            except requests.ConnectionError:
                return False

        wait_for(answers, 120, f"the webserver on {url}", interval_s=0.25)
        graphql = GraphQL(url)
        wait_for(lambda: bool(graphql(ASSET_NODES)["assetNodes"]), 120, "the code location to load")
        yield graphql
    finally:
        stop_process_group(server)


def test_the_ui_lists_the_assets_with_their_partitions(served):
    nodes = {"/".join(n["assetKey"]["path"]): n for n in served.graphql(ASSET_NODES)["assetNodes"]}
    assert set(ASSETS) <= set(nodes), sorted(nodes)
    assert {nodes[name]["groupName"] for name in ASSETS} == {"laion_face"}
    for name in ("laion_face_meta", "laion_face_images", "laion_face_detections"):
        assert nodes[name]["isPartitioned"] is True
        assert nodes[name]["partitionKeys"] == LAION_PARTS
        assert nodes[name]["assetPartitionStatuses"]["materializedPartitions"] == [PART]
    for name in ("laion_face_ids", "laion_face_optout"):
        assert nodes[name]["isPartitioned"] is False and nodes[name]["partitionKeys"] == []


def test_the_ui_shows_the_downloads_metadata_and_check(served):
    part_run_id = served.part_run_id
    data = served.graphql(IMAGES_PART, partition=PART)
    (node,) = data["assetNodes"]
    (materialization,) = node["assetMaterializations"]
    assert (materialization["partition"], materialization["runId"]) == (PART, part_run_id)
    metadata = metadata_of(materialization)
    assert metadata["counts_by_status"] == expected_download_counts(served.world)
    assert metadata["success_rate"] == pytest.approx(142 / 155)
    assert metadata["rows"] == 160
    assert metadata["reused_committed_partition"] is False
    assert metadata["uri"] == artifacts.images(load_settings().storage(), PART).prefix
    (check,) = data["assetCheckExecutions"]
    assert (check["runId"], check["status"]) == (part_run_id, "SUCCEEDED")
    assert metadata_of(check["evaluation"])["success_rate"] == pytest.approx(142 / 155)
