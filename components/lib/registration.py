"""The registration step's decisions: a new version is registered with its lineage, served once
for real (infra validation), then takes the ``champion`` alias only if it scores at least as well
as the champion on test photos neither of them trained on.

A candidate is registered but *not* promoted automatically when it cannot be compared with the
champion on one test set: its classes differ from the champion's, or the champion's split was
made another way (the old shuffled split, another ``--seed``, another TFDS version). The reason
then ends with the exact ``tlp models promote`` command. The registry backends, promote and
rollback are in ``registry/``; this module is the only one that joins them with evaluation."""

from __future__ import annotations

import json
import shlex

from tlp.components.lib import model as model_lib
from tlp.components.lib.dataprep import records, split
from tlp.components.lib.evaluation import evaluate_model
from tlp.components.lib.infra_validation import infra_validate
from tlp.components.lib.registry import ModelVersion, Registered, Registry, open_registry
from tlp.components.lib.registry.champion import move_champion
from tlp.components.lib.specs import parse_data_spec
from tlp.components.lib.strategy import make_strategy
from tlp.components.lib.version import project_version

AUTOMATIC = "tlp registration (automatic)"
OLD_SPLIT = "seeded shuffle (before content splits)"


def model_name_for(registry: Registry, model_name: str, data_source: str) -> str:
    """The registered model a run belongs to: fixed by the URI, else ``--model-name``, else the data's name."""
    return registry.default_name or model_name or parse_data_spec(data_source).short_name


def promote_command(registry_uri: str, name: str, version: str) -> str:
    return (f"tlp models promote {shlex.quote(f'{name}/{version}')} --reason 'WHY' "
            f"--registry {shlex.quote(registry_uri)}")


def split_of(tags: dict) -> str:
    """How a version's data was split, as recorded (``method`` or ``method/seed=N``)."""
    method = tags.get("split_method")
    if not method:
        return OLD_SPLIT
    return f"{method}/seed={tags['split_seed']}" if method == split.SPLIT_METHOD else method


def split_of_data(split: dict) -> str:
    """How a data set was split (its metadata's ``split``), in ``split_of``'s words."""
    return split_of({"split_method": split.get("method", ""), "split_seed": split.get("seed", "")})


def _class_change(champion: ModelVersion, class_names: list[str]) -> str:
    theirs = champion.recorded("class_names")
    if not isinstance(theirs, list) or theirs == class_names:
        return ""
    added = [c for c in class_names if c not in theirs]
    removed = [c for c in theirs if c not in class_names]
    parts = ([f"added {', '.join(map(repr, added))}"] if added else []) + (
        [f"removed {', '.join(map(repr, removed))}"] if removed else [])
    return "; ".join(parts) or f"reordered ({theirs} -> {class_names})"


def challenge(
    registry: Registry, name: str, candidate_version: str, candidate_accuracy: float, candidate_dir: str,
    dataset_dir: str, tolerance: float, strategy=None,
) -> tuple[bool | None, str]:
    """Champion/challenger. Returns (promote, reason); ``promote`` is None when a person has to
    decide (the two cannot be compared on one test set). The champion's re-measurement (and the
    candidate's, when photos are left out) is divided over ``strategy``'s replicas."""
    champion = registry.champion_version(name)
    if champion is None:
        return True, "first version of the model: it becomes the champion"
    if champion == candidate_version:
        return True, "already the champion"
    record = registry.version(name, champion)
    data = records.read_metadata(dataset_dir)
    changed = _class_change(record, model_lib.read_info(candidate_dir)["class_names"])
    if changed:
        return None, (f"the classes changed since champion version {champion} ({changed}), so the two cannot be "
                      "scored on one test set: registered but not promoted automatically")
    theirs, ours = split_of(record.tags), split_of_data(data.get("split", {}))
    if theirs != ours:
        return None, (f"champion version {champion} was trained on a {theirs} split and this version on a {ours} "
                      "split, so no test photo is known to be unseen by both: registered but not promoted "
                      "automatically")
    if strategy is None:
        strategy = make_strategy("auto", tf_config="")
    # Photos a small class pulled into test may have been training photos of the champion: left out.
    unsure = {m["source_id"] for m in data.get("split", {}).get("moved", [])
              if m.get("to") == "test" and m.get("why") == "small class"}
    # A photo kept with copies beside it: which copy is kept (the first listed) and so its split can differ
    # between two data sets (tlp 0.1.0 kept every copy; a copy added later may sort first), so the
    # champion may have trained on another copy of a test photo: left out too.
    unsure |= {entry["duplicate_of"] for entry in data.get("skipped", [])
               if entry.get("kind") == "duplicate" and entry.get("duplicate_of")}
    try:
        scored = evaluate_model(registry.model_dir(f"{name}/{champion}"), dataset_dir, splits=("test",),
                                exclude_source_ids=unsure, strategy=strategy)
    except ValueError as error:  # e.g. the champion's model knows other classes than recorded
        return None, (f"champion version {champion} cannot be scored on this test split ({error}): registered but "
                      "not promoted automatically")
    champion_accuracy = scored["test"]["accuracy"]
    where = "the same test split"
    if unsure:
        candidate_accuracy = evaluate_model(candidate_dir, dataset_dir, splits=("test",),
                                            exclude_source_ids=unsure, strategy=strategy)["test"]["accuracy"]
        where = f"the same {scored['test']['examples']} test photos ({len(unsure)} left out: the champion may have " \
                "trained on them)"
    promote = candidate_accuracy >= champion_accuracy - tolerance
    verdict = "takes over as champion" if promote else f"stays behind champion version {champion}"
    return promote, (
        f"test accuracy {candidate_accuracy:.4f} vs champion version {champion} at "
        f"{champion_accuracy:.4f} on {where} (tolerance {tolerance:g}): {verdict}"
    )


def register_model(
    model_dir: str, dataset_dir: str, metrics: dict, registry_uri: str, model_name: str = "",
    champion_tolerance: float = 0.0, devices: str = "auto",
) -> Registered:
    """The registration step: gathers lineage from the model and data set, registers a new
    version, then lets it challenge the champion. ``devices`` (``--devices``): the re-measurement
    runs on this machine's GPUs (or N logical CPUs), one machine: registering is done once."""
    # No TF_CONFIG: registration runs on one machine. Logical CPUs (cpu:N) must be set before
    # TensorFlow starts; GPUs ("auto") are found when the champion is scored.
    strategy = make_strategy(devices, tf_config="") if devices != "auto" else None

    info = model_lib.read_info(model_dir)
    data = records.read_metadata(dataset_dir)
    registry = open_registry(registry_uri)
    name = model_name_for(registry, model_name, data["source"])
    # The options the training steps recorded (those declared with lineage=True), and what they led to.
    params = {
        **info.get("options", {}),
        "image_size": data["image_size"],
        **{key: info[key] for key in ("fine_tune_learning_rate", "epochs_done", "replicas") if key in info},
    }
    split = data.get("split", {})
    class_counts = {name: sum(data["counts"][s].get(name, 0) for s in records.SPLITS) for name in data["class_names"]}
    tags = {
        "data_spec": data["source"],
        "data_fingerprint": data["fingerprint"],
        # The prepared data set itself: tlp export --litert scores (and calibrates int8) on its splits.
        "dataset_uri": dataset_dir,
        "source_fingerprint": data.get("source_fingerprint", ""),
        "data_counts": json.dumps(data["num_examples"]),
        "class_counts": json.dumps(class_counts),
        "class_names": json.dumps(info["class_names"]),
        "split_method": split.get("method", ""),
        "split_seed": str(split.get("seed", "")),
        "weights_spec": info.get("options", {}).get("weights", ""),
        "code_version": project_version(),
        # The held-out split of the gap (test in a tuned run); its interval and sample are metrics.
        "gap_split": str(metrics.get("gap_split", "")),
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
                promote_it, registered.reason = challenge(
                    registry, name, registered.version, numeric.get("test_accuracy", 0.0), model_dir, dataset_dir,
                    champion_tolerance, strategy=strategy,
                )
            else:
                promote_it, registered.reason = False, f"not promoted: {infra.summary()}"
            if promote_it:
                move_champion(registry, name, registered.version, by=AUTOMATIC, reason=registered.reason)
            elif promote_it is None:
                registered.promote_command = promote_command(registry.uri, name, registered.version)
                registered.reason += f"; if it should be the champion: {registered.promote_command}"
            registered.champion = bool(promote_it)
            registry.set_tags(name, registered.version, {"champion_decision": registered.reason})
    print(f"  registration: {registered.name} version {registered.version} in {registered.registry}: "
          f"{registered.reason}", flush=True)
    return registered
