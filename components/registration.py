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
    options: dict,
) -> NamedTuple("RegistrationOutputs", [("registry", str), ("name", str), ("version", str),  # type: ignore[valid-type]  # kfp's NamedTuple outputs idiom
                                        ("champion", bool), ("reason", str), ("promote_command", str),
                                        ("infra_validation", str)]):
    """Registers the model as a new version, with its metrics, parameters and lineage.

    Args:
        model: The servable model that passed the gate.
        dataset: The data it was trained and evaluated on (for its spec and fingerprint).
        metrics: The evaluation metrics.
        report: The evaluation report.
        registered_report: Output: the same report with the registration and champion decision.
        options: The options this step reads: ``registry`` (sqlite:///PATH/registry.db, an
            MLflow server URL, or vertex://PROJECT/REGION[/MODEL]), ``model_name`` (empty: derived
            from the data spec), ``champion_tolerance`` and ``devices`` (where the champion's
            re-measurement runs; declared in tlp.components.lib.settings).

    Returns:
        The registry URI, the model name, the new version, whether it is the champion and why,
        (when a person has to decide, e.g. the classes changed) the command that promotes it, and
        the infra validation (the candidate served once; JSON, empty when nothing new was registered).
    """
    import dataclasses
    import json
    from collections import namedtuple

    from tlp.components.lib.registration import register_model
    from tlp.components.lib.report import add_registration
    from tlp.components.lib.settings import Settings
    from tlp.components.lib.steps import REGISTRATION

    settings = Settings.for_step(REGISTRATION, options)
    chosen = settings.registry
    registered = register_model(
        model.path, dataset.path, dict(metrics.metadata), chosen.registry, chosen.model_name,
        chosen.champion_tolerance, devices=settings.runtime.devices,
    )
    add_registration(report.path, registered_report.path, dataclasses.asdict(registered))
    RegistrationOutputs = namedtuple(
        "RegistrationOutputs",
        ["registry", "name", "version", "champion", "reason", "promote_command", "infra_validation"],
    )
    infra = json.dumps(registered.infra_validation) if registered.infra_validation else ""
    return RegistrationOutputs(
        registered.registry, registered.name, registered.version, registered.champion, registered.reason,
        registered.promote_command, infra,
    )
