"""Every ``dagster-k8s/config`` tag in the code location is one that dagster-k8s accepts and turns into a pod.

The k8s_job_executor reads each step's tags with ``get_user_defined_k8s_config`` (the
``USER_DEFINED_K8S_JOB_CONFIG_SCHEMA`` it validates against admits any ``container_config`` mapping), merges them
into the step's Kubernetes Job with ``construct_dagster_k8s_job``, which builds the objects with
``k8s_model_from_dict``: that is where an unknown key (``resource`` for ``resources``, ``limit`` for ``limits``)
fails, at launch time on the cluster. Here it fails in CI: every step of every job of
``dagster_project.definitions.defs`` (the same step tags the executor sees, from the execution plan), and every
job's run tags (what the ``K8sRunLauncher`` reads), go through the same three functions, and a GPU step must come
out with ``nvidia.com/gpu: 1`` in its container's limits.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import dagster
import kubernetes.client
import pytest
from dagster import DagsterInvalidConfigError, Definitions
from dagster._core.execution.api import create_execution_plan
from dagster_k8s.job import (
    USER_DEFINED_K8S_CONFIG_KEY,
    DagsterK8sJobConfig,
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)
from dagster_k8s.models import k8s_model_from_dict

from assets.pools import GPU_TAGS

GPU_LIMIT = {"nvidia.com/gpu": 1}
GPU_QUANTITY = {"nvidia.com/gpu": "1"}
"""The limit as the Kubernetes model holds it: quantities are strings."""
JOB_CONFIG = DagsterK8sJobConfig(
    job_image="facelake:test", dagster_home="/opt/dagster/dagster_home", image_pull_policy="IfNotPresent"
)
"""The executor's own job config, as a deployment would give it (image, DAGSTER_HOME)."""


@dataclass(frozen=True)
class Tagged:
    """One place a ``dagster-k8s/config`` tag is read: a step of a job (or a job's run tags), and its pool."""

    where: str
    tags: Mapping[str, str]
    pool: str | None


def k8s_tagged(defs: Definitions) -> Iterator[Tagged]:
    """Each executable step of each job (step tags as the executor sees them) and each job's run tags."""
    for job in defs.resolve_all_job_defs():
        for step in create_execution_plan(job).get_all_steps_in_topo_order():
            yield Tagged(f"{job.name}:{step.key}", step.tags, step.pool)
        run_tags = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (job.tags or {}).items()}
        if USER_DEFINED_K8S_CONFIG_KEY in run_tags:
            yield Tagged(f"{job.name} (run tags)", run_tags, None)


def step_container(config: UserDefinedDagsterK8sConfig) -> kubernetes.client.V1Container:
    """The step's container spec from its ``container_config`` alone (unknown keys raise)."""
    return k8s_model_from_dict(kubernetes.client.V1Container, {"name": "dagster", **config.container_config})


def step_job(config: UserDefinedDagsterK8sConfig, name: str = "dagster-step-test") -> kubernetes.client.V1Job:
    """The Kubernetes Job dagster-k8s would submit for the step (its whole construction path)."""
    return construct_dagster_k8s_job(
        JOB_CONFIG, ["dagster", "api", "execute_step"], name, user_defined_k8s_config=config
    )


def k8s_problems(defs: Definitions) -> tuple[list[str], dict[str, kubernetes.client.V1Job]]:
    """Every tag dagster-k8s rejects (naming where and why), and the Jobs built from the accepted ones."""
    problems, built = [], {}
    for tagged in k8s_tagged(defs):
        if USER_DEFINED_K8S_CONFIG_KEY not in tagged.tags:
            if tagged.pool == "gpu":
                problems.append(f"{tagged.where}: in pool gpu without a {USER_DEFINED_K8S_CONFIG_KEY} tag")
            continue
        try:
            config = get_user_defined_k8s_config(tagged.tags)
            step_container(config)
            built[tagged.where] = step_job(config)
        except Exception as exc:  # dagster-k8s raises DagsterInvalidConfigError or a bare Exception
            problems.append(f"{tagged.where}: {type(exc).__name__}: {exc}")
    return problems, built


@pytest.fixture(scope="module")
def code_location() -> Definitions:
    from dagster_project.definitions import defs

    return defs


def test_every_k8s_tag_builds_a_valid_container_and_job(code_location):
    problems, built = k8s_problems(code_location)
    assert problems == []
    gpu_steps = [t.where for t in k8s_tagged(code_location) if t.pool == "gpu"]
    assert len(gpu_steps) >= 5, gpu_steps  # detection, embedding, the two cluster stages, packing at least
    assert set(gpu_steps) <= set(built), "every GPU step's tag builds a Job"
    for where, job in built.items():
        (container,) = job.spec.template.spec.containers
        assert container.resources.limits == GPU_QUANTITY, where
        assert (container.name, container.image) == ("dagster", "facelake:test"), where
        assert job.spec.template.spec.restart_policy == "Never"
        manifest = kubernetes.client.ApiClient().sanitize_for_serialization(job)
        assert manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == GPU_QUANTITY


def test_the_gpu_tag_is_exactly_dagster_k8s_container_config():
    config = get_user_defined_k8s_config(
        {USER_DEFINED_K8S_CONFIG_KEY: json.dumps(GPU_TAGS["dagster-k8s/config"])}
    )
    assert config.container_config == {"resources": {"limits": GPU_LIMIT}}
    container = step_container(config)
    assert container.resources.limits == GPU_QUANTITY and container.resources.requests is None


@pytest.mark.parametrize(
    ("tag", "rejected_by", "message"),
    [
        # a key the tag's schema does not have: rejected by the schema itself
        ({"container_config": {}, "container": {}}, DagsterInvalidConfigError, "dagster-k8s/config"),
        # a typo inside container_config: the schema admits it (Permissive), the model does not
        ({"container_config": {"resource": {"limits": GPU_LIMIT}}}, Exception, "V1Container"),
        # a typo one level down, in the V1ResourceRequirements
        ({"container_config": {"resources": {"limit": GPU_LIMIT}}}, Exception, "V1ResourceRequirements"),
        # a typo in the pod spec (what a node selector for GPU nodes would go in)
        ({"pod_spec_config": {"node_selectr": {"gpu": "true"}}}, Exception, "V1PodSpec"),
    ],
)
def test_an_unknown_key_is_rejected(tag, rejected_by, message):
    tags = {USER_DEFINED_K8S_CONFIG_KEY: json.dumps(tag)}
    with pytest.raises(rejected_by, match=message):
        config = get_user_defined_k8s_config(tags)
        step_container(config)
        step_job(config)


def test_the_walk_finds_a_bad_tag_on_an_asset():
    """The code-location walk itself fails on an asset whose tag has an unknown key (and on a GPU step
    without a k8s tag), naming the step."""

    @dagster.asset(op_tags={USER_DEFINED_K8S_CONFIG_KEY: {"container_config": {"resourcs": {}}}})
    def misspelled() -> None: ...

    @dagster.asset(pool="gpu")
    def untagged_gpu() -> None: ...

    @dagster.asset(op_tags=GPU_TAGS, pool="gpu")
    def fine() -> None: ...

    problems, built = k8s_problems(Definitions(assets=[misspelled, untagged_gpu, fine]))
    assert len(problems) == 2, problems
    assert any("__ASSET_JOB:misspelled" in p and "V1Container" in p and "resourcs" in p for p in problems)
    assert any("__ASSET_JOB:untagged_gpu: in pool gpu without" in p for p in problems)
    assert list(built) == ["__ASSET_JOB:fine"]
