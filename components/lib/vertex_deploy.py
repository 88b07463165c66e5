"""Deploying a registered version to a Vertex AI endpoint, the way a careful person would.

- The endpoint is found by display name, or created (public; private with VPC peering when a
  network is given).
- The version is deployed with its share of the traffic (``traffic``: 100 replaces, less is a
  canary; the rest stays on what serves now, scaled). Vertex AI's deployModel is a long-running
  operation; it completes once the new deployed model serves.
- Only after that, and only if the endpoint then lists the new deployed model, are the versions
  it replaces undeployed: deployed models of the same registered model left with 0% traffic.
  Deployed models of other registered models are never touched.
- ``promote_traffic`` moves 100% to an already deployed version (the end of a canary) and then
  undeploys the replaced ones.

Deploying the same version again changes nothing, so the pipeline's deploy step is idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tlp.components.lib.registry.vertex_backend import VertexRegistry
from tlp.components.lib.settings import CloudOptions, DeployOptions
from tlp.components.lib.specs import ConfigError, ServiceError


def check_request(endpoint: str, options: DeployOptions) -> None:
    """The rules that involve more than one deploy option (each option's own bounds ran when
    the group was built), and the endpoint to deploy to."""
    if not endpoint:
        raise ConfigError("--endpoint NAME is required: the Vertex AI endpoint to deploy to (created if missing).")
    if not 0 < options.traffic <= 100:
        raise ConfigError(f"--traffic {options.traffic}: give the new version's share in percent, 1-100.")
    if options.promote_traffic and options.traffic != 100:
        raise ConfigError("--promote-traffic moves all traffic to the version; drop --traffic.")
    if options.max_replicas < options.min_replicas:
        raise ConfigError(f"--min-replicas {options.min_replicas} / --max-replicas {options.max_replicas}: use at "
                          "least 1 and max >= min.")
    if options.serving_gpus and not options.serving_accelerator:
        raise ConfigError(f"--gpus {options.serving_gpus} needs --accelerator TYPE, e.g. --accelerator "
                          "NVIDIA_TESLA_T4.")


@dataclass
class Deployed:
    endpoint: str  # resource name
    endpoint_created: bool
    deployed_model_id: str
    model: str  # versioned resource name
    traffic_split: dict[str, int]
    undeployed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # deployed models left in place, and why
    changed: bool = True
    link: str = ""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _init(registry):
    """The Vertex registry (it has already called ``aiplatform.init``) and the SDK."""

    if not registry.startswith("vertex://"):
        raise ConfigError(
            f"deploying needs the Vertex AI Model Registry (--registry vertex://PROJECT/REGION), not {registry}; "
            "a model in an MLflow registry is served with `tlp serve NAME@champion --registry URI` (or the "
            "tlp-serve image on your own machines)."
        )
    vertex = VertexRegistry(registry)
    return vertex, vertex._aiplatform


def find_endpoint(aiplatform, display_name: str, network: str = ""):
    """The endpoint with this display name (the oldest if several), or None."""
    kind = aiplatform.PrivateEndpoint if network else aiplatform.Endpoint
    found = kind.list(filter=f'display_name="{display_name}"', order_by="create_time")
    return found[0] if found else None


def _same_model(deployed, model) -> bool:
    return deployed.model.split("@")[0].rsplit("/", 1)[-1] == model.resource_name.rsplit("/", 1)[-1]


def _scaled(split: dict[str, int], new_id: str, share: int) -> dict[str, int]:
    """``new_id`` gets ``share`` percent; the others keep their proportions of the rest (sum 100)."""
    others = {k: v for k, v in split.items() if k != new_id}
    rest, total = 100 - share, sum(others.values())
    result = {k: (v * rest // total if total else 0) for k, v in others.items()}
    leftover = rest - sum(result.values())
    for key in sorted(result, key=lambda k: -others[k]):
        if leftover <= 0:
            break
        result[key] += 1
        leftover -= 1
    if leftover and not result:
        share += leftover
    result[new_id] = share
    return result


def deploy_version(model_ref: str, registry: str, endpoint_name: str, options: DeployOptions,
                   cloud: CloudOptions | None = None, echo=print) -> Deployed:
    """Deploys ``model_ref`` (NAME@champion or NAME/VERSION in ``registry``, a
    ``vertex://PROJECT/REGION[?api_endpoint=...]`` URI) to the endpoint named ``endpoint_name``
    with the machines and traffic of ``options``; ``cloud`` gives the service account and the
    network (a private endpoint). See the module docstring for the order of things."""
    check_request(endpoint_name, options)
    cloud = cloud or CloudOptions()
    vertex, aiplatform = _init(registry)
    model = vertex.model_version(model_ref)
    version = str(model.version_id)
    target = f"{model.display_name} version {version}"

    endpoint = find_endpoint(aiplatform, endpoint_name, cloud.network)
    created = endpoint is None
    if created:
        if options.promote_traffic:
            raise ConfigError(f"endpoint {endpoint_name!r} does not exist, so {target} is not deployed there; "
                              "deploy it first (tlp deploy ... --traffic N), then --promote-traffic.")
        echo(f"tlp deploy: creating endpoint {endpoint_name!r}", flush=True)
        if cloud.network:
            endpoint = aiplatform.PrivateEndpoint.create(display_name=endpoint_name, network=cloud.network)
        else:
            endpoint = aiplatform.Endpoint.create(display_name=endpoint_name)

    current = [d for d in endpoint.list_models() if _same_model(d, model) and str(d.model_version_id) == version]
    split = {k: int(v) for k, v in (endpoint.traffic_split or {}).items()}
    if current:
        deployed_id = current[0].id
        if options.promote_traffic or split.get(deployed_id, 0) != options.traffic:
            split = _scaled(split, deployed_id, options.traffic)
            echo(f"tlp deploy: {target} is already deployed ({deployed_id}); traffic split -> {split}", flush=True)
            endpoint.update(traffic_split=split)
            changed = True
        else:
            echo(f"tlp deploy: {target} already serves {options.traffic}% of {endpoint_name!r}; nothing to change",
                 flush=True)
            changed = False
    else:
        if options.promote_traffic:
            raise ConfigError(f"{target} is not deployed on endpoint {endpoint_name!r}; deploy it first (tlp deploy "
                              "... --traffic N), then --promote-traffic.")
        gpu_type, gpus = options.serving_accelerator, options.serving_gpus or 1
        accelerator = {"accelerator_type": gpu_type, "accelerator_count": gpus} if gpu_type else {}
        traffic = options.traffic if endpoint.list_models() else 100
        if traffic != options.traffic:
            echo(f"tlp deploy: nothing else serves on {endpoint_name!r}, so {target} gets 100% of the traffic",
                 flush=True)
        echo(f"tlp deploy: deploying {target} to {endpoint_name!r} with {traffic}% of the traffic on "
             f"{options.min_replicas}-{options.max_replicas} x {options.serving_machine_type}"
             f"{f' + {gpus} x {gpu_type}' if gpu_type else ''}", flush=True)
        deployed_before = {d.id for d in endpoint.list_models()}
        # Waits for Vertex AI's long-running operation: it completes once the new model serves.
        endpoint.deploy(
            model=model, deployed_model_display_name=f"{model.display_name}-v{version}",
            traffic_percentage=traffic, machine_type=options.serving_machine_type,
            min_replica_count=options.min_replicas, max_replica_count=options.max_replicas,
            service_account=cloud.service_account or None, **accelerator,
        )
        endpoint = type(endpoint)(endpoint.resource_name)  # fresh state, not the SDK's cached copy
        fresh = [d for d in endpoint.list_models()
                 if d.id not in deployed_before and _same_model(d, model) and str(d.model_version_id) == version]
        if not fresh:
            raise ServiceError(f"the deployment of {target} to {endpoint.resource_name} finished but the endpoint does "
                               "not list it, so nothing was undeployed; check the endpoint in the console.")
        deployed_id = fresh[0].id
        changed = True
    return _retire_replaced(endpoint, model, deployed_id, created, changed, echo)


def _retire_replaced(endpoint, model, deployed_id: str, created: bool, changed: bool, echo) -> Deployed:
    split = {k: int(v) for k, v in (endpoint.traffic_split or {}).items()}
    undeployed, kept = [], []
    for deployed in endpoint.list_models():
        if deployed.id == deployed_id:
            continue
        share = split.get(deployed.id, 0)
        what = f"{deployed.id} ({deployed.display_name})"
        if not _same_model(deployed, model):
            kept.append(f"{what}: another registered model, left alone")
        elif share:
            kept.append(f"{what}: still serves {share}% (canary)")
        else:
            echo(f"tlp deploy: undeploying the replaced {what}", flush=True)
            endpoint.undeploy(deployed_model_id=deployed.id)
            undeployed.append(deployed.id)
    if undeployed:
        endpoint = type(endpoint)(endpoint.resource_name)
        split = {k: int(v) for k, v in (endpoint.traffic_split or {}).items()}
    location = endpoint.resource_name.split("/")[3]
    endpoint_id = endpoint.resource_name.rsplit("/", 1)[-1]
    project = endpoint.project
    link = f"https://console.cloud.google.com/vertex-ai/locations/{location}/endpoints/{endpoint_id}?project={project}"
    result = Deployed(endpoint.resource_name, created, deployed_id, model.versioned_resource_name, split, undeployed,
                      kept, changed, link)
    echo(f"tlp deploy: {endpoint.resource_name}: traffic {split}"
         f"{'; undeployed ' + ', '.join(undeployed) if undeployed else ''}\n  console: {link}", flush=True)
    for note in kept:
        echo(f"  kept {note}", flush=True)
    return result
