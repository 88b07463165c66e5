"""Registration into the Vertex AI Model Registry, through the real aiplatform client against the
stand-in: first run creates the model, later runs add versions under it (parent_model), labels
carry the metrics, the champion alias (and default version) moves by champion/challenger."""

import shutil

import pytest

from tlp.components.lib.registration import register_model
from tlp.components.lib.registry import open_registry
from tlp.components.lib.specs import ConfigError
from tlp.components.lib.version import project_version

METRICS = {"test_accuracy": 0.975, "val_accuracy": 0.96, "train_accuracy": 0.98, "gap": 0.02}


def _uri(standin, model="cats", extra="&image_repo=us-docker.pkg.dev/tlp-test/tlp"):
    return (f"vertex://tlp-test/us-central1/{model}?api_endpoint={standin.url}"
            f"&staging_bucket=gs://tlp-staging{extra}")


@pytest.fixture(autouse=True)
def staging_bucket(standin):
    standin.add_bucket("tlp-staging")


@pytest.fixture
def model_dir(tuned_model):
    return tuned_model[0]


def _copy(model_dir, tmp_path, name, marker):
    """The same servable model with different bytes: a different artifact to register."""
    target = tmp_path / name
    shutil.copytree(model_dir, target)
    (target / "assets").mkdir(exist_ok=True)
    (target / "assets" / "marker.txt").write_text(marker)
    return str(target)


def test_versions_go_under_one_model_and_the_champion_alias_moves(standin, sample_dataset, model_dir, tmp_path):
    first = register_model(_copy(model_dir, tmp_path, "one", "1"), sample_dataset, METRICS, _uri(standin))
    assert (first.name, first.version, first.champion) == ("cats", "1", True)

    # The champion is re-scored on this test split (1.0 on the sample data); the challenger matches it.
    second = register_model(_copy(model_dir, tmp_path, "two", "2"), sample_dataset,
                            {**METRICS, "test_accuracy": 1.0}, _uri(standin))
    assert second.version == "2"
    assert second.champion and "takes over as champion" in second.reason

    uploads = standin.find("POST", r"/models:upload$")
    assert len(uploads) == 2
    first_model, second_model = (upload.body["model"] for upload in uploads)
    assert "parentModel" not in uploads[0].body or not uploads[0].body["parentModel"]
    [model_name] = standin.models  # one model, two versions
    assert uploads[1].body["parentModel"].endswith(f"/models/{model_name}")
    for model in (first_model, second_model):
        assert model["displayName"] == "cats"
        assert model["containerSpec"]["imageUri"] == f"us-docker.pkg.dev/tlp-test/tlp/tlp-serve:{project_version()}"
        assert model["containerSpec"]["ports"] == [{"containerPort": 8080}]
        assert model["labels"]["gap"] == "0_0200"
        assert model["artifactUri"].startswith("gs://tlp-staging/")  # the local model was uploaded first
    assert first_model["labels"]["test_accuracy"] == "0_9750" and second_model["labels"]["test_accuracy"] == "1_0000"
    staged = [name for (bucket, name) in standin.objects if bucket == "tlp-staging"]
    assert any(name.endswith("saved_model.pb") for name in staged)

    registry = open_registry(_uri(standin))
    assert registry.champion_version("cats") == "2"
    aliases = standin.find("POST", r":mergeVersionAliases$")
    assert aliases and set(aliases[-1].body["versionAliases"]) >= {"champion", "default"}


def test_the_same_artifact_is_registered_once(standin, sample_dataset, model_dir, tmp_path):
    model_dir = _copy(model_dir, tmp_path, "m", "same")
    first = register_model(model_dir, sample_dataset, METRICS, _uri(standin))
    again = register_model(model_dir, sample_dataset, METRICS, _uri(standin))
    assert again.version == first.version and again.existing
    assert len(standin.find("POST", r"/models:upload$")) == 1


def test_a_weaker_challenger_does_not_take_the_alias(standin, sample_dataset, model_dir, tmp_path):
    register_model(_copy(model_dir, tmp_path, "one", "1"), sample_dataset, METRICS, _uri(standin))
    # The champion is re-scored on this test split; a challenger claiming 0 accuracy cannot beat it.
    weaker = register_model(_copy(model_dir, tmp_path, "two", "2"), sample_dataset,
                            {**METRICS, "test_accuracy": 0.0}, _uri(standin))
    assert not weaker.champion and "stays behind champion version 1" in weaker.reason
    assert open_registry(_uri(standin)).champion_version("cats") == "1"


def test_model_dir_fetches_a_registered_version(standin, sample_dataset, model_dir, tmp_path):
    register_model(_copy(model_dir, tmp_path, "one", "fetch-me"), sample_dataset, METRICS, _uri(standin))
    registry = open_registry(_uri(standin))
    fetched = registry.model_dir("cats@champion")
    with open(f"{fetched}/assets/marker.txt") as handle:
        assert handle.read() == "fetch-me"
    with pytest.raises(ConfigError, match="is not in the registry"):
        registry.model_dir("dogs/1")


def test_a_local_model_needs_an_existing_staging_bucket(standin, sample_dataset, model_dir):
    with pytest.raises(ConfigError, match="staging_bucket=gs://BUCKET"):
        register_model(model_dir, sample_dataset, METRICS,
                       f"vertex://tlp-test/us-central1/cats?api_endpoint={standin.url}")
    with pytest.raises(ConfigError, match="staging bucket gs://nowhere does not exist"):
        register_model(model_dir, sample_dataset, METRICS,
                       f"vertex://tlp-test/us-central1/cats?api_endpoint={standin.url}&staging_bucket=gs://nowhere")
    assert not standin.find("POST", r"/models:upload$")


def test_the_prebuilt_tf_2_15_image_stays_available_with_its_end_of_life_warning(
        standin, sample_dataset, model_dir, tmp_path, capsys):
    register_model(_copy(model_dir, tmp_path, "one", "prebuilt"), sample_dataset, METRICS,
                   _uri(standin, extra="&serving_image=prebuilt-tf2.15"))
    [upload] = standin.find("POST", r"/models:upload$")
    assert upload.body["model"]["containerSpec"]["imageUri"] == (
        "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest")
    assert "end of support (2026-01-14)" in capsys.readouterr().out


def test_a_version_records_how_its_gap_was_measured(standin, sample_dataset, model_dir, tmp_path):
    """Issues 28.3, 29.2: the held-out split of the gap (a tag in the version's record) and the
    train sample's size and 95% intervals (metrics: labels and record) reach Vertex AI."""
    measured = {**METRICS, "gap_low": 0.011, "gap_high": 0.029, "train_accuracy_low": 0.986,
                "train_accuracy_high": 0.994, "gap_sample_photos": 20000, "gap_split": "test"}
    register_model(_copy(model_dir, tmp_path, "gap", "gap"), sample_dataset, measured, _uri(standin))
    [upload] = standin.find("POST", r"/models:upload$")
    labels = upload.body["model"]["labels"]
    assert (labels["gap_low"], labels["gap_high"]) == ("0_0110", "0_0290")
    assert (labels["train_accuracy_low"], labels["train_accuracy_high"]) == ("0_9860", "0_9940")
    assert labels["gap_sample_photos"] == "20000_0000"
    version = open_registry(_uri(standin)).version("cats", "1")
    assert version.tags["gap_split"] == "test" and version.metrics["gap_sample_photos"] == 20000


def test_litert_variants_are_recorded_with_the_version(standin, sample_dataset, model_dir, tmp_path):
    """Issue 31.3 on Vertex AI: a version holds one artifact (the served model), so the variants stay
    where the step wrote them and the version's record names that place, the files and their
    metrics, in the update that reaches the stand-in; a local folder is refused in one sentence."""
    register_model(_copy(model_dir, tmp_path, "lite", "lite"), sample_dataset, METRICS, _uri(standin))
    registry = open_registry(_uri(standin))
    where = registry.attach_files("cats", "1", "gs://tlp-staging/runs/litert", ["model_int8.tflite", "labels.txt"],
                                  artifact_path="litert", metrics={"litert.int8.accuracy": 0.95},
                                  tags={"litert.variants": "int8"})
    assert where == "gs://tlp-staging/runs/litert"
    [update] = [r for r in standin.find("PATCH", r"/models/") if "versionDescription" in (r.body or {})][-1:]
    assert update.path.endswith("@1") or "@1" in update.path
    assert "gs://tlp-staging/runs/litert" in update.body["versionDescription"]
    tags = open_registry(_uri(standin)).version("cats", "1").tags
    assert tags["litert.location"] == "gs://tlp-staging/runs/litert"
    assert tags["litert.files"] == "model_int8.tflite,labels.txt" and tags["litert.variants"] == "int8"
    assert tags["metric.litert.int8.accuracy"] == "0.950000"
    with pytest.raises(ConfigError, match="on a local disk, where Vertex AI cannot keep them"):
        registry.attach_files("cats", "1", str(tmp_path), ["labels.txt"], artifact_path="litert", metrics={}, tags={})
