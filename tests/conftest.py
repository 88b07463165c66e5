"""Shared fixtures: small, real artifacts made once per session (64 px images, alpha 0.35)."""

import fcntl
import os
import pickle

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

# The loopback Google Cloud / Kubeflow Pipelines stand-in, for any test that talks to "the cloud".
from tests.cloud.conftest import standin  # noqa: E402, F401

SMALL = {"image_size": 64, "alpha": 0.35, "weights": "none"}


def _once_per_session(tmp_path_factory, worker_id, name, build):
    """``build(directory)`` once per test session, even when pytest-xdist runs the session in
    several worker processes: the first worker to get here builds it into the directory the
    workers share (under a file lock) and the others reuse its result, rather than each worker
    training the same models again on the same two cores."""
    if worker_id == "master":  # no xdist
        return build(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        result_file = shared / f"{name}.pickle"
        if result_file.exists():
            return pickle.loads(result_file.read_bytes())
        result = build(shared / name)
        result_file.write_bytes(pickle.dumps(result))
        return result


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory, worker_id):
    """A prepared sample data set: 2 classes x 40 images, 64 px."""
    from tlp.components.lib.dataprep.prepare import prepare_dataset

    def build(root):
        directory = str(root / "dataset")
        prepare_dataset("sample:40", directory, image_size=SMALL["image_size"], seed=7)
        return directory

    return _once_per_session(tmp_path_factory, worker_id, "data", build)


@pytest.fixture(scope="session")
def head_model(sample_dataset, tmp_path_factory, worker_id):
    """Feature-extraction output (model dir, history) on the sample data set."""
    from tlp.components.lib.training import train_head

    def build(root):
        directory = str(root / "model")
        history = train_head(sample_dataset, directory, settings(alpha=SMALL["alpha"], weights="none", epochs=3,
                                                              batch_size=16))
        return directory, history

    return _once_per_session(tmp_path_factory, worker_id, "head", build)


@pytest.fixture(scope="session")
def tuned_model(sample_dataset, head_model, tmp_path_factory, worker_id):
    """Fine-tuning output (servable model dir, history), one epoch, default strategy."""
    from tlp.components.lib.training import fine_tune

    def build(root):
        directory = str(root / "model")
        history, replicas = fine_tune(
            sample_dataset, head_model[0], directory, settings(fine_tune_at=100, fine_tune_epochs=1, batch_size=16)
        )
        return directory, history, replicas

    return _once_per_session(tmp_path_factory, worker_id, "tuned", build)


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


# --- skips in CI ---------------------------------------------------------------------------
# A test that skips in CI is a test that does not run. Under CI (env CI set, as .ci/run is run),
# every skip must be listed here with its reason, or the session fails.
CI_ALLOWED_SKIPS = {
    # tests/docker/ runs in the docker tier (.ci/docker-tier.sh sets TLP_DOCKER_TESTS=1), after make test.
    "tests/docker/": "run by .ci/docker-tier.sh with TLP_DOCKER_TESTS=1, after make test",
}
_unlisted_skips: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and os.environ.get("CI") and not any(
        report.nodeid.startswith(prefix) for prefix in CI_ALLOWED_SKIPS
    ):
        _unlisted_skips.append(f"{report.nodeid}: {report.longrepr[-1] if isinstance(report.longrepr, tuple) else ''}")


def pytest_sessionfinish(session, exitstatus):
    if _unlisted_skips:
        print("\nCI: these tests skipped and are not listed in tests/conftest.py CI_ALLOWED_SKIPS:")
        for line in _unlisted_skips:
            print(f"  {line}")
        session.exitstatus = 1
