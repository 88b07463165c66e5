"""Component 1: data prep. A data spec in, one Dataset artifact with train/val/test out."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from tlp.components.container_images import image_reference


@dsl.component(base_image=image_reference(kind="light"), install_kfp_package=False)
def data_prep(
    dataset: Output[Dataset],
    data: str = "tfds:cats_vs_dogs",
    image_size: int = 160,
    seed: int = 42,
    max_skipped_fraction: float = 0.10,
) -> NamedTuple("DataPrepOutputs", [("class_names", str), ("train_images", int),
                                    ("val_images", int), ("test_images", int), ("skipped", int)]):
    """Loads images from ``data`` and writes the 80/10/10 splits, resized, as TFRecord shards.

    Args:
        dataset: Output directory: TFRecord shards per split and metadata.json.
        data: ``tfds:NAME``, ``folder:PATH`` (local or gs://, one subfolder per class) or
            ``sample[:N]`` (generated, N images per class).
        image_size: Side in pixels of the square images the model takes.
        seed: Seed of the stratified split (folder and sample sources).
        max_skipped_fraction: Fail if more than this fraction of image files are unreadable.

    Returns:
        The class names (JSON list), the image count of each split and the skipped-file count.
    """
    import json
    from collections import namedtuple

    from tlp.components.lib.images import prepare_dataset

    metadata = prepare_dataset(
        data, dataset.path, image_size=image_size, seed=seed, max_skipped_fraction=max_skipped_fraction
    )
    dataset.metadata.update({
        "source": metadata["source"],
        "class_names": metadata["class_names"],
        "image_size": image_size,
        "num_examples": metadata["num_examples"],
        "fingerprint": metadata["fingerprint"],
        "skipped_count": len(metadata["skipped"]),
        "skipped": metadata["skipped"],  # every skipped file with its reason
    })
    outputs = namedtuple("DataPrepOutputs", ["class_names", "train_images", "val_images", "test_images", "skipped"])
    counts = metadata["num_examples"]
    return outputs(
        json.dumps(metadata["class_names"]), counts["train"], counts["val"], counts["test"], len(metadata["skipped"])
    )
