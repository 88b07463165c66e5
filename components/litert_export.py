"""Component 6 (optional, --export-litert): LiteRT variants of the registered model, measured and gated."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Model, Output

from tlp.components.container_images import image_reference


@dsl.component(base_image=image_reference(kind="light"), install_kfp_package=False)
def litert_export(
    model: Input[Model],
    dataset: Input[Dataset],
    registered_report: Input[HTML],
    litert: Output[Model],
    report: Output[HTML],
    registry: str,
    name: str,
    version: str,
    variants: str,
    max_quantization_drop: float,
) -> NamedTuple("LiteRTOutputs", [("registered", str), ("not_registered", str)]):  # type: ignore[valid-type]  # kfp's NamedTuple outputs idiom
    """Converts the registered model to each LiteRT variant, scores each on the whole test split
    against the Keras model, and records those within ``max_quantization_drop`` with the version.

    Args:
        model: The model registration registered.
        dataset: Its data set: the test split scores each variant, the training split calibrates int8.
        registered_report: Registration's report; ``report`` is it with the LiteRT table.
        litert: Output: the .tflite variants, labels.txt and litert.json (measurements and the gate).
        report: Output: the report with the LiteRT table.
        registry: The registry URI registration wrote to.
        name: The registered model's name.
        version: The registered version the variants are recorded with.
        variants: Comma-separated: float32, float16, dynamic, int8.
        max_quantization_drop: The largest test accuracy a variant may lose against the Keras model.

    Returns:
        The variants recorded with the version and those that were not (comma-separated); why is in
        litert.json and the output's metadata (``reasons``).
    """
    from collections import namedtuple

    from tlp.components.lib.litert import export_and_register, parse_variants
    from tlp.components.lib.report import add_litert

    outcome = export_and_register(
        model.path, dataset.path, litert.path, parse_variants(variants), max_quantization_drop, registry, name, version,
    )
    add_litert(registered_report.path, report.path, outcome, outcome["gate"]["reasons"], max_quantization_drop)
    litert.metadata["reasons"] = outcome["gate"]["reasons"]
    litert.metadata["registered"] = outcome["registered"] or {}
    LiteRTOutputs = namedtuple("LiteRTOutputs", ["registered", "not_registered"])
    return LiteRTOutputs(",".join(outcome["gate"]["passed"]), ",".join(outcome["gate"]["not_registered"]))
