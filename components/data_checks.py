"""Component: the data checked against the champion's data, before any training."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from tlp.components.container_images import image_reference


@dsl.component(base_image=image_reference(kind="light"), install_kfp_package=False)
def data_checks(
    dataset: Input[Dataset],
    findings: Output[Artifact],
    metrics: Output[Metrics],
    options: dict,
) -> NamedTuple("DataChecksOutputs", [("same_data", bool), ("class_set_changed", bool)]):  # type: ignore[valid-type]  # kfp's NamedTuple outputs idiom
    """Compares the prepared data with the champion's (photo count, class shares, class set,
    source fingerprint) and stops the run, before training, if it shrank or shifted too much.

    Args:
        dataset: The data-prep output.
        findings: Output: the findings as JSON (also in its metadata), for the summary and report.
        metrics: Output: ``image_drift_auc`` of the new photos against the champion's, when measured
            (Vertex AI Experiments shows a step's metrics).
        options: The options this step reads (``max_data_drop``, ``max_class_shift``, ``registry``,
            ``model_name``; declared in tlp.components.lib.settings).

    Returns:
        Whether the data is the same as the champion's, and whether its classes changed.
    """
    import json
    from collections import namedtuple

    from tlp.components.lib.datachecks import check_against_champion, raise_if_stopped
    from tlp.components.lib.settings import Settings
    from tlp.components.lib.steps import DATA_CHECKS

    settings = Settings.for_step(DATA_CHECKS, options)
    found = check_against_champion(
        dataset.path, settings.registry.registry, settings.registry.model_name,
        max_data_drop=settings.checks.max_data_drop, max_class_shift=settings.checks.max_class_shift,
        max_image_drift=settings.checks.max_image_drift,
    )
    with open(findings.path, "w") as handle:  # written first: a stopped run keeps them too
        json.dump(found, handle, indent=2)
    findings.metadata.update({key: found[key] for key in ("champion", "passed", "same_data", "findings", "problems")})
    if found["image_drift_auc"] is not None:
        metrics.log_metric("image_drift_auc", found["image_drift_auc"])
    raise_if_stopped(found)
    DataChecksOutputs = namedtuple("DataChecksOutputs", ["same_data", "class_set_changed"])
    return DataChecksOutputs(found["same_data"], found["class_set_changed"])
