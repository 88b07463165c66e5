"""The Vertex AI Metadata API (the store behind Vertex AI Experiments), added to a ``StandIn``.

``PipelineJob.submit(experiment=NAME)`` (google-cloud-aiplatform 1.165) makes the default
metadata store exist, gets or creates the experiment's context (schema ``system.Experiment``),
creates the job, polls it until Vertex AI has given it a pipeline-run context
(``jobDetail.pipelineRunContext``, set here when the job starts running), then adds that
context as a child of the experiment's. An ExperimentRun (``aiplatform.start_run``) is a context
of schema ``system.ExperimentRun`` added as a child of the experiment's; its parameters, metrics
and state are its metadata (``_params``, ``_metrics``, ``_state``), each ``log_params``,
``log_metrics`` and ``end_run`` a PATCH of the whole context. The stand-in answers these like the
service and keeps what it was sent in ``standin.metadata_stores`` and ``standin.contexts``.
"""

from __future__ import annotations

import re

from tests.cloud.standin import StandIn, _HttpError

_LOC = r"^/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/"
_STORE = _LOC + r"metadataStores/(?P<store>[^/:]+)"
_UPDATABLE = ("displayName", "description", "labels", "metadata", "schemaTitle", "schemaVersion")


def add_metadata_api(standin: StandIn) -> StandIn:
    """Gives ``standin`` the Metadata routes and pipeline-run contexts on its pipeline jobs."""
    standin.metadata_stores = {}
    standin.contexts = {}
    original_get_job = standin._get_job

    def store_name(request) -> str:
        return f"{standin._parent(request)}/metadataStores/{request.group('store')}"

    def get_store(request):
        name = store_name(request)
        if name not in standin.metadata_stores:
            raise _HttpError(404, f"MetadataStore {name} not found")
        return standin.metadata_stores[name]

    def create_store(request):
        parent = standin._parent(request)
        name = f"{parent}/metadataStores/{request.query.get('metadataStoreId', 'default')}"
        store = {**(request.body if isinstance(request.body, dict) else {}), "name": name,
                 "createTime": standin._now()}
        standin.metadata_stores[name] = store
        return standin._operation(name, "CreateMetadataStoreOperationMetadata",
                                  {"@type": "type.googleapis.com/google.cloud.aiplatform.v1.MetadataStore", **store})

    def get_context(request):
        name = f"{store_name(request)}/contexts/{request.group('context')}"
        if name not in standin.contexts:
            raise _HttpError(404, f"Context {name} not found")
        return standin.contexts[name]

    def create_context(request):
        store = store_name(request)
        if store not in standin.metadata_stores:
            raise _HttpError(404, f"MetadataStore {store} not found")
        body = dict(request.body) if isinstance(request.body, dict) else {}
        name = f"{store}/contexts/{request.query.get('contextId') or standin._new_id()}"
        if name in standin.contexts:
            raise _HttpError(409, f"Context {name} already exists")
        now = standin._now()
        standin.contexts[name] = {**body, "name": name, "createTime": now, "updateTime": now, "etag": "1",
                                  "parentContexts": []}
        return standin.contexts[name]

    def update_context(request):
        context = get_context(request)
        body = request.body if isinstance(request.body, dict) else {}
        # The SDK sends the whole context, its metadata merged on the client: what it sends replaces.
        context.update({key: body[key] for key in _UPDATABLE if key in body})
        context["updateTime"] = standin._now()
        context["etag"] = str(int(context["etag"]) + 1)
        return context

    def add_children(request):
        parent = get_context(request)
        for child in (request.body or {}).get("childContexts", []):
            if child not in standin.contexts:
                raise _HttpError(404, f"Context {child} not found")
            standin.contexts[child]["parentContexts"].append(parent["name"])
        return {}

    def get_job_with_context(request):
        job = original_get_job(request)
        if job["state"] != "PIPELINE_STATE_PENDING" and "jobDetail" not in job:
            # Vertex AI records each run in the default store once it starts.
            store = job["name"].split("/pipelineJobs/")[0] + "/metadataStores/default"
            standin.metadata_stores.setdefault(store, {"name": store})
            context = f"{store}/contexts/{job['name'].rsplit('/', 1)[-1]}"
            standin.contexts.setdefault(context, {
                "name": context, "displayName": job["name"].rsplit("/", 1)[-1], "schemaTitle": "system.PipelineRun",
                "schemaVersion": "0.0.1", "metadata": {}, "parentContexts": [], "etag": "1",
                "createTime": standin._now(),
            })
            job["jobDetail"] = {"pipelineRunContext": standin.contexts[context],
                                "pipelineContext": {"name": f"{store}/contexts/{job.get('displayName', 'pipeline')}"}}
        return job

    routes = [
        ("GET", _STORE + "$", get_store),
        ("POST", _LOC + r"metadataStores$", create_store),
        ("GET", _STORE + r"/contexts/(?P<context>[^/:]+)$", get_context),
        ("POST", _STORE + r"/contexts$", create_context),
        ("PATCH", _STORE + r"/contexts/(?P<context>[^/:]+)$", update_context),
        ("POST", _STORE + r"/contexts/(?P<context>[^/:]+):addContextChildren$", add_children),
        ("GET", _LOC + r"pipelineJobs/(?P<id>[^/:]+)$", get_job_with_context),
    ]
    # First, so the pipeline-job GET above is found before the stand-in's own.
    standin._routes[:0] = [(method, re.compile(pattern), handler) for method, pattern, handler in routes]
    return standin


def experiment_of(standin: StandIn, job_name: str) -> dict | None:
    """The experiment context a pipeline job was added to, or None."""
    run = next((c for c in standin.contexts.values() if c["name"].endswith("/" + job_name.rsplit("/", 1)[-1])), None)
    if not run or not run["parentContexts"]:
        return None
    return standin.contexts[run["parentContexts"][0]]
