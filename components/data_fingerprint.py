"""Component 0: the data source's fingerprint. Never cached: it is what lets every later step be."""

from typing import NamedTuple

from kfp import dsl

from tlp.components.container_images import image_reference


@dsl.component(base_image=image_reference(kind="light"), install_kfp_package=False)
def data_fingerprint(
    options: dict,
    listing_folder: str = "",
) -> NamedTuple("DataFingerprintOutputs", [("fingerprint", str), ("files", int), ("description", str)]):  # type: ignore[valid-type]  # kfp's NamedTuple outputs idiom
    """Lists what the ``data`` option names, as it is now (names, sizes, generations or
    modification times; the TFDS version), into one fingerprint for data prep.

    Args:
        options: The options this step reads (``data``; declared in tlp.components.lib.settings).
        listing_folder: Where a gs:// folder's listing is saved for data prep, which then does
            not list the bucket again ("": not saved).

    Returns:
        The fingerprint (16 hex digits), how many image files were listed, and one line saying
        what was listed.
    """
    from collections import namedtuple

    from tlp.components.lib.fingerprint import fingerprint_source
    from tlp.components.lib.settings import Settings
    from tlp.components.lib.steps import DATA_FINGERPRINT

    found = fingerprint_source(Settings.for_step(DATA_FINGERPRINT, options).data.data, listing_folder)
    print(f"  data fingerprint: {found.description} -> {found.fingerprint}", flush=True)
    DataFingerprintOutputs = namedtuple("DataFingerprintOutputs", ["fingerprint", "files", "description"])
    return DataFingerprintOutputs(found.fingerprint, found.files, found.description)
