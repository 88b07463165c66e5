"""``tlp models``: a registry's versions, read and steered by a person, the same for MLflow and
the Vertex AI Model Registry (through ``registry.Registry``)."""

from __future__ import annotations

import json

from tlp.components.lib import specs
from tlp.components.lib.registration import split_of
from tlp.components.lib.registry import ModelVersion, Registry, open_registry
from tlp.components.lib.registry.champion import parse_reference
from tlp.components.lib.registry.champion import promote as promote_version
from tlp.components.lib.registry.champion import rollback as rollback_champion
from tlp.components.lib.specs import ConfigError
from tlp.pipelines import environment

DECISION_WIDTH = 70


def _open(registry_uri: str) -> Registry:
    uri = specs.check_registry_uri(registry_uri)
    if uri.startswith(specs.VERTEX_SCHEME):
        environment.check_credentials()
    return open_registry(uri)


def _row(version: ModelVersion) -> dict:
    return {
        "version": version.version,
        "champion": version.champion,
        "test_accuracy": version.metrics.get("test_accuracy"),
        "data": version.tags.get("data_spec", ""),
        "images": version.total_images,
        "split": split_of(version.tags),
        "created": version.created,
        "decision": version.tags.get("champion_decision", ""),
    }


def list_versions(registry_uri: str, name: str, *, as_json: bool = False) -> str:
    """The table (or JSON) of ``tlp models list NAME``."""
    rows = [_row(version) for version in _open(registry_uri).versions(name)]
    if as_json:
        return json.dumps(rows, indent=2)
    lines = [f"{'':1} {'version':>7}  {'test acc':>8}  {'images':>7}  {'created':<25}  {'data':<28}  "
             f"{'split':<30}  decision"]
    for row in rows:
        accuracy = f"{row['test_accuracy']:.4f}" if row["test_accuracy"] is not None else "-"
        images = f"{row['images']:,}" if row["images"] is not None else "-"
        decision = row["decision"]
        decision = decision if len(decision) <= DECISION_WIDTH else decision[: DECISION_WIDTH - 3] + "..."
        lines.append(f"{'*' if row['champion'] else ' '} {row['version']:>7}  {accuracy:>8}  {images:>7}  "
                     f"{row['created']:<25}  {row['data']:<28}  {row['split']:<30}  {decision}")
    lines.append("* champion")
    return "\n".join(lines)


def show_version(registry_uri: str, reference: str, *, as_json: bool = False) -> str:
    """Everything recorded on one version (``tlp models show NAME/VERSION``)."""
    name, number = parse_reference(reference)
    version = _open(registry_uri).version(name, number)
    record = {"name": version.name, "version": version.version, "created": version.created,
              "aliases": version.aliases, "champion": version.champion, "split": split_of(version.tags),
              "metrics": version.metrics, "tags": version.tags, "params": version.params}
    if as_json:
        return json.dumps(record, indent=2)
    lines = [f"{name} version {version.version}{' (champion)' if version.champion else ''}, created {version.created}",
             f"  aliases   {', '.join(version.aliases) or '-'}", f"  split     {record['split']}"]
    for title, values in (("metrics", version.metrics), ("recorded", version.tags), ("params", version.params)):
        lines.append(f"  {title}")
        lines += [f"    {key:<24} {value}" for key, value in sorted(values.items())]
    return "\n".join(lines)


def promote(registry_uri: str, reference: str, *, reason: str, by: str = "") -> str:
    if not reason.strip():
        raise ConfigError(f"--reason is required: say why {reference} should be the champion; it is recorded on "
                          "the version with who and when.")
    parse_reference(reference)
    return promote_version(_open(registry_uri), reference, reason=reason, by=by or environment.current_user())


def rollback(registry_uri: str, name: str, *, reason: str, by: str = "") -> str:
    return rollback_champion(_open(registry_uri), name, reason=reason.strip() or "rolled back",
                             by=by or environment.current_user())
