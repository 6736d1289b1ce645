"""facelake: the engine of the face-dataset platform. Pure Python/torch/polars; never imports dagster."""

__version__ = "0.1.0"
