"""Component 1: data prep. A data spec in, one Dataset artifact with train/val/test out."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from tlp.components.container_images import image_reference


@dsl.component(base_image=image_reference(kind="light"), install_kfp_package=False)
def data_prep(
    dataset: Output[Dataset],
    options: dict,
    source_fingerprint: str = "",
    listing_folder: str = "",
) -> NamedTuple("DataPrepOutputs", [("class_names", str), ("train_images", int),  # type: ignore[valid-type]  # kfp's NamedTuple outputs idiom
                                    ("val_images", int), ("test_images", int), ("skipped", int)]):
    """Loads the images named by the ``data`` option and writes the 80/10/10 splits (each photo's
    split decided by its content and the seed), resized, as TFRecord shards.

    Args:
        dataset: Output directory: TFRecord shards per split and metadata.json.
        options: The options this step reads (``data``, ``image_size``, ``seed``,
            ``max_skipped_fraction``, ``data_prep_runner`` and the ``dataflow_*`` options; declared in
            tlp.components.lib.settings).
        source_fingerprint: The data-fingerprint step's listing of the source. Recorded; and as
            an input it makes a cached data prep (Vertex AI, Kubeflow) run again when the data changed.
        listing_folder: Where the fingerprint step saved a gs:// folder's listing: the one saved
            with ``source_fingerprint`` is read instead of listing the bucket again.

    Returns:
        The class names (JSON list), the image count of each split and the skipped-file count.
    """
    import json
    from collections import namedtuple

    from tlp.components.lib.dataprep.prepare import dataflow_job, prepare_dataset
    from tlp.components.lib.settings import Settings
    from tlp.components.lib.steps import DATA_PREP

    settings = Settings.for_step(DATA_PREP, options)
    dataflow = dataflow_job(settings.data, dataset.uri)
    # Dataflow's workers write to Cloud Storage: the output's gs:// URI (the local path is its mount).
    output = dataset.uri if dataflow and dataset.uri.startswith("gs://") else dataset.path
    metadata = prepare_dataset(
        settings.data.data, output, image_size=settings.model.image_size, seed=settings.training.seed,
        max_skipped_fraction=settings.data.max_skipped_fraction, source_fingerprint=source_fingerprint,
        dataflow=dataflow, listing_folder=listing_folder,
    )
    dataset.metadata.update({
        "source": metadata["source"],
        "class_names": metadata["class_names"],
        "image_size": metadata["image_size"],
        "num_examples": metadata["num_examples"],
        "fingerprint": metadata["fingerprint"],
        "source_fingerprint": source_fingerprint,
        "split_method": metadata["split"]["method"],
        "skipped_count": len(metadata["skipped"]),
        "skipped": metadata["skipped"],  # every skipped file with its reason
    })
    DataPrepOutputs = namedtuple(
        "DataPrepOutputs", ["class_names", "train_images", "val_images", "test_images", "skipped"]
    )
    counts = metadata["num_examples"]
    return DataPrepOutputs(
        json.dumps(metadata["class_names"]), counts["train"], counts["val"], counts["test"], len(metadata["skipped"])
    )
