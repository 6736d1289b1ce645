"""The per-variant HyperFace assets' shared declaration: partitioned by variant (the static keys of
``hyperface.variants``), in the ``hyperface`` group, each run resolving its partition key to a variant."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg

from assets.materializing import Step, lake_asset, owner
from facelake.lake.errors import UnknownPartitionError
from facelake.settings import FacelakeSettings

GROUP = "hyperface"


def hyperface_variants(settings: FacelakeSettings) -> dg.StaticPartitionsDefinition:
    """The variant names of the settings as static partition keys (e.g. ``demo``, ``10k``, ``50k``)."""
    return dg.StaticPartitionsDefinition(list(settings.hyperface.variants))


def variant_of(settings: FacelakeSettings, context: dg.AssetExecutionContext) -> str:
    """The run's partition key, refused unless it names a variant of the settings."""
    name = context.partition_key
    if name not in settings.hyperface.variants:
        raise UnknownPartitionError(
            name, f"a variant of hyperface.variants: {sorted(settings.hyperface.variants)}"
        )
    return name


def check_spec(asset: str, name: str, description: str, blocking: bool = True) -> dg.AssetCheckSpec:
    """A check of ``asset``, blocking unless said otherwise."""
    return dg.AssetCheckSpec(name, asset=asset, blocking=blocking, description=description)


@dataclass
class VariantStep(Step):
    """One run of a per-variant asset: the :class:`Step`, the variant it writes and the asset's code version."""

    variant: str = ""
    version: str = ""

    def commit_options(self) -> dict[str, Any]:
        """What every variant stage's commit takes: the code version, this run as the lease owner, the run
        config's ``force``, and the run log for progress."""
        return {
            "code_version": self.version,
            "owner": owner(self.context),
            "force": self.config.force,
            "log": self.context.log.info,
        }


def variant_asset(
    pool: Callable[..., Any],
    settings: FacelakeSettings,
    name: str,
    deps: list,
    version: str,
    description: str,
    resources: tuple[str, ...] = (),
    **options: Any,
) -> Callable[[Callable[[VariantStep], dg.MaterializeResult]], dg.AssetsDefinition]:
    """Turn ``run(step) -> MaterializeResult`` into the per-variant asset ``name`` made by ``pool``
    (``gpu_asset`` or ``cpu_asset``): partitioned by the settings' variants, in the HyperFace group, after
    ``deps`` (asset names or :class:`~dagster.AssetDep`), needing ``storage`` plus ``resources``; ``options``
    are further ``@asset`` arguments (``kinds``, ``check_specs``). The run's partition key is refused unless
    it names a variant."""

    def wrap(run: Callable[[VariantStep], dg.MaterializeResult]) -> dg.AssetsDefinition:
        def on_variant(step: Step) -> dg.MaterializeResult:
            variant = variant_of(settings, step.context)
            return run(VariantStep(step.context, step.config, step.lake, variant, version))

        on_variant.__name__, on_variant.__doc__ = run.__name__, run.__doc__
        return lake_asset(
            pool,
            resources=resources,
            name=name,
            group_name=GROUP,
            partitions_def=hyperface_variants(settings),
            deps=[dg.AssetKey(d) if isinstance(d, str) else d for d in deps],
            code_version=version,
            description=description,
            **options,
        )(on_variant)

    return wrap
