"""Fixtures of the fault and distribution tests."""

import pytest

from tests.conftest import settings
from tlp.components.lib import images
from tlp.components.lib.training import train_head


@pytest.fixture(scope="session")
def sharded(tmp_path_factory):
    """80 sample images (64 train in 8 shard files, 8 val in 2) and a dropout-free head on them:
    enough files for AutoShardPolicy.FILE with 2 workers."""
    root = tmp_path_factory.mktemp("sharded")
    dataset, head = str(root / "dataset"), str(root / "head")
    images.prepare_dataset("sample:40", dataset, image_size=64, seed=7, max_workers=2, min_shard_records=4)
    train_head(dataset, head, settings(alpha=0.35, weights="none", epochs=1, batch_size=16, dropout=0.0))
    return dataset, head
