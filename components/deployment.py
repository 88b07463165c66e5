"""Component 6 (optional): deploy a new champion to a Vertex AI endpoint (TFX Pusher's role).

The pipeline runs it only when registration made a new champion; see ``add_deploy_step``.
"""

from typing import NamedTuple

from kfp import dsl

from tlp.components.container_images import image_reference


@dsl.component(base_image=image_reference(kind="light"), install_kfp_package=False)
def deployment(
    registry: str,
    model_name: str,
    version: str,
    endpoint: str,
    machine_type: str = "n1-standard-2",
    min_replicas: int = 1,
    max_replicas: int = 1,
    accelerator: str = "",
    gpus: int = 0,
    traffic: int = 100,
    service_account: str = "",
    network: str = "",
) -> NamedTuple("DeploymentOutputs", [("endpoint", str), ("deployed_model_id", str), ("traffic_split", str)]):
    """Deploys a registered version to a Vertex AI endpoint (created if missing) and, once it is
    healthy, undeploys the version of the same model it replaces.

    Args:
        registry: The registry the version is in: vertex://PROJECT/REGION[?api_endpoint=...].
        model_name: The registered model.
        version: The version to deploy (registration's new champion).
        endpoint: The endpoint's display name.
        machine_type: Serving machine type.
        min_replicas: Fewest serving machines.
        max_replicas: Most serving machines (autoscaled).
        accelerator: GPU type (a Vertex AI AcceleratorType), or empty for none.
        gpus: GPUs per machine (1 when an accelerator is given and this is 0).
        traffic: The version's share of the endpoint's traffic in percent (less than 100: canary).
        service_account: Service account the serving container runs as.
        network: VPC network for a private endpoint (projects/NUMBER/global/networks/NAME).

    Returns:
        The endpoint's resource name, the new deployed model's ID and the traffic split (JSON).
    """
    import json
    from collections import namedtuple

    from tlp.components.lib.vertex_deploy import DeploySpec, deploy_version

    deployed = deploy_version(DeploySpec(
        model=f"{model_name}/{version}", registry=registry, endpoint=endpoint, machine_type=machine_type,
        min_replicas=min_replicas, max_replicas=max_replicas, accelerator=accelerator, gpus=gpus, traffic=traffic,
        service_account=service_account, network=network,
    ))
    outputs = namedtuple("DeploymentOutputs", ["endpoint", "deployed_model_id", "traffic_split"])
    return outputs(deployed.endpoint, deployed.deployed_model_id, json.dumps(deployed.traffic_split, sort_keys=True))


def add_deploy_step(registered, registry, deploy_op=deployment, endpoint: str = "", **settings):
    """Adds the deploy step after ``registered`` (the registration task), run only when the
    registration made its version the champion (TFX Pusher semantics). Call it inside the
    pipeline function, after the registration task, when a deploy endpoint was asked for.
    ``registry`` is the pipeline's registry parameter; ``settings`` are ``deployment``'s other
    parameters (machine_type, traffic, ...)."""
    with dsl.If(registered.outputs["champion"] == True, name="new-champion"):  # noqa: E712
        task = deploy_op(
            registry=registry, model_name=registered.outputs["name"], version=registered.outputs["version"],
            endpoint=endpoint, **settings,
        )
        task.set_display_name("deployment")
    return task
