"""``tlp deploy``: a registered version onto a Vertex AI endpoint (the runner side).

Reads what the environment knows (default project and region, credentials), turns the options
into a ``vertex://`` registry URI and hands a ``DeploySpec`` to ``components/lib/vertex_deploy.py``,
which does the work (and which the pipeline's deploy step calls too).
"""

from __future__ import annotations

from dataclasses import dataclass

from tlp.components.lib.specs import ConfigError, VertexUri, parse_vertex_uri
from tlp.components.lib.vertex_deploy import DEFAULT_MACHINE_TYPE, Deployed, DeploySpec, deploy_version
from tlp.pipelines import environment
from tlp.pipelines.checks import accelerator_types
from tlp.pipelines.environment import check_credentials

__all__ = ["DEFAULT_MACHINE_TYPE", "DeployOptions", "deploy", "registry_uri"]


@dataclass(frozen=True)
class DeployOptions:
    model: str
    endpoint: str
    registry: str = ""
    machine_type: str = DEFAULT_MACHINE_TYPE
    min_replicas: int = 1
    max_replicas: int = 1
    accelerator: str = ""
    gpus: int = 0
    traffic: int = 100
    promote_traffic: bool = False
    project: str = ""
    region: str = ""
    api_endpoint: str = ""
    service_account: str = ""
    network: str = ""


def registry_uri(options: DeployOptions) -> str:
    """``--registry`` as given, else ``vertex://PROJECT/REGION`` from the options or the environment;
    ``--api-endpoint`` is added as the URI's ``api_endpoint`` option."""
    registry = options.registry
    if registry and not registry.startswith("vertex://"):
        raise ConfigError(
            f"tlp deploy needs the Vertex AI Model Registry (--registry vertex://PROJECT/REGION); {registry} is an "
            "MLflow registry, whose models you serve with `tlp serve NAME@champion --registry "
            f"{registry}` (or the tlp-serve image on your own machines)."
        )
    if registry:
        location = parse_vertex_uri(registry)
    else:
        project = environment.google_cloud_project(options.project)
        region = environment.google_cloud_region(options.region)
        if not project or not region:
            raise ConfigError(
                "tlp deploy needs the Vertex AI Model Registry: pass --registry vertex://PROJECT/REGION (or --project "
                "and --region). A model in the local MLflow registry is served with `tlp serve NAME@champion`."
            )
        location = parse_vertex_uri(f"vertex://{project}/{region}")
    for flag, value, given in (("--project", options.project, location.project),
                               ("--region", options.region, location.region)):
        if value and value != given:
            raise ConfigError(f"{flag} {value} contradicts --registry {registry}; give one of them.")
    extra = {"api_endpoint": options.api_endpoint} if options.api_endpoint else {}
    return str(VertexUri(location.project, location.region, "", {**location.options, **extra}))


def deploy(options: DeployOptions, echo=print) -> Deployed:

    if options.network and not options.network.startswith("projects/"):
        raise ConfigError(f"--network {options.network!r} must be projects/NUMBER/global/networks/NAME.")
    spec = DeploySpec(
        model=options.model, registry=registry_uri(options), endpoint=options.endpoint,
        machine_type=options.machine_type, min_replicas=options.min_replicas, max_replicas=options.max_replicas,
        accelerator=options.accelerator, gpus=options.gpus, traffic=options.traffic,
        promote_traffic=options.promote_traffic, service_account=options.service_account, network=options.network,
    ).check()
    if spec.accelerator:

        if spec.accelerator not in accelerator_types():
            raise ConfigError(f"--accelerator {spec.accelerator!r} is not a Vertex AI accelerator type, e.g. "
                              "NVIDIA_TESLA_T4 or NVIDIA_L4.")
    check_credentials()
    return deploy_version(spec, echo)
