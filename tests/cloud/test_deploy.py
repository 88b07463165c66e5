"""``tlp deploy`` and the pipeline's deploy step, through the real aiplatform client against the
stand-in: the endpoint is created, deployModel carries the traffic split, its long-running
operation is polled until done, and the replaced version is undeployed only after that."""

import dataclasses
import json
import re
import typing

import pytest

from tlp.components.lib.options import group_from_values
from tlp.components.lib.settings import DeployOptions
from tlp.components.lib.specs import ConfigError, ServiceError
from tlp.components.lib.vertex_deploy import deploy_version

MODEL_ID = "4242"


def seed_model(standin, name="cats", versions=2, champion="2"):
    """A registered model with ``versions`` versions, as registration leaves it."""
    parent = f"projects/{standin.project_number}/locations/us-central1/models/{MODEL_ID}"
    entries = {}
    for number in range(1, versions + 1):
        aliases = ["default", "champion"] if str(number) == champion else []
        entries[str(number)] = {
            "name": parent, "displayName": name, "versionId": str(number), "versionAliases": aliases,
            "artifactUri": f"gs://tlp-staging/{name}/{number}", "createTime": "2026-11-01T00:00:00Z",
            "updateTime": "2026-11-01T00:00:00Z", "containerSpec": {"imageUri": "us-docker.pkg.dev/p/tlp/tlp-serve:1"},
            "supportedDeploymentResourcesTypes": ["DEDICATED_RESOURCES", "SHARED_RESOURCES"],
        }
    standin.models[MODEL_ID] = {"versions": entries}
    return parent


def _registry(standin):
    return f"vertex://tlp-test/us-central1?api_endpoint={standin.url}"


def _deploy(standin, model, **settings):
    """Deploys as ``tlp deploy`` does: the options built (and checked) from their declarations."""
    return deploy_version(model, _registry(standin), "cats-endpoint", group_from_values(DeployOptions, settings),
                          echo=lambda *a, **k: None)


def _index(standin, method, pattern):
    return [i for i, r in enumerate(standin.requests) if r.method == method and re.search(pattern, r.path)]


def test_first_deploy_creates_the_endpoint_and_polls_the_deployment(standin):
    parent = seed_model(standin)
    result = _deploy(standin, "cats@champion", serving_machine_type="n1-standard-4", min_replicas=1, max_replicas=3)

    [create] = standin.find("POST", r"/endpoints$")
    assert create.body["displayName"] == "cats-endpoint"
    [deploy] = standin.find("POST", r":deployModel$")
    deployed = deploy.body["deployedModel"]
    assert deployed["model"] == f"{parent}@2"
    assert deployed["dedicatedResources"]["machineSpec"] == {"machineType": "n1-standard-4"}
    assert (deployed["dedicatedResources"]["minReplicaCount"], deployed["dedicatedResources"]["maxReplicaCount"]) == \
        (1, 3)
    assert deploy.body["trafficSplit"] == {"0": 100}
    # The deployment's long-running operation was polled until done (it was still running at first).
    polls = standin.find("GET", r"/endpoints/[^/]+/operations/")
    assert len(polls) >= 2 and {p.status for p in polls} == {200}
    assert not standin.find("POST", r":undeployModel$")
    [endpoint] = standin.endpoints.values()
    assert result.endpoint == endpoint["name"] and result.endpoint_created
    assert endpoint["trafficSplit"] == {result.deployed_model_id: 100}
    assert [d["modelVersionId"] for d in endpoint["deployedModels"]] == ["2"]
    assert not standin.unanswered()


def test_a_new_champion_replaces_the_old_version_only_after_it_is_healthy(standin):
    seed_model(standin)
    old = _deploy(standin, "cats/1")
    new = _deploy(standin, "cats@champion")

    deploys = standin.find("POST", r":deployModel$")
    assert len(deploys) == 2
    # All traffic to the new one (the split replaces the endpoint's: the old version is left at 0%).
    assert deploys[1].body["trafficSplit"] == {"0": 100}
    [undeploy] = standin.find("POST", r":undeployModel$")
    assert undeploy.body["deployedModelId"] == old.deployed_model_id
    # Order: the deployment's operation was polled to its end before the old version was undeployed.
    deploy_at = standin.requests.index(deploys[1])
    undeploy_at = standin.requests.index(undeploy)
    polls_between = [i for i in _index(standin, "GET", r"/operations/") if deploy_at < i < undeploy_at]
    assert polls_between, "the old version was undeployed without waiting for the new deployment"
    assert new.undeployed == [old.deployed_model_id]
    [endpoint] = standin.endpoints.values()
    assert endpoint["trafficSplit"] == {new.deployed_model_id: 100}
    assert [d["modelVersionId"] for d in endpoint["deployedModels"]] == ["2"]


def test_canary_keeps_the_current_version_until_promoted(standin):
    seed_model(standin)
    old = _deploy(standin, "cats/1")
    canary = _deploy(standin, "cats@champion", traffic=10)
    assert standin.find("POST", r":deployModel$")[1].body["trafficSplit"] == {"0": 10, old.deployed_model_id: 90}
    assert not standin.find("POST", r":undeployModel$")
    assert canary.kept == [f"{old.deployed_model_id} (cats-v1): still serves 90% (canary)"]

    promoted = _deploy(standin, "cats@champion", promote_traffic=True)
    [patch] = standin.find("PATCH", r"/endpoints/[^/:]+$")
    assert patch.body["trafficSplit"] == {canary.deployed_model_id: 100, old.deployed_model_id: 0}
    [undeploy] = standin.find("POST", r":undeployModel$")
    assert undeploy.body["deployedModelId"] == old.deployed_model_id
    assert standin.requests.index(patch) < standin.requests.index(undeploy)
    assert promoted.traffic_split == {canary.deployed_model_id: 100}
    assert len(standin.find("POST", r":deployModel$")) == 2  # promoting deploys nothing new


def test_a_failed_deployment_undeploys_nothing(standin):
    from google.api_core.exceptions import GoogleAPICallError

    seed_model(standin)
    old = _deploy(standin, "cats/1")
    standin.deploy_error = "Model server never became ready: the container exited"
    with pytest.raises(GoogleAPICallError, match="never became ready"):
        _deploy(standin, "cats@champion")
    assert not standin.find("POST", r":undeployModel$")
    [endpoint] = standin.endpoints.values()
    assert endpoint["trafficSplit"] == {old.deployed_model_id: 100}


def test_a_deployment_the_endpoint_does_not_list_is_a_service_error(standin, monkeypatch):
    """Vertex AI said done but the endpoint does not list the new deployed model (here: the
    listing is made to show none of this registered model's): a ServiceError, nothing undeployed."""
    from tlp.components.lib import vertex_deploy

    seed_model(standin)
    _deploy(standin, "cats/1")
    monkeypatch.setattr(vertex_deploy, "_same_model", lambda deployed, model: False)
    with pytest.raises(ServiceError, match="finished but the endpoint does not list it"):
        _deploy(standin, "cats@champion")
    assert not standin.find("POST", r":undeployModel$")


def test_tlp_deploy_says_so_in_one_sentence_when_the_endpoint_does_not_list_it(standin, capsys, monkeypatch):
    from tlp.components.lib import vertex_deploy
    from tlp.pipelines.cli import main

    seed_model(standin)
    monkeypatch.setattr(vertex_deploy, "_same_model", lambda deployed, model: False)
    code = main(["deploy", "cats@champion", "--registry", "vertex://tlp-test/us-central1", "--api-endpoint",
                 standin.url, "--endpoint", "cats-endpoint"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "finished but the endpoint does not list it" in err and "Traceback" not in err
    assert not standin.find("POST", r":undeployModel$")


def test_deploying_the_same_version_again_changes_nothing(standin):
    seed_model(standin)
    first = _deploy(standin, "cats@champion")
    again = _deploy(standin, "cats@champion")
    assert len(standin.find("POST", r":deployModel$")) == 1
    assert not again.changed and again.deployed_model_id == first.deployed_model_id


def test_promote_needs_the_version_deployed(standin):
    seed_model(standin)
    _deploy(standin, "cats/1")
    with pytest.raises(ConfigError, match="is not deployed on endpoint 'cats-endpoint'; deploy it first"):
        _deploy(standin, "cats@champion", promote_traffic=True)


def test_tlp_deploy_command(standin, capsys):
    from tlp.pipelines.cli import main

    seed_model(standin)
    code = main(["deploy", "cats@champion", "--registry", "vertex://tlp-test/us-central1", "--api-endpoint",
                 standin.url, "--endpoint", "cats-endpoint", "--machine-type", "n1-standard-8", "--max-replicas", "2"])
    assert code == 0
    out = capsys.readouterr().out
    assert "creating endpoint 'cats-endpoint'" in out and "console: https://console.cloud.google.com" in out
    [deploy] = standin.find("POST", r":deployModel$")
    assert deploy.body["deployedModel"]["dedicatedResources"]["maxReplicaCount"] == 2


@pytest.mark.parametrize("registry", ["sqlite:///tmp/registry.db", "http://mlflow:5000"])
def test_an_mlflow_registry_points_at_tlp_serve(registry, capsys):
    from tlp.pipelines.cli import main

    assert main(["deploy", "sample@champion", "--registry", registry, "--endpoint", "e"]) == 2
    err = capsys.readouterr().err
    assert "vertex://PROJECT/REGION" in err and "tlp serve NAME@champion" in err


def test_the_deploy_component_deploys_the_new_champion(standin):
    from tlp.components.deployment import deployment

    seed_model(standin)
    # Numbers cross kfp as floats: the step coerces them back to the declared types.
    outputs = deployment.python_func(registry=_registry(standin), model_name="cats", version="2",
                                     endpoint="cats-endpoint", options={"traffic": 100.0, "max_replicas": 2.0})
    [deploy] = standin.find("POST", r":deployModel$")
    resources = deploy.body["deployedModel"]["dedicatedResources"]
    assert resources["machineSpec"] == {"machineType": DeployOptions().serving_machine_type}
    assert resources["maxReplicaCount"] == 2
    assert json.loads(outputs.traffic_split) == {outputs.deployed_model_id: 100}
    assert outputs.endpoint in standin.endpoints


def test_the_deploy_step_runs_only_for_a_new_champion(tmp_path):
    """In a compiled pipeline the deploy step sits inside the condition on registration's
    ``champion`` output."""
    import yaml
    from kfp import compiler, dsl

    from tlp.components.deployment import add_deploy_step, deployment
    from tlp.components.lib.settings import CloudOptions

    @dsl.component
    def register(registry: str) -> typing.NamedTuple(
            "Outputs", [("registry", str), ("name", str), ("version", str), ("champion", bool), ("reason", str)]):
        return (registry, "cats", "2", True, "")

    @dsl.pipeline(name="deploy-after-registration")
    def pipeline(registry: str = "vertex://p/r"):
        registered = register(registry=registry)
        add_deploy_step(registered, registry, deployment, DeployOptions(deploy_endpoint="cats-endpoint", traffic=20),
                        CloudOptions(service_account="sa@p.iam.gserviceaccount.com"))

    path = str(tmp_path / "pipeline.yaml")
    compiler.Compiler().compile(pipeline, path)
    with open(path) as handle:
        spec = yaml.safe_load(handle)
    tasks = spec["root"]["dag"]["tasks"]
    [condition] = [name for name in tasks if name.startswith("condition")]
    assert tasks[condition]["triggerPolicy"]["condition"] == \
        "inputs.parameter_values['pipelinechannel--register-champion'] == true"
    inner = spec["components"][tasks[condition]["componentRef"]["name"]]["dag"]["tasks"]
    assert list(inner) == ["deployment"]
    assert inner["deployment"]["taskInfo"]["name"] == "deployment"
    parameters = inner["deployment"]["inputs"]["parameters"]
    assert parameters["version"]["componentInputParameter"] == "pipelinechannel--register-version"
    assert parameters["endpoint"]["runtimeValue"]["constant"] == "cats-endpoint"
    assert parameters["service_account"]["runtimeValue"]["constant"] == "sa@p.iam.gserviceaccount.com"
    # Every deploy option reaches the step, each with its declared default unless set.
    options = parameters["options"]["runtimeValue"]["constant"]
    assert options == {**dataclasses.asdict(DeployOptions()), "deploy_endpoint": "cats-endpoint", "traffic": 20}
    assert "deployment" not in tasks  # never outside the condition
