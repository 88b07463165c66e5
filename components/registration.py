"""Component 5: registration of a model that passed the gate."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model

from components.container_images import image_reference


@dsl.component(base_image=image_reference(kind="light"), install_kfp_package=False)
def registration(
    model: Input[Model],
    dataset: Input[Dataset],
    metrics: Input[Metrics],
    registry: str,
    model_name: str = "",
) -> NamedTuple("RegistrationOutputs", [("registry", str), ("name", str), ("version", str),
                                        ("champion", bool)]):
    """Registers the model as a new version, with its metrics, parameters and lineage.

    Args:
        model: The servable model that passed the gate.
        dataset: The data it was trained and evaluated on (for its spec and fingerprint).
        metrics: The evaluation metrics.
        registry: Registry URI, e.g. sqlite:///PATH/registry.db (local MLflow registry).
        model_name: Registered model name; empty means one derived from the data spec.

    Returns:
        The registry URI, the model name, the new version and whether it is the champion.
    """
    from collections import namedtuple

    from components.lib.registry import register_model

    registered = register_model(model.path, dataset.path, dict(metrics.metadata), registry, model_name)
    outputs = namedtuple("RegistrationOutputs", ["registry", "name", "version", "champion"])
    return outputs(registered.registry, registered.name, registered.version, registered.champion)
