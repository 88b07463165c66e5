"""Registration and champion/challenger: a new version is registered with its lineage, then
takes the ``champion`` alias only if it scores at least as well as the champion on the same
test split."""

from __future__ import annotations

import json

from tlp.components.lib import images
from tlp.components.lib import model as model_lib
from tlp.components.lib.evaluation import evaluate_model
from tlp.components.lib.infra_validation import infra_validate
from tlp.components.lib.registry import Registered, Registry, open_registry
from tlp.components.lib.specs import parse_data_spec
from tlp.components.lib.version import project_version


def challenge(
    registry: Registry, name: str, candidate_version: str, candidate_accuracy: float,
    dataset_dir: str, tolerance: float,
) -> tuple[bool, str]:
    """Champion/challenger: the candidate takes the ``champion`` alias only if its test accuracy
    is at least the champion's on the *same* (current) test split, minus ``tolerance``."""

    champion = registry.champion_version(name)
    if champion is None:
        return True, "first version of the model: it becomes the champion"
    if champion == candidate_version:
        return True, "already the champion"
    try:
        scored = evaluate_model(registry.model_dir(f"{name}/{champion}"), dataset_dir, splits=("test",))
    except ValueError as error:  # e.g. the champion knows other classes
        return False, f"champion version {champion} cannot be scored on this test split ({error}); it stays"
    champion_accuracy = scored["test"]["accuracy"]
    promote = candidate_accuracy >= champion_accuracy - tolerance
    verdict = "takes over as champion" if promote else f"stays behind champion version {champion}"
    return promote, (
        f"test accuracy {candidate_accuracy:.4f} vs champion version {champion} at "
        f"{champion_accuracy:.4f} on the same test split (tolerance {tolerance:g}): {verdict}"
    )



def register_model(
    model_dir: str, dataset_dir: str, metrics: dict, registry_uri: str, model_name: str = "",
    champion_tolerance: float = 0.0,
) -> Registered:
    """The registration step: gathers lineage from the model and data set, registers a new
    version, then lets it challenge the champion."""

    info = model_lib.read_info(model_dir)
    data = images.read_metadata(dataset_dir)
    registry = open_registry(registry_uri)
    name = registry.default_name or model_name or parse_data_spec(data["source"]).short_name
    # The options the training steps recorded (those declared with lineage=True), and what they led to.
    params = {
        **info.get("options", {}),
        "image_size": data["image_size"],
        **{key: info[key] for key in ("fine_tune_learning_rate", "epochs_done", "replicas") if key in info},
    }
    tags = {
        "data_spec": data["source"],
        "data_fingerprint": data["fingerprint"],
        "data_counts": json.dumps(data["num_examples"]),
        "class_names": json.dumps(info["class_names"]),
        "weights_spec": info.get("options", {}).get("weights", ""),
        "code_version": project_version(),
    }
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    registered = registry.register(model_dir, name, metrics=numeric, params=params, tags=tags)
    if registered.existing:
        registered.reason = "this model artifact was registered before: same version, nothing changed"
    else:
        # TFX's InfraValidator: the candidate is served once, for real, before it may take the alias.
        infra = infra_validate(model_dir, dataset_dir, mode="inprocess")
        registered.infra_validation = infra.as_dict()
        print(f"  registration: {infra.summary()}", flush=True)
        with registry.lock():  # one challenger at a time
            if infra.passed:
                promote, registered.reason = challenge(
                    registry, name, registered.version, numeric.get("test_accuracy", 0.0), dataset_dir,
                    champion_tolerance,
                )
            else:
                promote, registered.reason = False, f"not promoted: {infra.summary()}"
            if promote:
                registry.set_champion(name, registered.version)
            registered.champion = promote
            registry.record_decision(name, registered.version, registered.reason)
    print(f"  registration: {registered.name} version {registered.version} in {registered.registry}: "
          f"{registered.reason}", flush=True)
    return registered
