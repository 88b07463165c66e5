"""Cloud runs in Vertex AI Experiments and Vertex AI TensorBoard: `tlp submit` through the real
google-cloud-aiplatform client against the stand-in; the tests assert the requests it sends."""

import pytest

from tests.cloud.metadata_api import experiment_of
from tests.cloud.test_submit import SA, _executor, _tasks, _vertex
from tlp.pipelines import cli

TENSORBOARD = "projects/tlp-test/locations/us-central1/tensorboards/4242"


def test_submit_adds_the_run_to_its_experiment_and_streams_both_training_steps_to_tensorboard(standin, capsys):
    code = cli.main(["submit", *_vertex(standin), "--service-account", SA, "--experiment", "cats-weekly",
                     "--tensorboard", TENSORBOARD])
    out = capsys.readouterr().out
    assert code == 0, out
    assert not standin.unanswered(), standin.dump()

    [experiment] = standin.find("POST", r"/metadataStores/default/contexts$")
    assert experiment.query["contextId"] == "cats-weekly" and experiment.body["schemaTitle"] == "system.Experiment"
    [job_name] = standin.pipeline_jobs
    [link] = standin.find("POST", r"/contexts/cats-weekly:addContextChildren$")
    assert link.body["childContexts"] == [f"{job_name.split('/pipelineJobs/')[0]}/metadataStores/default/contexts/"
                                          f"{job_name.rsplit('/', 1)[-1]}"]
    assert experiment_of(standin, job_name)["displayName"] == "cats-weekly"
    assert "experiment: cats-weekly" in out

    spec = standin.find("POST", r"/pipelineJobs$")[0].body["pipelineSpec"]
    for step in ("feature-extraction", "fine-tuning"):
        # Only a custom job can write to a Vertex AI TensorBoard: each training step runs as one.
        assert "google-cloud-pipeline-components" in _executor(spec, step)["container"]["image"]
        component = spec["components"][_tasks(spec)[step]["componentRef"]["name"]]
        inputs = component["inputDefinitions"]["parameters"]
        assert inputs["tensorboard"]["defaultValue"] == TENSORBOARD
        assert inputs["service_account"]["defaultValue"] == SA
        [pool] = inputs["worker_pool_specs"]["defaultValue"]
        assert pool["container_spec"]["image_uri"] == "tlp/tlp-train:0.1.0"
        # Vertex AI sets AIP_TENSORBOARD_LOG_DIR below it, one directory per run and step.
        where = _tasks(spec)[step]["inputs"]["parameters"]["base_output_directory"]["runtimeValue"]["constant"]
        assert where == f"{{{{$.pipeline_root}}}}/{{{{$.pipeline_job_uuid}}}}/{step}"
    assert "tensorboard" not in _executor(spec, "evaluation")["container"].get("args", [])


def test_the_default_experiment_is_the_pipeline_name(standin, capsys):
    assert cli.main(["submit", *_vertex(standin), "--service-account", SA]) == 0, capsys.readouterr()
    [experiment] = standin.find("POST", r"/metadataStores/default/contexts$")
    assert experiment.query["contextId"] == "transfer-learning"
    assert experiment_of(standin, next(iter(standin.pipeline_jobs)))["name"].endswith("/contexts/transfer-learning")


@pytest.mark.parametrize("extra, words", [
    (["--experiment", "Cats_Weekly"], "--experiment 'Cats_Weekly' is not a Vertex AI experiment name"),
    (["--tensorboard", "tensorboards/4242"], "is not a TensorBoard resource name"),
    (["--tensorboard", "projects/tlp-test/locations/europe-west4/tensorboards/1"],
     "is in europe-west4, the run in us-central1"),
    (["--tensorboard", TENSORBOARD, "--no-service-account"], "--tensorboard needs --service-account"),
])
def test_bad_tracking_settings_stop_before_any_request(standin, capsys, extra, words):
    account = [] if "--no-service-account" in extra else ["--service-account", SA]
    extra = [item for item in extra if item != "--no-service-account"]
    assert cli.main(["submit", *_vertex(standin), *account, *extra]) == 2
    assert words in capsys.readouterr().err
    assert not standin.find("POST", r"/pipelineJobs$") and not standin.find("POST", r"/contexts$")
