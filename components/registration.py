"""Component 5: registration of a model that passed the gate."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from tlp.components.container_images import image_reference


@dsl.component(base_image=image_reference(kind="light"), install_kfp_package=False)
def registration(
    model: Input[Model],
    dataset: Input[Dataset],
    metrics: Input[Metrics],
    report: Input[HTML],
    registered_report: Output[HTML],
    registry: str,
    model_name: str = "",
    champion_tolerance: float = 0.0,
) -> NamedTuple("RegistrationOutputs", [("registry", str), ("name", str), ("version", str),
                                        ("champion", bool), ("reason", str)]):
    """Registers the model as a new version, with its metrics, parameters and lineage.

    Args:
        model: The servable model that passed the gate.
        dataset: The data it was trained and evaluated on (for its spec and fingerprint).
        metrics: The evaluation metrics.
        report: The evaluation report.
        registered_report: Output: the same report with the registration and champion decision.
        registry: Registry URI: sqlite:///PATH/registry.db (local MLflow registry), an MLflow
            server URL, or vertex://PROJECT/REGION[/MODEL] (Vertex AI Model Registry).
        model_name: Registered model name; empty means one derived from the data spec.
        champion_tolerance: The new version becomes the champion if its test accuracy is at
            least the champion's on the same test split minus this.

    Returns:
        The registry URI, the model name, the new version, whether it is the champion and why.
    """
    from collections import namedtuple

    from tlp.components.lib.registry import register_model
    from tlp.components.lib.report import add_registration

    registered = register_model(
        model.path, dataset.path, dict(metrics.metadata), registry, model_name, champion_tolerance
    )
    add_registration(report.path, registered_report.path, registered.as_dict())
    outputs = namedtuple("RegistrationOutputs", ["registry", "name", "version", "champion", "reason"])
    return outputs(registered.registry, registered.name, registered.version, registered.champion, registered.reason)
