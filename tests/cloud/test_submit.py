"""`tlp submit` and `tlp schedule` drive the real google-cloud-aiplatform client (and kfp.Client)
against the loopback stand-in; the tests assert the requests that would reach Google."""

import pytest

from tlp.pipelines import cli

SA = "trainer@tlp-test.iam.gserviceaccount.com"
STEPS = {"data-prep", "feature-extraction", "fine-tuning", "evaluation", "registration"}
# Small settings keep the early layer check (it builds the base) quick.
SMALL = ["--data", "sample:40", "--weights", "none", "--alpha", "0.35", "--image-size", "96", "--fine-tune-at", "50"]


def _vertex(standin, *extra):
    return ["--project", "tlp-test", "--region", "us-central1", "--pipeline-root", "gs://tlp-bucket/runs",
            "--api-endpoint", standin.url, *SMALL, *extra]


def _tasks(spec: dict) -> dict:
    """Every task of the compiled pipeline, the ones inside the gate's condition included."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def _executor(spec: dict, task_name: str) -> dict:
    component = _tasks(spec)[task_name]["componentRef"]["name"]
    executor = spec["components"][component]["executorLabel"]
    return spec["deploymentSpec"]["executors"][executor]


def test_submit_sends_the_pipeline_with_every_setting_and_waits(standin, capsys):
    code = cli.main(["submit", *_vertex(standin), "--service-account", SA, "--labels", "team=vision,env=test",
                     "--no-cache", "--network", "projects/123456789012/global/networks/vpc", "--epochs", "3",
                     "--gpus", "2", "--accelerator", "NVIDIA_L4", "--image-repo", "us-docker.pkg.dev/tlp-test/tlp",
                     "--image-tag", "1.2.3", "--display-name", "nightly", "--wait"])
    out = capsys.readouterr().out
    assert code == 0, out

    [create] = standin.find("POST", r"/pipelineJobs$")
    job = create.body
    spec = job["pipelineSpec"]
    names = {task.get("taskInfo", {}).get("name") for task in _tasks(spec).values()}
    assert STEPS <= names
    assert job["displayName"] == "nightly"
    assert job["serviceAccount"] == SA and job["network"] == "projects/123456789012/global/networks/vpc"
    assert job["labels"]["team"] == "vision" and job["labels"]["env"] == "test"
    runtime = job["runtimeConfig"]
    assert runtime["gcsOutputDirectory"] == "gs://tlp-bucket/runs"
    values = runtime["parameterValues"]
    assert values["data"] == "sample:40" and values["epochs"] == 3 and values["alpha"] == 0.35
    # Each version is served from the run's image repository and tag (see the upload tests below).
    assert values["registry"] == (f"vertex://tlp-test/us-central1?api_endpoint={standin.url}"
                                  "&serving_image=us-docker.pkg.dev/tlp-test/tlp/tlp-serve:1.2.3")
    assert all(task.get("cachingOptions", {}).get("enableCache") is not True for task in _tasks(spec).values())
    # The GPUs sit on every step that runs a model over the photos, in the training image (issue 29).
    for step in ("feature-extraction", "fine-tuning", "evaluation", "registration"):
        container = _executor(spec, step)["container"]
        assert container["resources"]["accelerator"]["type"] == "NVIDIA_L4", step
        assert int(container["resources"]["accelerator"]["count"]) == 2, step
        assert container["image"] == "us-docker.pkg.dev/tlp-test/tlp/tlp-train:1.2.3", step
    for step in ("data-prep", "data-checks"):
        assert "accelerator" not in _executor(spec, step)["container"].get("resources", {}), step

    resource = standin.pipeline_jobs[next(iter(standin.pipeline_jobs))]["name"]
    assert f"submitted {resource}" in out
    assert "console.cloud.google.com/vertex-ai/pipelines/locations/us-central1/runs/" in out
    assert "PIPELINE_STATE_SUCCEEDED" in out


def test_replicas_run_fine_tuning_as_a_custom_job_with_k_machines(standin, capsys):
    code = cli.main(["submit", *_vertex(standin), "--service-account", SA, "--replicas", "3", "--gpus", "4",
                     "--accelerator", "NVIDIA_TESLA_T4", "--machine-type", "n1-standard-16"])
    assert code == 0, capsys.readouterr()
    spec = standin.find("POST", r"/pipelineJobs$")[0].body["pipelineSpec"]
    # Every model pass runs on the machines fine-tuning has (issue 29): feature extraction and
    # evaluation divide their photos over all 3; registration registers once, on one of them.
    for step, machines in (("feature-extraction", [1, 2]), ("fine-tuning", [1, 2]), ("evaluation", [1, 2]),
                           ("registration", [1])):
        launcher = _executor(spec, step)["container"]
        assert "google-cloud-pipeline-components" in launcher["image"], step  # the custom job launcher
        component = _tasks(spec)[step]["componentRef"]["name"]
        inputs = spec["components"][component]["inputDefinitions"]["parameters"]
        pools = inputs["worker_pool_specs"]["defaultValue"]
        assert [int(pool["replica_count"]) for pool in pools] == machines, step  # chief + 2 workers = 3 machines
        for pool in pools:
            machine = pool["machine_spec"]
            assert machine == {"machine_type": "n1-standard-16", "accelerator_type": "NVIDIA_TESLA_T4",
                               "accelerator_count": 4}, step
            assert pool["container_spec"]["image_uri"] == "tlp/tlp-train:0.1.0", step
        assert inputs["service_account"]["defaultValue"] == SA
        assert inputs["restart_job_on_worker_restart"]["defaultValue"] is True
    assert "accelerator" not in _executor(spec, "data-prep")["container"].get("resources", {})


def test_a_failed_run_exits_1_naming_its_state(standin, capsys):
    standin.job_final_state = "PIPELINE_STATE_FAILED"
    code = cli.main(["submit", *_vertex(standin), "--service-account", SA, "--wait"])
    captured = capsys.readouterr()
    assert code == 1
    assert "ended PIPELINE_STATE_FAILED" in captured.err


def test_schedule_create_list_pause_resume_delete(standin, capsys):
    target = ["--project", "tlp-test", "--region", "us-central1", "--api-endpoint", standin.url]
    code = cli.main(["schedule", "create", *_vertex(standin), "--service-account", SA,
                     "--cron", "TZ=Europe/Berlin 0 3 * * 1", "--name", "weekly-retrain", "--max-concurrent", "2",
                     "--max-runs", "10", "--start", "2027-01-01T00:00:00Z", "--end", "2027-12-31T00:00:00+00:00"])
    out = capsys.readouterr().out
    assert code == 0, out
    [create] = standin.find("POST", r"/schedules$")
    body = create.body
    assert body["displayName"] == "weekly-retrain" and body["cron"] == "TZ=Europe/Berlin 0 3 * * 1"
    assert int(body["maxConcurrentRunCount"]) == 2 and int(body["maxRunCount"]) == 10
    assert body["startTime"].startswith("2027-01-01T00:00:00") and body["endTime"].startswith("2027-12-31")
    job = body["createPipelineJobRequest"]["pipelineJob"]
    assert job["serviceAccount"] == SA and STEPS <= {t["taskInfo"]["name"] for t in _tasks(job["pipelineSpec"])
                                                     .values()}
    assert "next runs" in out and "03:00+01:00" in out  # Mondays at 03:00 Berlin time (winter)

    assert cli.main(["schedule", "list", *target]) == 0
    listed = capsys.readouterr().out
    assert "weekly-retrain" in listed and "ACTIVE" in listed
    assert cli.main(["schedule", "pause", "weekly-retrain", *target]) == 0
    assert standin.find("POST", r"/schedules/[^/]+:pause$")
    assert cli.main(["schedule", "list", *target]) == 0
    assert "PAUSED" in capsys.readouterr().out
    assert cli.main(["schedule", "resume", "weekly-retrain", *target]) == 0
    assert standin.find("POST", r"/schedules/[^/]+:resume$")
    assert cli.main(["schedule", "delete", "weekly-retrain", *target]) == 0
    assert standin.find("DELETE", r"/schedules/[^/]+$")
    assert cli.main(["schedule", "list", *target]) == 0
    assert "no schedules" in capsys.readouterr().out
    assert cli.main(["schedule", "pause", "weekly-retrain", *target]) == 2
    assert "no schedule called 'weekly-retrain'" in capsys.readouterr().err


def _uploaded_serving_image(standin, registry: str, tmp_path) -> str:
    """Registers a small model directory into ``registry`` (a submitted run's parameter) the way
    the run's registration step would, and returns the serving image of the upload request that
    reached the stand-in. The staging bucket stands in for the run's model already being in GCS."""
    from tlp.components.lib.registry import open_registry

    standin.add_bucket("tlp-staging")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "saved_model.pb").write_bytes(b"a model")
    open_registry(f"{registry}&staging_bucket=gs://tlp-staging").register(
        str(model_dir), "cats", metrics={"test_accuracy": 0.9}, params={}, tags={})
    [upload] = standin.find("POST", r"/models:upload$")
    return upload.body["model"]["containerSpec"]["imageUri"]


def test_a_submitted_run_registers_the_serving_image_of_its_image_repo(standin, capsys, tmp_path):
    from tlp.components.lib.version import project_version

    code = cli.main(["submit", *_vertex(standin), "--image-repo", "us-docker.pkg.dev/tlp-test/tlp"])
    out = capsys.readouterr().out
    assert code == 0, out
    [create] = standin.find("POST", r"/pipelineJobs$")
    registry = create.body["runtimeConfig"]["parameterValues"]["registry"]
    assert registry == f"vertex://tlp-test/us-central1?api_endpoint={standin.url}&image_repo=us-docker.pkg.dev/tlp-test/tlp"
    assert _uploaded_serving_image(standin, registry, tmp_path) == (
        f"us-docker.pkg.dev/tlp-test/tlp/tlp-serve:{project_version()}")
    assert f"serving image -> us-docker.pkg.dev/tlp-test/tlp/tlp-serve:{project_version()}" in out


def test_a_schedule_registers_the_serving_image_of_its_image_repo_and_tag(standin, capsys, tmp_path):
    code = cli.main(["schedule", "create", *_vertex(standin), "--cron", "0 3 * * 1", "--name", "weekly",
                     "--image-repo", "europe-docker.pkg.dev/tlp-test/images", "--image-tag", "2.0.1"])
    assert code == 0, capsys.readouterr().out
    [create] = standin.find("POST", r"/schedules$")
    values = create.body["createPipelineJobRequest"]["pipelineJob"]["runtimeConfig"]["parameterValues"]
    assert _uploaded_serving_image(standin, values["registry"], tmp_path) == (
        "europe-docker.pkg.dev/tlp-test/images/tlp-serve:2.0.1")


def test_a_registry_that_names_its_serving_image_keeps_it(standin, capsys, tmp_path):
    named = f"vertex://tlp-test/us-central1?api_endpoint={standin.url}&serving_image=gcr.io/tlp-test/server:7"
    code = cli.main(["submit", *_vertex(standin), "--image-repo", "us-docker.pkg.dev/tlp-test/tlp",
                     "--registry", named])
    assert code == 0, capsys.readouterr().out
    [create] = standin.find("POST", r"/pipelineJobs$")
    registry = create.body["runtimeConfig"]["parameterValues"]["registry"]
    assert _uploaded_serving_image(standin, registry, tmp_path) == "gcr.io/tlp-test/server:7"


@pytest.mark.parametrize(
    "argv, says",
    [
        (["submit", "--region", "us-central1", "--pipeline-root", "gs://b/r"], "no Google Cloud project"),
        (["submit", "--project", "tlp-test", "--pipeline-root", "gs://b/r"], "no region"),
        (["submit", "--project", "tlp-test", "--region", "us-central1", "--pipeline-root", "/tmp/runs"],
         "must be a Cloud Storage URI"),
        (["submit", "--project", "tlp-test", "--region", "us-central1", "--pipeline-root", "gs://b/r",
          "--replicas", "2", "--devices", "gpu"], "gives the machines none"),
        (["submit", "--project", "tlp-test", "--region", "us-central1", "--pipeline-root", "gs://b/r",
          "--accelerator", "NVIDIA_T4"], "not a Vertex AI accelerator type; use one of NVIDIA_TESLA_T4"),
        (["submit", "--project", "tlp-test", "--region", "us-central1", "--pipeline-root", "gs://b/r",
          "--gpus", "2"], "needs --accelerator"),
        (["schedule", "create", "--project", "tlp-test", "--region", "us-central1", "--pipeline-root", "gs://b/r",
          "--cron", "0 3 * *", "--name", "n"], "not a cron schedule of five fields"),
        (["schedule", "create", "--project", "tlp-test", "--region", "us-central1", "--pipeline-root", "gs://b/r",
          "--cron", "TZ=Mars/Olympus 0 3 * * *", "--name", "n"], "not a time zone"),
        (["schedule", "create", "--project", "tlp-test", "--region", "us-central1", "--pipeline-root", "gs://b/r",
          "--cron", "0 3 * * *", "--name", "n", "--start", "2027-02-01", "--end", "2027-01-01"], "is not after"),
        (["submit", "--project", "tlp-test", "--region", "us-central1", "--pipeline-root", "gs://b/r",
          "--data", "folder:/tmp"], "cannot see"),
        (["submit", "--project", "tlp-test", "--region", "us-central1", "--pipeline-root", "gs://b/r",
          "--registry", "sqlite:///r.db"], "cannot reach"),
        (["submit", "--kfp-host", "http://kfp:8080"], "needs --registry"),
    ],
)
def test_mistakes_are_caught_before_any_request(standin, capsys, monkeypatch, argv, says):
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT")  # the project must come from --project here
    if "--kfp-host" not in argv:  # should a check slip, the request still goes to the stand-in
        argv = [*argv, "--api-endpoint", standin.url]
    standin.requests.clear()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert standin.requests == []


def test_no_credentials_says_how_to_log_in(standin, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    monkeypatch.setenv("HOME", str(tmp_path))  # no gcloud application-default credentials either
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # and not on a Google Cloud machine
    assert cli.main(["submit", *_vertex(standin)]) == 2
    err = capsys.readouterr().err
    assert "no Google Cloud credentials found" in err and "gcloud auth application-default login" in err
    assert standin.requests == []


def test_kfp_host_submit_and_recurring_run(standin, capsys):
    common = ["--kfp-host", standin.url, *SMALL, "--registry", "http://mlflow.internal:5000"]
    assert cli.main(["submit", *common, "--wait"]) == 0, capsys.readouterr()
    [run] = standin.kfp_runs.values()
    spec = run["pipeline_spec"]
    assert STEPS <= {t["taskInfo"]["name"] for t in _tasks(spec).values()}
    assert run["runtime_config"]["parameters"]["registry"] == "http://mlflow.internal:5000"
    assert "SUCCEEDED" in capsys.readouterr().out

    assert cli.main(["schedule", "create", *common, "--cron", "30 2 * * *", "--name", "nightly",
                     "--max-concurrent", "1"]) == 0, capsys.readouterr()
    [recurring] = standin.kfp_recurring_runs.values()
    assert recurring["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * *"  # KFP's cron leads with seconds
    assert recurring["display_name"] == "nightly" and int(recurring["max_concurrency"]) == 1
    assert cli.main(["schedule", "create", *common, "--cron", "TZ=Europe/Berlin 30 2 * * *", "--name", "x"]) == 2
    assert "drop TZ=" in capsys.readouterr().err


def test_a_refused_request_ends_in_one_sentence(standin, capsys):
    argv = ["submit", *_vertex(standin), "--service-account", SA]
    argv[argv.index("tlp-test")] = "someone-else"  # the stand-in answers 403 for other projects
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    # (Above it, the SDK logs the bucket check it swallowed; tlp's own word is the last line.)
    assert err[-1].startswith("tlp: error: Google Cloud refused the request: 403"), err[-3:]
    assert sum(line.startswith("tlp: error:") for line in err) == 1


def test_deploy_endpoint_adds_a_deploy_step_only_behind_a_new_champion(standin, capsys):
    code = cli.main(["submit", *_vertex(standin), "--deploy-endpoint", "cats", "--traffic", "10"])
    assert code == 0, capsys.readouterr()
    [create] = standin.find("POST", r"/pipelineJobs$")
    spec = create.body["pipelineSpec"]
    tasks = _tasks(spec)
    arguments = tasks["deployment"]["inputs"]["parameters"]
    assert arguments["endpoint"]["runtimeValue"]["constant"] == "cats"
    chosen = arguments["options"]["runtimeValue"]["constant"]  # the declared deploy options, as one dict
    assert chosen["traffic"] == 10 and chosen["serving_machine_type"] == "n1-standard-2"

    def condition_around(task_name):
        """The condition task whose sub-DAG holds ``task_name``."""
        for task in tasks.values():
            inner = spec["components"][task["componentRef"]["name"]].get("dag", {}).get("tasks", {})
            if task_name in inner:
                return task

    champion = condition_around("deployment")
    assert champion["taskInfo"]["name"] == "new-champion"
    assert champion["triggerPolicy"]["condition"].endswith("registration-champion'] == true")
    gate = condition_around(next(name for name, task in tasks.items() if task is champion))
    assert gate["triggerPolicy"]["condition"].endswith("evaluation-Output'] == true")


def test_deploy_endpoint_needs_the_vertex_registry(standin, capsys):
    code = cli.main(["submit", *_vertex(standin), "--deploy-endpoint", "cats", "--registry", "http://mlflow:5000"])
    assert code == 2 and "deploys to a Vertex AI endpoint" in capsys.readouterr().err
    assert not standin.find("POST", r"/pipelineJobs$")


def test_data_prep_on_dataflow_takes_the_cloud_options_as_its_parameters(standin, capsys):
    code = cli.main(["submit", *_vertex(standin), "--service-account", SA,
                     "--network", "projects/123456789012/global/networks/vpc", "--image-repo",
                     "us-docker.pkg.dev/tlp-test/tlp", "--image-tag", "1.2.3", "--data-prep-runner", "dataflow",
                     "--dataflow-max-workers", "40", "--dataflow-machine-type", "n2-highcpu-16"])
    assert code == 0, capsys.readouterr().out
    [create] = standin.find("POST", r"/pipelineJobs$")
    values = create.body["runtimeConfig"]["parameterValues"]
    assert values["data_prep_runner"] == "dataflow"
    assert values["dataflow_max_workers"] == 40 and values["dataflow_machine_type"] == "n2-highcpu-16"
    assert values["dataflow_project"] == "tlp-test" and values["dataflow_region"] == "us-central1"
    assert values["dataflow_service_account"] == SA
    assert values["dataflow_network"] == "projects/123456789012/global/networks/vpc"
    assert values["dataflow_temp_location"] == "gs://tlp-bucket/runs/dataflow"
    assert values["dataflow_image"] == "us-docker.pkg.dev/tlp-test/tlp/tlp-dataflow:1.2.3"
    # They reach the data-prep step only.
    prep = _tasks(create.body["pipelineSpec"])["data-prep"]["inputs"]["parameters"]["options"]
    assert "dataflow_image" in str(prep)
