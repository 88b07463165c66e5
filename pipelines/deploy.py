"""``tlp deploy``: a registered version onto a Vertex AI endpoint (the runner side).

Reads what the environment knows (default project and region, credentials), turns the options
into a ``vertex://`` registry URI and hands the declared deploy options (``settings.DeployOptions``,
with the service account and network of ``settings.CloudOptions``) to
``components/lib/vertex_deploy.py``, which does the work (and which the pipeline's deploy step
calls too).
"""

from __future__ import annotations

from tlp.components.lib.settings import CloudOptions, DeployOptions
from tlp.components.lib.specs import ConfigError, VertexUri, parse_vertex_uri
from tlp.components.lib.vertex_deploy import Deployed, check_request, deploy_version
from tlp.pipelines import environment
from tlp.pipelines.checks import accelerator_types
from tlp.pipelines.environment import check_credentials

__all__ = ["deploy", "registry_uri"]


def registry_uri(registry: str, cloud: CloudOptions) -> str:
    """``--registry`` as given, else ``vertex://PROJECT/REGION`` from the options or the environment;
    ``--api-endpoint`` is added as the URI's ``api_endpoint`` option."""
    if registry and not registry.startswith("vertex://"):
        raise ConfigError(
            f"tlp deploy needs the Vertex AI Model Registry (--registry vertex://PROJECT/REGION); {registry} is an "
            "MLflow registry, whose models you serve with `tlp serve NAME@champion --registry "
            f"{registry}` (or the tlp-serve image on your own machines)."
        )
    if registry:
        location = parse_vertex_uri(registry)
    else:
        project = environment.google_cloud_project(cloud.project)
        region = environment.google_cloud_region(cloud.region)
        if not project or not region:
            raise ConfigError(
                "tlp deploy needs the Vertex AI Model Registry: pass --registry vertex://PROJECT/REGION (or --project "
                "and --region). A model in the local MLflow registry is served with `tlp serve NAME@champion`."
            )
        location = parse_vertex_uri(f"vertex://{project}/{region}")
    for flag, value, given in (("--project", cloud.project, location.project),
                               ("--region", cloud.region, location.region)):
        if value and value != given:
            raise ConfigError(f"{flag} {value} contradicts --registry {registry}; give one of them.")
    extra = {"api_endpoint": cloud.api_endpoint} if cloud.api_endpoint else {}
    return str(VertexUri(location.project, location.region, "", {**location.options, **extra}))


def deploy(model: str, registry: str, options: DeployOptions, cloud: CloudOptions, echo=print) -> Deployed:
    """Deploys ``model`` (NAME@champion or NAME/VERSION) from ``registry`` (``--registry``; empty:
    the project and region of ``cloud``) to the endpoint ``options.endpoint``."""
    check_request(options.endpoint, options)
    uri = registry_uri(registry, cloud)
    if cloud.network and not cloud.network.startswith("projects/"):
        raise ConfigError(f"--network {cloud.network!r} must be projects/NUMBER/global/networks/NAME.")
    if options.serving_accelerator and options.serving_accelerator not in accelerator_types():
        raise ConfigError(f"--accelerator {options.serving_accelerator!r} is not a Vertex AI accelerator type, e.g. "
                          "NVIDIA_TESLA_T4 or NVIDIA_L4.")
    check_credentials()
    return deploy_version(model, uri, options.endpoint, options, cloud, echo)
