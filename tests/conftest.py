"""Shared fixtures: small, real artifacts made once per session (64 px images, alpha 0.35)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

# The loopback Google Cloud / Kubeflow Pipelines stand-in, for any test that talks to "the cloud".
from tests.cloud.conftest import standin  # noqa: E402, F401

SMALL = {"image_size": 64, "alpha": 0.35, "weights": "none"}


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory):
    """A prepared sample data set: 2 classes x 40 images, 64 px."""
    from tlp.components.lib.dataprep.prepare import prepare_dataset

    directory = str(tmp_path_factory.mktemp("data") / "dataset")
    prepare_dataset("sample:40", directory, image_size=SMALL["image_size"], seed=7)
    return directory


@pytest.fixture(scope="session")
def head_model(sample_dataset, tmp_path_factory):
    """Feature-extraction output (model dir, history) on the sample data set."""
    from tlp.components.lib.training import train_head

    directory = str(tmp_path_factory.mktemp("head") / "model")
    history = train_head(sample_dataset, directory, settings(alpha=SMALL["alpha"], weights="none", epochs=3,
                                                          batch_size=16))
    return directory, history


@pytest.fixture(scope="session")
def tuned_model(sample_dataset, head_model, tmp_path_factory):
    """Fine-tuning output (servable model dir, history), one epoch, default strategy."""
    from tlp.components.lib.training import fine_tune

    directory = str(tmp_path_factory.mktemp("tuned") / "model")
    history, replicas = fine_tune(
        sample_dataset, head_model[0], directory, settings(fine_tune_at=100, fine_tune_epochs=1, batch_size=16)
    )
    return directory, history, replicas


def settings(check=True, **values):
    """Settings with these options changed (option names as declared in settings.py);
    ``check=False`` skips the checks, to show that the step itself refuses a bad value."""
    from tlp.components.lib.settings import Settings

    return Settings.from_values(values, check=check)


def write_image(path, size=(40, 30), color=(200, 50, 50), mode="RGB", fmt=None):
    """Writes a small real image file with Pillow."""
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.new("RGB", size, color).convert(mode)
    image.save(path, format=fmt)
    return path
