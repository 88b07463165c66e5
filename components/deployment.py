"""Component 6 (optional): deploy a new champion to a Vertex AI endpoint (TFX Pusher's role).

The pipeline runs it only when registration made a new champion; see ``add_deploy_step``. What
it deploys on (machines, replicas, GPUs, traffic) is the declared deploy options
(``settings.DeployOptions``), fixed when the pipeline is compiled and passed as one dict.
"""

import dataclasses
from typing import NamedTuple

from kfp import dsl

from tlp.components.container_images import image_reference
from tlp.components.lib.settings import CloudOptions, DeployOptions


@dsl.component(base_image=image_reference(kind="light"), install_kfp_package=False)
def deployment(
    registry: str,
    model_name: str,
    version: str,
    endpoint: str,
    options: dict,
    service_account: str = "",
    network: str = "",
# kfp reads several outputs from this call form of NamedTuple, which a type checker does not take
# as an annotation.
) -> NamedTuple(  # type: ignore[valid-type]  # kfp's NamedTuple outputs idiom
    "DeploymentOutputs", [("endpoint", str), ("deployed_model_id", str), ("traffic_split", str)],
):
    """Deploys a registered version to a Vertex AI endpoint (created if missing) and, once it is
    healthy, undeploys the version of the same model it replaces.

    Args:
        registry: The registry the version is in: vertex://PROJECT/REGION[?api_endpoint=...].
        model_name: The registered model.
        version: The version to deploy (registration's new champion).
        endpoint: The endpoint's display name.
        options: The deploy options (``settings.DeployOptions``) by name: serving machine type,
            replicas, GPUs, the version's share of the traffic; missing ones take their defaults.
        service_account: Service account the serving container runs as.
        network: VPC network for a private endpoint (projects/NUMBER/global/networks/NAME).

    Returns:
        The endpoint's resource name, the new deployed model's ID and the traffic split (JSON).
    """
    import json
    from collections import namedtuple

    from tlp.components.lib.options import group_from_values
    from tlp.components.lib.settings import CloudOptions, DeployOptions
    from tlp.components.lib.vertex_deploy import deploy_version

    # Checked again where it runs: numbers cross kfp as floats, and a hand-edited spec may be wrong.
    chosen = group_from_values(DeployOptions, options)
    deployed = deploy_version(f"{model_name}/{version}", registry, endpoint, chosen,
                              CloudOptions(service_account=service_account, network=network))
    DeploymentOutputs = namedtuple("DeploymentOutputs", ["endpoint", "deployed_model_id", "traffic_split"])
    split = json.dumps(deployed.traffic_split, sort_keys=True)
    return DeploymentOutputs(deployed.endpoint, deployed.deployed_model_id, split)


def add_deploy_step(registered, registry, deploy_op, deploy: DeployOptions, cloud: CloudOptions | None = None):
    """Adds the deploy step after ``registered`` (the registration task), run only when the
    registration made its version the champion (TFX Pusher semantics). Call it inside the
    pipeline function, after the registration task, when ``deploy.deploy_endpoint`` asks for
    one. ``registry`` is the registration's registry output; ``cloud`` gives the service
    account and network."""
    cloud = cloud or CloudOptions()
    with dsl.If(registered.outputs["champion"] == True, name="new-champion"):  # noqa: E712
        task = deploy_op(
            registry=registry, model_name=registered.outputs["name"], version=registered.outputs["version"],
            endpoint=deploy.deploy_endpoint, options=dataclasses.asdict(deploy),
            service_account=cloud.service_account, network=cloud.network,
        )
        task.set_display_name("deployment")
    return task
