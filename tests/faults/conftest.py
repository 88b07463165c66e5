"""Fixtures of the fault and distribution tests."""

import pytest

from tests.conftest import settings
from tlp.components.lib.dataprep import prepare, records
from tlp.components.lib.training import train_head

# The equivalence tests compare 1 device with 2 replicas, which only agree when every batch
# splits evenly between the replicas. The content split decides the split sizes; this seed is
# one whose 80 sample images split exactly 64/8/8 (asserted below, so a changed split fails here).
EVEN_SPLIT_SEED = 5


def _prepare_even(directory: str, **options) -> str:
    prepare.prepare_dataset("sample:40", directory, image_size=64, seed=EVEN_SPLIT_SEED, **options)
    sizes = [sum(records.read_metadata(directory)["counts"][split].values()) for split in records.SPLITS]
    assert sizes == [64, 8, 8], f"seed {EVEN_SPLIT_SEED} no longer splits 80 sample images 64/8/8: {sizes}"
    return directory


def _head_without_dropout(dataset: str, directory: str) -> str:
    """Dropout off: its random masks would differ between replicas and hide equivalence."""
    train_head(dataset, directory, settings(alpha=0.35, weights="none", epochs=1, batch_size=16, dropout=0.0))
    return directory


@pytest.fixture(scope="session")
def even(tmp_path_factory):
    """80 sample images split 64/8/8 (default shards) and a dropout-free head on them."""
    root = tmp_path_factory.mktemp("even")
    dataset = _prepare_even(str(root / "dataset"))
    return dataset, _head_without_dropout(dataset, str(root / "head"))


@pytest.fixture(scope="session")
def sharded(tmp_path_factory):
    """The same 80 images with 64 train in 8 shard files and 8 val in 2, and a dropout-free head
    on them: enough files for AutoShardPolicy.FILE with 2 workers."""
    root = tmp_path_factory.mktemp("sharded")
    dataset = _prepare_even(str(root / "dataset"), max_workers=2, min_shard_records=4)
    return dataset, _head_without_dropout(dataset, str(root / "head"))
