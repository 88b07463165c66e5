"""A loopback stand-in for the Google Cloud and Kubeflow Pipelines REST APIs, for tests.

The real clients (google-cloud-aiplatform over REST, google-cloud-storage, kfp.Client) send real
HTTP requests to it; it records each one and keeps just enough state to answer like the service.
Use it through the ``standin`` fixture (tests/cloud/conftest.py), which points the environment here.

Served on one ``http://127.0.0.1:PORT`` (``StandIn.url``):

- OAuth2: ``POST /token`` (the ``token_uri`` of the throwaway service-account key).
- Vertex AI v1 (``/v1/projects/P/locations/L/...``): pipelineJobs, schedules, models (upload,
  versions, aliases), operations. P may be the project ID or number; the names the stand-in gives
  use the project *number*, as the real service's do: ``projects/123456789012/locations/L/...``.
- Cloud Storage JSON API (``/storage/v1``, ``/upload/storage/v1``, ``/download/storage/v1``).
- Cloud Resource Manager v3 (``GET /v3/projects/P``): the SDK asks it who owns an existing bucket.
- Kubeflow Pipelines v2beta1 (``/apis/v2beta1/...``): healthz, experiments, runs, recurring runs.

Anything else is answered 404 in Google's error format and recorded (``unanswered()``), so a
mistake shows. Requests for another project than ``project_id`` get 403.

State (plain dicts, so tests can read and seed them):

- ``pipeline_jobs``: resource name -> PipelineJob JSON as created, plus name, state, createTime...
  Each GET of one job moves it PENDING -> RUNNING -> ``job_final_state`` (a failed one also gets
  ``error.message = job_error_message``; ``job_task_details``, if set, becomes its ``jobDetail``).
- ``schedules``: resource name -> Schedule JSON as created (int64 fields such as
  ``maxRunCount`` are strings, as protobuf JSON writes them), state ACTIVE or PAUSED.
- ``models``: model ID (numeric string) -> ``{"versions": {version ID: Model JSON}}``. The version
  holding the ``default`` alias is what ``models/ID`` and the model list return.
- ``operations``: name -> long-running operation, done at once, except deployModel's (below).
- ``endpoints``: resource name -> Endpoint JSON (``deployedModels``, ``trafficSplit``). deployModel
  checks the model version, the machine spec and that the traffic split sums to 100; its
  operation stays running for ``deploy_polls`` GETs (1), then the deployed model appears with the
  split (key "0" becomes its ID), or, if ``deploy_error`` is set, the operation fails with it and
  the endpoint is unchanged. undeployModel refuses a deployed model that still has traffic.
- ``batch_prediction_jobs``: resource name -> BatchPredictionJob JSON; its input files must exist;
  each GET moves it PENDING -> RUNNING -> SUCCEEDED (outputInfo set).
- ``buckets``: name -> bucket JSON; ``bucket_policies``: name -> IAM policy JSON.
- ``storage_faults``: ``gs://BUCKET/NAME`` (an object's GETs) or ``gs://BUCKET`` (its listings) ->
  statuses to answer, one per request, before answering normally (``fail_storage``): a flaky or a
  refusing Cloud Storage.
- ``objects``: (bucket, object name) -> bytes; metadata is derived, so tests may seed objects
  (``put_object``/``add_bucket``). Unknown buckets are 404, as in GCS: create them first.
- ``kfp_experiments``, ``kfp_runs``, ``kfp_recurring_runs``: ID -> KFP JSON (snake_case). A KFP
  run is created PENDING and its first GET shows ``kfp_run_final_state`` ("SUCCEEDED"; tests may
  set "FAILED"), so kfp's ``wait_for_run_completion`` returns without sleeping. A recurring run's
  cron must have KFP's 6 fields (seconds first): the real server would misread 5 without a word.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import itertools
import json
import re
import threading
import traceback
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote, unquote

import google_crc32c

PIPELINE_DONE = ("PIPELINE_STATE_SUCCEEDED", "PIPELINE_STATE_FAILED", "PIPELINE_STATE_CANCELLED")
_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
           409: "ALREADY_EXISTS", 412: "FAILED_PRECONDITION", 500: "INTERNAL", 503: "UNAVAILABLE"}
_GRPC_CODE = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 412: 9, 500: 13}
_JOB_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")
_ALIAS = re.compile(r"[a-z][a-zA-Z0-9-]{0,126}[a-z0-9-]")
_AIP = "type.googleapis.com/google.cloud.aiplatform.v1."
_KFP_OPERATIONS = {1: "EQUALS", 2: "NOT_EQUALS", 3: "GREATER_THAN", 5: "GREATER_THAN_EQUALS", 6: "LESS_THAN",
                   7: "LESS_THAN_EQUALS", 8: "IN", 9: "IS_SUBSTRING"}


@dataclass
class Recorded:
    method: str
    path: str  # percent-decoded, without the query
    query: dict[str, str]
    body: object  # the parsed JSON when the body is JSON, else the raw bytes
    status: int = 0  # the status the stand-in answered
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    routed: bool = True  # False: no route matched (answered 404)


@dataclass
class _Reply:
    status: int
    body: object = None  # dict/list -> JSON, bytes -> as is, None -> empty
    headers: dict = field(default_factory=dict)


class _HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class _Request:
    method: str
    path: str
    query: dict
    headers: dict
    data: bytes
    body: object
    raw_query: str = ""
    match: re.Match | None = None

    def group(self, name: str) -> str:
        return unquote(self.match.group(name))


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


class StandIn:
    project_id = "tlp-test"
    project_number = "123456789012"

    def __init__(self):
        self.requests: list[Recorded] = []
        self.pipeline_jobs: dict[str, dict] = {}
        self.job_final_state = "PIPELINE_STATE_SUCCEEDED"
        self.job_error_message = "The DAG failed because some tasks failed."
        # Tests may set the ``jobDetail.taskDetails`` a job shows once it ends (e.g. cached steps).
        self.job_task_details: list[dict] | None = None
        self.schedules: dict[str, dict] = {}
        self.models: dict[str, dict] = {}
        self.operations: dict[str, dict] = {}
        self.endpoints: dict[str, dict] = {}
        self.deploy_polls = 1
        self.deploy_error = ""
        self.batch_prediction_jobs: dict[str, dict] = {}
        self._pending_operations: dict[str, list] = {}  # name -> [GETs left, completion]
        self.buckets: dict[str, dict] = {}
        self.bucket_policies: dict[str, dict] = {}
        self.objects: dict[tuple[str, str], bytes] = {}
        self.storage_faults: dict[str, list[int]] = {}
        self.kfp_experiments: dict[str, dict] = {}
        self.kfp_runs: dict[str, dict] = {}
        self.kfp_recurring_runs: dict[str, dict] = {}
        self.kfp_run_final_state = "SUCCEEDED"
        # Vertex AI and Resource Manager refuse requests without a bearer token, like the real ones.
        self.require_auth = True
        self._object_meta: dict[tuple[str, str], dict] = {}
        self._uploads: dict[str, dict] = {}
        self._job_polls: dict[str, int] = {}
        self._version_counts: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._last_time = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
        self._lock = threading.RLock()
        self._routes = self._make_routes()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.standin = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="standin", daemon=True)
        self._thread.start()

    # --- public helpers -----------------------------------------------------------------------

    def find(self, method: str, path_pattern: str) -> list[Recorded]:
        """The recorded requests with this method whose decoded path matches (re.search)."""
        with self._lock:
            return [r for r in self.requests if r.method == method and re.search(path_pattern, r.path)]

    def unanswered(self) -> list[Recorded]:
        """Requests no route matched (answered 404): what the stand-in lacks or the code got wrong."""
        with self._lock:
            return [r for r in self.requests if not r.routed]

    def dump(self) -> str:
        """One line per recorded request, for reading what a client sent."""
        with self._lock:
            lines = []
            for r in self.requests:
                body = r.body if isinstance(r.body, (dict, list)) else r.body[:60]
                query = "&".join(f"{k}={v}" for k, v in r.query.items() if k not in ("$alt", "prettyPrint"))
                lines.append(f"{r.status} {r.method} {r.path}{'?' + query if query else ''} {str(body)[:200]}")
            return "\n".join(lines)

    def add_bucket(self, name: str) -> dict:
        """Creates a bucket owned by the test project (as if made before the test)."""
        with self._lock:
            if name not in self.buckets:
                self.buckets[name] = self._bucket_resource(name, "US-CENTRAL1")
            return self.buckets[name]

    def put_object(self, uri: str, data: bytes) -> None:
        """Stores ``gs://BUCKET/NAME``, creating the bucket if needed."""
        bucket, name = uri[len("gs://"):].split("/", 1)
        with self._lock:
            self.add_bucket(bucket)
            self._store_object(bucket, name, data, {})

    def fail_storage(self, uri: str, *statuses: int) -> None:
        """The next requests for ``gs://BUCKET/NAME`` (any GET of the object) or ``gs://BUCKET``
        (listing its objects) are answered with ``statuses``, one each, then normally again."""
        with self._lock:
            self.storage_faults.setdefault(uri.rstrip("/"), []).extend(statuses)

    def _storage_fault(self, uri: str) -> None:
        statuses = self.storage_faults.get(uri)
        if statuses:
            status = statuses.pop(0)
            message = {403: f"stand-in: the caller does not have storage.objects.get access to {uri}",
                       503: "stand-in: the service is unavailable, try again"}.get(status, "stand-in: fault")
            raise _HttpError(status, message)

    def get_object(self, uri: str) -> bytes:
        bucket, name = uri[len("gs://"):].split("/", 1)
        return self.objects[(bucket, name)]

    def model_versions(self, display_name: str) -> dict[str, dict]:
        """Version ID -> Model JSON of the model with this display name ({} if none)."""
        with self._lock:
            for model in self.models.values():
                if self._default_version(model)["displayName"] == display_name:
                    return dict(model["versions"])
            return {}

    def close(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # --- plumbing -----------------------------------------------------------------------------

    def _now(self) -> str:
        """RFC 3339 UTC, strictly increasing, so create times order resources."""
        now = datetime.datetime.now(datetime.timezone.utc)
        if now <= self._last_time:
            now = self._last_time + datetime.timedelta(microseconds=1)
        self._last_time = now
        return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _new_id(self) -> str:
        return str(1_000_000_000_000_000_000 + next(self._ids))  # numeric, like Vertex AI's IDs

    def _handle(self, method: str, raw_path: str, raw_query: str, headers: dict, data: bytes) -> _Reply:
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        body: object = data
        if data and ("json" in headers.get("content-type", "") or data[:1] in (b"{", b"[")):
            try:
                body = json.loads(data)
            except ValueError:
                body = data
        record = Recorded(method, unquote(raw_path), query, body, headers=headers)
        with self._lock:
            self.requests.append(record)
            request = _Request(method, raw_path, query, headers, data, body, raw_query)
            try:
                reply = self._route(request)
            except _HttpError as error:
                reply = self._error_reply(request, error.status, error.message)
            except Exception:  # a bug in the stand-in: say so in the reply instead of hanging up
                reply = self._error_reply(request, 500, "stand-in failure:\n" + traceback.format_exc())
            record.status = reply.status
            record.routed = request.match is not None
        return reply

    def _route(self, request: _Request) -> _Reply:
        for method, pattern, handler in self._routes:
            match = pattern.match(request.path)
            if match and method == request.method:
                request.match = match
                result = handler(request)
                return result if isinstance(result, _Reply) else _Reply(200, result)
        return self._error_reply(request, 404, f"stand-in: no route for {request.method} {unquote(request.path)}")

    @staticmethod
    def _error_reply(request: _Request, status: int, message: str) -> _Reply:
        if request.path.startswith("/apis/"):  # grpc-gateway's shape, which kfp_server_api reads
            return _Reply(status, {"error": message, "code": _GRPC_CODE.get(status, 2), "message": message,
                                   "details": []})
        error = {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN")}
        if request.path.startswith(("/storage/", "/upload/", "/download/")):
            error["errors"] = [{"message": message, "domain": "global", "reason": "notFound" if status == 404
                                else "invalid"}]
        return _Reply(status, {"error": error})

    def _make_routes(self):
        loc = r"^/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/"
        one = r"/(?P<id>[^/:]+)"
        bucket = r"^/storage/v1/b/(?P<bucket>[^/]+)"
        kfp = r"^/apis/v2beta1/"
        table = [
            ("POST", r"^/token$", self._token),
            # Vertex AI
            ("POST", loc + r"pipelineJobs$", self._create_job),
            ("GET", loc + r"pipelineJobs$", self._list_jobs),
            ("GET", loc + r"pipelineJobs" + one + "$", self._get_job),
            ("DELETE", loc + r"pipelineJobs" + one + "$", self._delete_job),
            ("POST", loc + r"pipelineJobs" + one + ":cancel$", self._cancel_job),
            ("POST", loc + r"schedules$", self._create_schedule),
            ("GET", loc + r"schedules$", self._list_schedules),
            ("GET", loc + r"schedules" + one + "$", self._get_schedule),
            ("PATCH", loc + r"schedules" + one + "$", self._patch_schedule),
            ("DELETE", loc + r"schedules" + one + "$", self._delete_schedule),
            ("POST", loc + r"schedules" + one + ":(?P<verb>pause|resume)$", self._pause_resume),
            ("POST", loc + r"models:upload$", self._upload_model),
            ("GET", loc + r"models$", self._list_models),
            ("GET", loc + r"models" + one + "$", self._get_model),
            ("PATCH", loc + r"models" + one + "$", self._patch_model),
            ("DELETE", loc + r"models" + one + "$", self._delete_model),
            ("GET", loc + r"models" + one + ":listVersions$", self._list_versions),
            ("POST", loc + r"models" + one + ":mergeVersionAliases$", self._merge_aliases),
            ("DELETE", loc + r"models" + one + ":deleteVersion$", self._delete_version),
            ("POST", loc + r"endpoints$", self._create_endpoint),
            ("GET", loc + r"endpoints$", self._list_endpoints),
            ("GET", loc + r"endpoints" + one + "$", self._get_endpoint),
            ("PATCH", loc + r"endpoints" + one + "$", self._patch_endpoint),
            ("DELETE", loc + r"endpoints" + one + "$", self._delete_endpoint),
            ("POST", loc + r"endpoints" + one + ":deployModel$", self._deploy_model),
            ("POST", loc + r"endpoints" + one + ":undeployModel$", self._undeploy_model),
            ("POST", loc + r"batchPredictionJobs$", self._create_batch_job),
            ("GET", loc + r"batchPredictionJobs$", self._list_batch_jobs),
            ("GET", loc + r"batchPredictionJobs" + one + "$", self._get_batch_job),
            # The REST operations client polls some resources' operations under /ui/ (its first matching rule).
            ("GET", r"^/(?:v1|ui)/(?P<name>projects/.+/operations/[^/:]+)$", self._get_operation),
            ("POST", r"^/(?:v1|ui)/(?P<name>projects/.+/operations/[^/:]+):wait$", self._get_operation),
            ("POST", r"^/v1/(?P<name>projects/.+/operations/[^/:]+):cancel$", lambda r: {}),
            # Cloud Resource Manager
            ("GET", r"^/v3/projects/(?P<project>[^/:]+)$", self._get_project),
            # Cloud Storage
            ("GET", r"^/storage/v1/b$", self._list_buckets),
            ("POST", r"^/storage/v1/b$", self._insert_bucket),
            ("GET", bucket + "$", self._get_bucket),
            ("DELETE", bucket + "$", self._delete_bucket),
            ("GET", bucket + "/iam$", self._get_iam),
            ("PUT", bucket + "/iam$", self._set_iam),
            ("GET", bucket + "/iam/testPermissions$", self._test_iam),
            ("GET", bucket + "/o$", self._list_objects),
            ("GET", bucket + "/o/(?P<object>.+)$", self._get_object),
            ("DELETE", bucket + "/o/(?P<object>.+)$", self._delete_object),
            ("GET", r"^/download/storage/v1/b/(?P<bucket>[^/]+)/o/(?P<object>.+)$", self._download),
            ("POST", r"^/upload/storage/v1/b/(?P<bucket>[^/]+)/o$", self._upload),
            ("PUT", r"^/upload/storage/v1/b/(?P<bucket>[^/]+)/o$", self._upload_chunk),
            ("DELETE", r"^/upload/storage/v1/b/(?P<bucket>[^/]+)/o$", self._cancel_upload),
            # Kubeflow Pipelines
            ("GET", kfp + r"healthz$", lambda r: {"multi_user": False, "pipeline_store": "database"}),
            ("POST", kfp + r"experiments$", self._kfp_create_experiment),
            ("GET", kfp + r"experiments$", self._kfp_list_experiments),
            ("GET", kfp + r"experiments/(?P<id>[^/:]+)$", self._kfp_get_experiment),
            ("DELETE", kfp + r"experiments/(?P<id>[^/:]+)$", self._kfp_delete_experiment),
            ("POST", kfp + r"runs$", self._kfp_create_run),
            ("GET", kfp + r"runs$", self._kfp_list_runs),
            ("GET", kfp + r"runs/(?P<id>[^/:]+)$", self._kfp_get_run),
            ("DELETE", kfp + r"runs/(?P<id>[^/:]+)$", self._kfp_delete_run),
            ("POST", kfp + r"runs/(?P<id>[^/:]+):(?P<verb>terminate|archive|unarchive|retry)$", self._kfp_run_verb),
            ("POST", kfp + r"recurringruns$", self._kfp_create_recurring),
            ("GET", kfp + r"recurringruns$", self._kfp_list_recurring),
            ("GET", kfp + r"recurringruns/(?P<id>[^/:]+)$", self._kfp_get_recurring),
            ("DELETE", kfp + r"recurringruns/(?P<id>[^/:]+)$", self._kfp_delete_recurring),
            ("POST", kfp + r"recurringruns/(?P<id>[^/:]+):(?P<verb>enable|disable)$", self._kfp_enable_recurring),
        ]
        return [(method, re.compile(pattern), handler) for method, pattern, handler in table]

    # --- OAuth and Resource Manager -----------------------------------------------------------

    def _token(self, request):
        return {"access_token": "standin-token", "expires_in": 3600, "token_type": "Bearer"}

    def _check_auth(self, request):
        if self.require_auth and not request.headers.get("authorization", "").startswith("Bearer "):
            raise _HttpError(401, "Request is missing required authentication credential.")

    def _check_project(self, project: str):
        if project not in (self.project_id, self.project_number):
            raise _HttpError(403, f"stand-in: project {project!r} is not the test project {self.project_id!r} "
                                  f"({self.project_number}); permission denied")

    def _get_project(self, request):
        self._check_auth(request)
        self._check_project(request.group("project"))
        return {"name": f"projects/{self.project_number}", "projectId": self.project_id, "state": "ACTIVE",
                "displayName": self.project_id, "parent": "organizations/1"}

    # --- Vertex AI common ---------------------------------------------------------------------

    def _parent(self, request) -> str:
        self._check_auth(request)
        self._check_project(request.group("project"))
        return f"projects/{self.project_number}/locations/{request.group('location')}"

    def _full_name(self, request, collection: str) -> str:
        return f"{self._parent(request)}/{collection}/{request.group('id')}"

    def _operation(self, resource: str, metadata_type: str, response: dict | None) -> dict:
        now = self._now()
        name = f"{resource}/operations/{self._new_id()}"
        op = {"name": name, "done": True,
              "metadata": {"@type": _AIP + metadata_type, "genericMetadata": {"createTime": now, "updateTime": now}},
              "response": response or {"@type": "type.googleapis.com/google.protobuf.Empty"}}
        self.operations[name] = op
        return op

    def _get_operation(self, request):
        self._check_auth(request)
        name = request.group("name")
        pending = self._pending_operations.get(name)
        if pending is not None:
            pending[0] -= 1
            if pending[0] < 0:
                del self._pending_operations[name]
                pending[1](self.operations[name])
        return self.operations.get(name, {"name": name, "done": True})

    def _pending_operation(self, resource: str, metadata_type: str, polls: int, complete) -> dict:
        """An operation reported running for ``polls`` GETs; then ``complete(op)`` finishes it."""
        op = self._operation(resource, metadata_type, None)
        if polls <= 0:
            complete(op)
            return op
        op["done"] = False
        op.pop("response")
        self._pending_operations[op["name"]] = [polls, complete]
        return dict(op)

    @staticmethod
    def _lookup(resource: dict, path: str):
        if path.startswith("labels."):
            return (resource.get("labels") or {}).get(path[len("labels."):])
        value = resource
        for part in path.split("."):
            value = value.get(_camel(part)) if isinstance(value, dict) else None
        return value

    def _filter(self, items: list[dict], expression: str) -> list[dict]:
        """The AIP-160 subset tests need: ``a="x" AND labels.k="v" AND b!=c AND d:e``."""
        if not expression.strip():
            return items
        terms = []
        for term in re.split(r"\s+AND\s+", expression.strip(), flags=re.IGNORECASE):
            m = re.fullmatch(r'\s*([\w.]+)\s*(!=|=|:)\s*(?:"((?:[^"\\]|\\.)*)"|(\S+))\s*', term)
            if not m:
                raise _HttpError(400, f"stand-in cannot read the filter {expression!r} (term {term!r})")
            terms.append((m.group(1), m.group(2), m.group(3) if m.group(3) is not None else m.group(4)))

        def keep(item):
            for key, op, want in terms:
                value = self._lookup(item, key)
                text = json.dumps(value) if isinstance(value, bool) else ("" if value is None else str(value))
                if op == "=" and text != want or op == "!=" and text == want:
                    return False
                if op == ":" and (value is None or (want != "*" and want not in (value if isinstance(value, list)
                                                                                  else text))):
                    return False
            return True

        return [item for item in items if keep(item)]

    def _order(self, items: list[dict], order_by: str) -> list[dict]:
        for clause in reversed([c.strip() for c in order_by.split(",") if c.strip()]):
            key, _, direction = clause.partition(" ")
            items = sorted(items, key=lambda item: str(self._lookup(item, key) or ""),
                           reverse=direction.strip().lower() == "desc")
        return items

    def _list(self, request, items: list[dict]) -> list[dict]:
        items = self._filter(items, request.query.get("filter", ""))
        return self._order(items, request.query.get("orderBy", "") or request.query.get("order_by", ""))

    @staticmethod
    def _check_parameters(job: dict):
        """Vertex AI refuses values for parameters the pipeline lacks, and missing required ones."""
        spec = job.get("pipelineSpec") or {}
        if not spec:
            if not job.get("templateUri"):
                raise _HttpError(400, "stand-in: the pipeline job has neither pipelineSpec nor templateUri")
            return
        runtime = job.get("runtimeConfig") or {}
        if not runtime.get("gcsOutputDirectory") and not spec.get("defaultPipelineRoot"):
            raise _HttpError(400, "stand-in: no pipeline root (runtimeConfig.gcsOutputDirectory)")
        declared = ((spec.get("root") or {}).get("inputDefinitions") or {}).get("parameters") or {}
        given = dict(runtime.get("parameterValues") or {}, **(runtime.get("parameters") or {}))
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise _HttpError(400, f"The pipeline parameter(s) {', '.join(unknown)} are not found in the pipeline "
                                  "job input definitions.")
        missing = sorted(n for n, d in declared.items()
                         if n not in given and "defaultValue" not in d and not d.get("isOptional"))
        if missing:
            raise _HttpError(400, f"The pipeline parameter(s) {', '.join(missing)} are required but not given.")

    # --- Vertex AI pipeline jobs --------------------------------------------------------------

    def _create_job(self, request):
        parent = self._parent(request)
        job = dict(request.body) if isinstance(request.body, dict) else {}
        job_id = request.query.get("pipelineJobId") or f"pipeline-{self._new_id()}"
        if not _JOB_ID.fullmatch(job_id):
            raise _HttpError(400, f"pipelineJobId {job_id!r} must match [a-z0-9][a-z0-9-]{{0,127}}")
        name = f"{parent}/pipelineJobs/{job_id}"
        if name in self.pipeline_jobs:
            raise _HttpError(409, f"PipelineJob {name} already exists")
        self._check_parameters(job)
        now = self._now()
        job.update(name=name, state="PIPELINE_STATE_PENDING", createTime=now, updateTime=now)
        self.pipeline_jobs[name] = job
        self._job_polls[name] = 0
        return job

    def _job(self, request) -> dict:
        name = self._full_name(request, "pipelineJobs")
        if name not in self.pipeline_jobs:
            raise _HttpError(404, f"PipelineJob {name} not found")
        return self.pipeline_jobs[name]

    def _get_job(self, request):
        job = self._job(request)
        self._job_polls[job["name"]] = self._job_polls.get(job["name"], 0) + 1
        now = self._now()
        if job["state"] in ("PIPELINE_STATE_PENDING", "PIPELINE_STATE_QUEUED"):
            job.update(state="PIPELINE_STATE_RUNNING", startTime=now, updateTime=now)
        elif job["state"] == "PIPELINE_STATE_RUNNING":
            job.update(state=self.job_final_state, endTime=now, updateTime=now)
            if self.job_task_details is not None:
                job["jobDetail"] = {"taskDetails": self.job_task_details}
            if self.job_final_state != "PIPELINE_STATE_SUCCEEDED":
                job["error"] = {"code": 9, "message": self.job_error_message}
        return job

    def _list_jobs(self, request):
        self._parent(request)
        return {"pipelineJobs": self._list(request, list(self.pipeline_jobs.values()))}

    def _cancel_job(self, request):
        job = self._job(request)
        if job["state"] not in PIPELINE_DONE:
            now = self._now()
            job.update(state="PIPELINE_STATE_CANCELLED", endTime=now, updateTime=now,
                       error={"code": 1, "message": "CANCELLED"})
        return {}

    def _delete_job(self, request):
        job = self._job(request)
        del self.pipeline_jobs[job["name"]]
        return self._operation(job["name"], "DeleteOperationMetadata", None)

    # --- Vertex AI schedules ------------------------------------------------------------------

    def _create_schedule(self, request):
        parent = self._parent(request)
        schedule = dict(request.body) if isinstance(request.body, dict) else {}
        cron = re.sub(r"^(CRON_)?TZ=\S+\s+", "", schedule.get("cron", ""))
        if len(cron.split()) != 5:
            raise _HttpError(400, f"stand-in: cron {schedule.get('cron')!r} is not a 5-field cron expression")
        if int(schedule.get("maxConcurrentRunCount") or 0) < 1:
            raise _HttpError(400, "max_concurrent_run_count must be positive")
        create = schedule.get("createPipelineJobRequest") or {}
        if not create.get("pipelineJob"):
            raise _HttpError(400, "stand-in: the schedule has no createPipelineJobRequest.pipelineJob")
        self._check_parameters(create["pipelineJob"])
        name = f"{parent}/schedules/{self._new_id()}"
        now = self._now()
        create.setdefault("parent", parent)
        schedule.update(name=name, state="ACTIVE", createTime=now, updateTime=now, startedRunCount="0",
                        nextRunTime=schedule.get("startTime") or now)
        self.schedules[name] = schedule
        return schedule

    def _schedule(self, request) -> dict:
        name = self._full_name(request, "schedules")
        if name not in self.schedules:
            raise _HttpError(404, f"Schedule {name} not found")
        return self.schedules[name]

    def _get_schedule(self, request):
        return self._schedule(request)

    def _list_schedules(self, request):
        self._parent(request)
        return {"schedules": self._list(request, list(self.schedules.values()))}

    def _pause_resume(self, request):
        schedule = self._schedule(request)
        want, verb = ("ACTIVE", "pause") if request.group("verb") == "pause" else ("PAUSED", "resume")
        if schedule["state"] != want:
            raise _HttpError(400, f"cannot {verb} schedule {schedule['name']} in state {schedule['state']}")
        schedule.update(state="PAUSED" if verb == "pause" else "ACTIVE", updateTime=self._now())
        return {}

    def _patch_schedule(self, request):
        schedule = self._schedule(request)
        fields = [f for f in request.query.get("updateMask", "").split(",") if f]
        for path in fields or list(request.body or {}):
            key = _camel(path)
            if key in request.body:
                schedule[key] = request.body[key]
        schedule["updateTime"] = self._now()
        return schedule

    def _delete_schedule(self, request):
        schedule = self._schedule(request)
        del self.schedules[schedule["name"]]
        return self._operation(schedule["name"], "DeleteOperationMetadata", None)

    # --- Vertex AI models ---------------------------------------------------------------------

    @staticmethod
    def _default_version(model: dict) -> dict:
        versions = model["versions"].values()
        return next((v for v in versions if "default" in v.get("versionAliases", [])), list(versions)[-1])

    def _model(self, request) -> tuple[dict, dict]:
        """(model entry, version JSON) for ``models/ID``, ``models/ID@VERSION`` or ``models/ID@ALIAS``."""
        self._parent(request)
        model_id, _, version = request.group("id").partition("@")
        model = self.models.get(model_id)
        if model is None:
            raise _HttpError(404, f"Model {self._parent(request)}/models/{model_id} not found")
        if not version:
            return model, self._default_version(model)
        if version in model["versions"]:
            return model, model["versions"][version]
        for entry in model["versions"].values():
            if version in entry.get("versionAliases", []):
                return model, entry
        raise _HttpError(404, f"Model {self._parent(request)}/models/{model_id}@{version} not found")

    @staticmethod
    def _check_aliases(aliases: list[str]):
        for alias in aliases:
            bare = alias[1:] if alias.startswith("-") else alias
            if not _ALIAS.fullmatch(bare) or bare.isdigit():
                raise _HttpError(400, f"Invalid version alias {alias!r}")
            if alias == "-default":
                raise _HttpError(400, "The default alias cannot be removed; move it to another version")

    def _move_aliases(self, model: dict, target: dict, aliases: list[str]):
        """Like mergeVersionAliases: an alias lives on one version; ``-alias`` removes it."""
        self._check_aliases(aliases)
        for alias in aliases:
            bare = alias[1:] if alias.startswith("-") else alias
            if alias.startswith("-"):
                target["versionAliases"] = [a for a in target.get("versionAliases", []) if a != bare]
                continue
            for entry in model["versions"].values():
                if entry is not target and alias in entry.get("versionAliases", []):
                    entry["versionAliases"] = [a for a in entry["versionAliases"] if a != alias]
            if alias not in target.setdefault("versionAliases", []):
                target["versionAliases"].append(alias)

    def _upload_model(self, request):
        parent = self._parent(request)
        body = request.body if isinstance(request.body, dict) else {}
        spec = dict(body.get("model") or {})
        if not spec.get("displayName"):
            raise _HttpError(400, "model.display_name is required")
        if not (spec.get("containerSpec") or {}).get("imageUri"):
            raise _HttpError(400, "model.container_spec.image_uri is required for a custom model")
        if spec.get("artifactUri") and not spec["artifactUri"].startswith("gs://"):
            raise _HttpError(400, f"artifact_uri {spec['artifactUri']!r} must be a Cloud Storage URI")
        aliases = spec.pop("versionAliases", None) or []
        self._check_aliases(aliases)
        now = self._now()
        if body.get("parentModel"):
            model_id = body["parentModel"].rsplit("/", 1)[-1]
            if model_id not in self.models:
                raise _HttpError(404, f"parent model {body['parentModel']} not found")
            model = self.models[model_id]
            created = next(iter(model["versions"].values()))["createTime"] if model["versions"] else now
        else:
            model_id = body.get("modelId") or self._new_id()
            if model_id in self.models:
                raise _HttpError(409, f"Model {model_id} already exists")
            model = self.models[model_id] = {"versions": {}}
            created = now
            aliases = ["default", *[a for a in aliases if a != "default"]]  # a new model's first version is default
        # Version IDs count up per model and are never reused, even after a version is deleted.
        version_id = str(self._version_counts.get(model_id, 0) + 1)
        self._version_counts[model_id] = int(version_id)
        name = f"{parent}/models/{model_id}"
        version = dict(spec, name=name, versionId=version_id, versionAliases=[], createTime=created, updateTime=now,
                       versionCreateTime=now, versionUpdateTime=now, etag=f"etag-{model_id}-{version_id}",
                       supportedDeploymentResourcesTypes=["DEDICATED_RESOURCES", "SHARED_RESOURCES"])
        model["versions"][version_id] = version
        self._move_aliases(model, version, aliases)
        return self._operation(name, "UploadModelOperationMetadata",
                               {"@type": _AIP + "UploadModelResponse", "model": name, "modelVersionId": version_id})

    def _get_model(self, request):
        return self._model(request)[1]

    def _list_models(self, request):
        self._parent(request)
        return {"models": self._list(request, [self._default_version(m) for m in self.models.values()])}

    def _list_versions(self, request):
        model, _ = self._model(request)
        versions = sorted(model["versions"].values(), key=lambda v: int(v["versionId"]))
        return {"models": self._list(request, versions)}

    def _merge_aliases(self, request):
        model, version = self._model(request)
        self._move_aliases(model, version, list((request.body or {}).get("versionAliases") or []))
        version["versionUpdateTime"] = version["updateTime"] = self._now()
        return version

    def _patch_model(self, request):
        _model, version = self._model(request)
        fields = [f for f in request.query.get("updateMask", "").split(",") if f]
        for path in fields or list(request.body or {}):
            key = _camel(path)
            if key in (request.body or {}):
                version[key] = request.body[key]
        version["updateTime"] = version["versionUpdateTime"] = self._now()
        return version

    def _delete_model(self, request):
        model, version = self._model(request)
        del self.models[version["name"].rsplit("/", 1)[-1]]
        return self._operation(version["name"], "DeleteOperationMetadata", None)

    def _delete_version(self, request):
        model, version = self._model(request)
        if "default" in version.get("versionAliases", []):
            raise _HttpError(400, "The default version of a model cannot be deleted")
        del model["versions"][version["versionId"]]
        return self._operation(version["name"], "DeleteOperationMetadata", None)

    # --- Vertex AI endpoints ------------------------------------------------------------------

    def _endpoint(self, request) -> dict:
        name = self._full_name(request, "endpoints")
        if name not in self.endpoints:
            raise _HttpError(404, f"Endpoint {name} not found")
        return self.endpoints[name]

    def _create_endpoint(self, request):
        parent = self._parent(request)
        body = dict(request.body) if isinstance(request.body, dict) else {}
        if not body.get("displayName"):
            raise _HttpError(400, "endpoint.display_name is required")
        name = f"{parent}/endpoints/{request.query.get('endpointId') or self._new_id()}"
        if name in self.endpoints:
            raise _HttpError(409, f"Endpoint {name} already exists")
        now = self._now()
        body.update(name=name, deployedModels=[], trafficSplit={}, createTime=now, updateTime=now,
                    etag=f"etag-{name.rsplit('/', 1)[-1]}")
        self.endpoints[name] = body
        return self._operation(name, "CreateEndpointOperationMetadata", {"@type": _AIP + "Endpoint", **body})

    def _list_endpoints(self, request):
        self._parent(request)
        return {"endpoints": self._list(request, list(self.endpoints.values()))}

    def _get_endpoint(self, request):
        return self._endpoint(request)

    def _delete_endpoint(self, request):
        endpoint = self._endpoint(request)
        if endpoint["deployedModels"]:
            raise _HttpError(400, "The endpoint still has deployed models; undeploy them first")
        del self.endpoints[endpoint["name"]]
        return self._operation(endpoint["name"], "DeleteOperationMetadata", None)

    @staticmethod
    def _check_split(endpoint: dict, split: dict, new_key: str | None = None):
        known = {d["id"] for d in endpoint["deployedModels"]} | ({new_key} if new_key else set())
        unknown = sorted(set(split) - known)
        if unknown:
            raise _HttpError(400, f"traffic_split names deployed models that are not on the endpoint: {unknown}")
        if split and sum(int(v) for v in split.values()) != 100:
            raise _HttpError(400, f"traffic_split {split} must add up to 100")

    def _patch_endpoint(self, request):
        endpoint = self._endpoint(request)
        body = request.body if isinstance(request.body, dict) else {}
        fields = [_camel(f) for f in request.query.get("updateMask", "").split(",") if f] or list(body)
        for key in fields:
            if key == "trafficSplit":
                split = {k: int(v) for k, v in (body.get("trafficSplit") or {}).items()}
                self._check_split(endpoint, split)
                endpoint["trafficSplit"] = split
            elif key in body:
                endpoint[key] = body[key]
        endpoint["updateTime"] = self._now()
        return endpoint

    def _model_version_of(self, resource: str) -> tuple[str, dict]:
        """(model resource name without version, version JSON) for ``.../models/ID[@VERSION|@ALIAS]``."""
        m = re.fullmatch(r"projects/[^/]+/locations/[^/]+/models/([^/@]+)(?:@(.+))?", resource or "")
        model = self.models.get(m.group(1)) if m else None
        if model is None:
            raise _HttpError(404, f"Model {resource} not found")
        wanted = m.group(2)
        if not wanted:
            return resource, self._default_version(model)
        for version in model["versions"].values():
            if wanted == version["versionId"] or wanted in version.get("versionAliases", []):
                return resource.split("@")[0], version
        raise _HttpError(404, f"Model {resource} not found")

    def _deploy_model(self, request):
        endpoint = self._endpoint(request)
        body = request.body if isinstance(request.body, dict) else {}
        deployed = dict(body.get("deployedModel") or {})
        model_name, version = self._model_version_of(deployed.get("model", ""))
        machine = ((deployed.get("dedicatedResources") or {}).get("machineSpec") or {}).get("machineType")
        if not machine:
            raise _HttpError(400, "A custom model needs dedicated_resources.machine_spec.machine_type")
        split = {k: int(v) for k, v in (body.get("trafficSplit") or {}).items()}
        self._check_split(endpoint, split, new_key="0")
        if not split and endpoint["deployedModels"]:
            raise _HttpError(400, "stand-in: give a traffic_split when the endpoint already serves models")

        def complete(op):
            now = self._now()
            op.update(done=True)
            op["metadata"]["genericMetadata"]["updateTime"] = now
            if self.deploy_error:
                op["error"] = {"code": 9, "message": self.deploy_error}
                return
            deployed_id = str(next(self._ids) + 7_000_000_000_000_000_000)
            deployed.update(id=deployed_id, model=model_name, modelVersionId=version["versionId"], createTime=now)
            endpoint["deployedModels"].append(deployed)
            endpoint["trafficSplit"] = {(deployed_id if k == "0" else k): v for k, v in (split or {"0": 100}).items()}
            endpoint["updateTime"] = now
            op["response"] = {"@type": _AIP + "DeployModelResponse", "deployedModel": deployed}

        return self._pending_operation(endpoint["name"], "DeployModelOperationMetadata", self.deploy_polls, complete)

    def _undeploy_model(self, request):
        endpoint = self._endpoint(request)
        body = request.body if isinstance(request.body, dict) else {}
        deployed_id = body.get("deployedModelId", "")
        if deployed_id not in {d["id"] for d in endpoint["deployedModels"]}:
            raise _HttpError(404, f"Deployed model {deployed_id} is not on endpoint {endpoint['name']}")
        split = {k: int(v) for k, v in (body.get("trafficSplit") or endpoint["trafficSplit"]).items()}
        remaining = [d for d in endpoint["deployedModels"] if d["id"] != deployed_id]
        if split.get(deployed_id, 0) and remaining:
            raise _HttpError(400, f"Deployed model {deployed_id} still receives {split[deployed_id]}% of the traffic; "
                                  "move it to the other deployed models first")
        split.pop(deployed_id, None)
        endpoint["deployedModels"] = remaining
        endpoint["trafficSplit"] = split if remaining else {}
        endpoint["updateTime"] = self._now()
        return self._operation(endpoint["name"], "UndeployModelOperationMetadata",
                               {"@type": _AIP + "UndeployModelResponse"})

    # --- Vertex AI batch prediction -----------------------------------------------------------

    def _create_batch_job(self, request):
        parent = self._parent(request)
        job = dict(request.body) if isinstance(request.body, dict) else {}
        if not job.get("displayName"):
            raise _HttpError(400, "batch_prediction_job.display_name is required")
        self._model_version_of(job.get("model", ""))
        source = (job.get("inputConfig") or {})
        if not source.get("instancesFormat"):
            raise _HttpError(400, "input_config.instances_format is required")
        for uri in (source.get("gcsSource") or {}).get("uris") or []:
            bucket, _, name = uri[len("gs://"):].partition("/")
            if (bucket, name) not in self.objects:
                raise _HttpError(400, f"The input file {uri} does not exist")
        if not ((job.get("outputConfig") or {}).get("gcsDestination") or {}).get("outputUriPrefix"):
            raise _HttpError(400, "output_config.gcs_destination.output_uri_prefix is required")
        if not ((job.get("dedicatedResources") or {}).get("machineSpec") or {}).get("machineType"):
            raise _HttpError(400, "A custom model's batch prediction needs dedicated_resources.machine_spec")
        name = f"{parent}/batchPredictionJobs/{self._new_id()}"
        now = self._now()
        job.update(name=name, state="JOB_STATE_PENDING", createTime=now, updateTime=now)
        self.batch_prediction_jobs[name] = job
        return job

    def _list_batch_jobs(self, request):
        self._parent(request)
        return {"batchPredictionJobs": self._list(request, list(self.batch_prediction_jobs.values()))}

    def _get_batch_job(self, request):
        name = self._full_name(request, "batchPredictionJobs")
        job = self.batch_prediction_jobs.get(name)
        if job is None:
            raise _HttpError(404, f"BatchPredictionJob {name} not found")
        now = self._now()
        if job["state"] == "JOB_STATE_PENDING":
            job.update(state="JOB_STATE_RUNNING", startTime=now, updateTime=now)
        elif job["state"] == "JOB_STATE_RUNNING":
            prefix = job["outputConfig"]["gcsDestination"]["outputUriPrefix"].rstrip("/")
            job.update(state="JOB_STATE_SUCCEEDED", endTime=now, updateTime=now,
                       outputInfo={"gcsOutputDirectory": f"{prefix}/prediction-{job['displayName']}"})
        return job

    # --- Cloud Storage ------------------------------------------------------------------------

    def _bucket_resource(self, name: str, location: str) -> dict:
        now = self._now()
        return {"kind": "storage#bucket", "id": name, "name": name, "selfLink": f"{self.url}/storage/v1/b/{name}",
                "projectNumber": self.project_number, "location": location.upper(), "locationType": "region",
                "storageClass": "STANDARD", "metageneration": "1", "etag": "CAE=", "timeCreated": now,
                "updated": now, "iamConfiguration": {"uniformBucketLevelAccess": {"enabled": True}}}

    def _bucket(self, request) -> str:
        name = request.group("bucket")
        if name not in self.buckets:
            raise _HttpError(404, "The specified bucket does not exist.")
        return name

    def _list_buckets(self, request):
        prefix = request.query.get("prefix", "")
        items = [b for n, b in sorted(self.buckets.items()) if n.startswith(prefix)]
        return {"kind": "storage#buckets", "items": items}

    def _insert_bucket(self, request):
        body = request.body if isinstance(request.body, dict) else {}
        name = body.get("name", "")
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]", name):
            raise _HttpError(400, f"Invalid bucket name: {name!r}")
        if name in self.buckets:
            raise _HttpError(409, "The requested bucket name is not available.")
        project = request.query.get("project", self.project_id)
        self._check_project(project)
        self.buckets[name] = self._bucket_resource(name, body.get("location") or "US")
        return self.buckets[name]

    def _get_bucket(self, request):
        return self.buckets[self._bucket(request)]

    def _delete_bucket(self, request):
        name = self._bucket(request)
        if any(b == name for b, _ in self.objects):
            raise _HttpError(409, "The bucket you tried to delete is not empty.")
        del self.buckets[name]
        self.bucket_policies.pop(name, None)
        return _Reply(204)

    def _get_iam(self, request):
        name = self._bucket(request)
        return self.bucket_policies.get(name) or {
            "kind": "storage#policy", "resourceId": f"projects/_/buckets/{name}", "version": 1, "etag": "CAE=",
            "bindings": [{"role": "roles/storage.legacyBucketOwner",
                          "members": [f"projectOwner:{self.project_id}"]}]}

    def _set_iam(self, request):
        name = self._bucket(request)
        policy = dict(request.body, kind="storage#policy", resourceId=f"projects/_/buckets/{name}", etag="CAI=")
        self.bucket_policies[name] = policy
        return policy

    def _test_iam(self, request):
        self._bucket(request)
        permissions = [v for k, v in parse_qsl(request.raw_query) if k == "permissions"]
        return {"kind": "storage#testIamPermissionsResponse", "permissions": permissions}

    def _store_object(self, bucket: str, name: str, data: bytes, metadata: dict) -> dict:
        previous = self._object_meta.get((bucket, name), {})
        self.objects[(bucket, name)] = data
        now = self._now()
        self._object_meta[(bucket, name)] = {
            "generation": str(int(previous.get("generation", "0")) + 1 if previous else next(self._ids)),
            "contentType": metadata.get("contentType") or "application/octet-stream",
            "timeCreated": now, "updated": now,
            **({"metadata": metadata["metadata"]} if metadata.get("metadata") else {}),
            **{k: metadata[k] for k in ("contentEncoding", "cacheControl", "contentDisposition") if k in metadata},
        }
        return self._object_resource(bucket, name)

    def _object_resource(self, bucket: str, name: str) -> dict:
        data = self.objects[(bucket, name)]
        meta = self._object_meta.setdefault((bucket, name), {"generation": str(next(self._ids)),
                                                             "contentType": "application/octet-stream",
                                                             "timeCreated": self._now()})
        meta.setdefault("updated", meta["timeCreated"])
        quoted = quote(name, safe="")
        generation = meta["generation"]
        return {
            "kind": "storage#object", "id": f"{bucket}/{name}/{generation}", "name": name, "bucket": bucket,
            "selfLink": f"{self.url}/storage/v1/b/{bucket}/o/{quoted}",
            "mediaLink": f"{self.url}/download/storage/v1/b/{bucket}/o/{quoted}?generation={generation}&alt=media",
            "generation": generation, "metageneration": "1", "size": str(len(data)),
            "md5Hash": base64.b64encode(hashlib.md5(data).digest()).decode(),
            "crc32c": base64.b64encode(google_crc32c.Checksum(data).digest()).decode(),
            "etag": f"E{generation}=", "storageClass": "STANDARD", **meta,
        }

    def _object_key(self, request) -> tuple[str, str]:
        bucket = self._bucket(request)
        key = (bucket, request.group("object"))
        if key not in self.objects:
            raise _HttpError(404, f"No such object: {bucket}/{key[1]}")
        return key

    def _check_generation(self, request, bucket: str, name: str):
        want = request.query.get("ifGenerationMatch")
        if want is None:
            return
        current = self._object_meta.get((bucket, name), {}).get("generation") if (bucket, name) in self.objects else "0"
        if str(current or "0") != want:
            raise _HttpError(412, "At least one of the pre-conditions you specified did not hold.")

    def _list_objects(self, request):
        bucket = self._bucket(request)
        self._storage_fault(f"gs://{bucket}")
        q = request.query
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        names = sorted(n for b, n in self.objects if b == bucket and n.startswith(prefix))
        names = [n for n in names if (not q.get("startOffset") or n >= q["startOffset"])
                 and (not q.get("endOffset") or n < q["endOffset"])
                 and (not q.get("pageToken") or n > q["pageToken"])]
        items, prefixes = [], set()
        for n in names:
            rest = n[len(prefix):]
            if delimiter and delimiter in rest:
                prefixes.add(prefix + rest.split(delimiter, 1)[0] + delimiter)
            else:
                items.append(n)
        limit = int(q.get("maxResults") or 0)
        reply = {"kind": "storage#objects"}
        if limit and len(items) > limit:
            items = items[:limit]
            reply["nextPageToken"] = items[-1]
        if items:
            reply["items"] = [self._object_resource(bucket, n) for n in items]
        if prefixes:
            reply["prefixes"] = sorted(prefixes)
        return reply

    def _get_object(self, request):
        self._storage_fault("gs://{}/{}".format(*self._object_key(request)))
        if request.query.get("alt") == "media":
            return self._download(request)
        return self._object_resource(*self._object_key(request))

    def _delete_object(self, request):
        key = self._object_key(request)
        del self.objects[key]
        self._object_meta.pop(key, None)
        return _Reply(204)

    def _download(self, request):
        key = self._object_key(request)
        if request.path.startswith("/download/"):  # _get_object checked alt=media GETs already
            self._storage_fault(f"gs://{key[0]}/{key[1]}")
        data = self.objects[key]
        resource = self._object_resource(*key)
        headers = {"Content-Type": resource["contentType"], "ETag": resource["etag"],
                   "x-goog-hash": f"crc32c={resource['crc32c']},md5={resource['md5Hash']}",
                   "x-goog-generation": resource["generation"], "x-goog-metageneration": "1",
                   "x-goog-stored-content-length": str(len(data)), "x-goog-stored-content-encoding": "identity"}
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("range", ""))
        if ranged:
            start = int(ranged.group(1))
            end = min(int(ranged.group(2)) if ranged.group(2) else len(data) - 1, len(data) - 1)
            if start >= len(data) and data:
                return _Reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return _Reply(206, data[start:end + 1], headers)
        return _Reply(200, data, headers)

    @staticmethod
    def _multipart(request) -> tuple[dict, bytes]:
        m = re.search(r'boundary="?([^";]+)"?', request.headers.get("content-type", ""))
        if not m:
            raise _HttpError(400, "multipart upload without a boundary")
        parts = []
        for chunk in request.data.split(b"--" + m.group(1).encode())[1:]:
            if chunk.startswith(b"--"):
                break
            head, _, content = chunk.partition(b"\r\n\r\n")
            parts.append(content[:-2] if content.endswith(b"\r\n") else content)
        if len(parts) != 2:
            raise _HttpError(400, f"multipart upload with {len(parts)} parts, not 2")
        return json.loads(parts[0]), parts[1]

    def _upload(self, request):
        bucket = self._bucket(request)
        kind = request.query.get("uploadType")
        if kind == "multipart":
            metadata, data = self._multipart(request)
        elif kind == "media":
            metadata, data = {"name": request.query.get("name"), "contentType": request.headers.get("content-type")}, \
                request.data
        elif kind == "resumable":
            metadata = dict(request.body) if isinstance(request.body, dict) else {}
            metadata.setdefault("name", request.query.get("name"))
            metadata.setdefault("contentType", request.headers.get("x-upload-content-type"))
            if not metadata.get("name"):
                raise _HttpError(400, "resumable upload without an object name")
            self._check_generation(request, bucket, metadata["name"])
            upload_id = uuid.uuid4().hex
            self._uploads[upload_id] = {"bucket": bucket, "metadata": metadata, "data": bytearray(),
                                        "query": dict(request.query)}
            location = f"{self.url}/upload/storage/v1/b/{quote(bucket)}/o?uploadType=resumable&upload_id={upload_id}"
            return _Reply(200, b"", {"Location": location})
        else:
            raise _HttpError(400, f"stand-in: unknown uploadType {kind!r}")
        name = metadata.get("name") or request.query.get("name")
        if not name:
            raise _HttpError(400, "upload without an object name")
        self._check_generation(request, bucket, name)
        return self._store_object(bucket, name, data, metadata)

    def _upload_chunk(self, request):
        upload = self._uploads.get(request.query.get("upload_id", ""))
        if upload is None:
            raise _HttpError(404, "No such upload session")
        content_range = request.headers.get("content-range", "")
        m = re.fullmatch(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)", content_range)
        if content_range and not m:
            raise _HttpError(400, f"bad Content-Range {content_range!r}")
        if m and m.group(1) is not None:
            if int(m.group(1)) != len(upload["data"]):
                raise _HttpError(400, f"chunk starts at {m.group(1)}, expected {len(upload['data'])}")
            upload["data"] += request.data
        elif not m:  # the whole object in one PUT
            upload["data"] += request.data
        total = m.group(3) if m else str(len(upload["data"]))
        if total != "*" and int(total) == len(upload["data"]):
            self._uploads.pop(request.query["upload_id"])
            metadata = upload["metadata"]
            return self._store_object(upload["bucket"], metadata["name"], bytes(upload["data"]), metadata)
        headers = {"Range": f"bytes=0-{len(upload['data']) - 1}"} if upload["data"] else {}
        return _Reply(308, b"", headers)

    def _cancel_upload(self, request):
        self._uploads.pop(request.query.get("upload_id", ""), None)
        return _Reply(499, b"")

    # --- Kubeflow Pipelines -------------------------------------------------------------------

    @staticmethod
    def _kfp_filter(items: list[dict], query: dict) -> list[dict]:
        raw = query.get("filter")
        if not raw:
            return items
        predicates = json.loads(raw).get("predicates") or []

        def value_of(p):
            for key in ("string_value", "stringValue", "int_value", "intValue", "long_value", "longValue",
                        "timestamp_value", "timestampValue"):
                if key in p:
                    return str(p[key])
            return None

        def keep(item):
            for p in predicates:
                key = {"name": "display_name"}.get(p.get("key"), p.get("key"))
                have, want = str(item.get(key, "")), value_of(p)
                op = _KFP_OPERATIONS.get(p.get("operation"), p.get("operation"))  # kfp.Client sends numbers
                if op == "EQUALS":
                    ok = have == want
                elif op == "NOT_EQUALS":
                    ok = have != want
                elif op == "IS_SUBSTRING":
                    ok = want in have
                elif op == "IN":
                    values = p.get("string_values") or p.get("stringValues") or {}
                    ok = have in values.get("values", [])
                else:
                    raise _HttpError(400, f"stand-in cannot apply the filter operation {p.get('operation')!r}")
                if not ok:
                    return False
            return True

        return [item for item in items if keep(item)]

    @staticmethod
    def _kfp_spec_check(resource: dict):
        doc = resource.get("pipeline_spec")
        if not doc and not resource.get("pipeline_version_reference"):
            raise _HttpError(400, "stand-in: neither pipeline_spec nor pipeline_version_reference given")
        spec = doc.get("pipeline_spec", doc) if doc else {}
        declared = ((spec.get("root") or {}).get("inputDefinitions") or {}).get("parameters") or {}
        given = (resource.get("runtime_config") or {}).get("parameters") or {}
        unknown = sorted(set(given) - set(declared)) if doc else []
        if unknown:
            raise _HttpError(400, f"stand-in: the pipeline has no parameter(s) {', '.join(unknown)}")

    def _kfp_experiment(self, experiment_id: str) -> dict:
        if experiment_id not in self.kfp_experiments:
            raise _HttpError(404, f"Experiment {experiment_id} not found")
        return self.kfp_experiments[experiment_id]

    def _kfp_create_experiment(self, request):
        body = request.body if isinstance(request.body, dict) else {}
        name = body.get("display_name")
        if not name:
            raise _HttpError(400, "Experiment display_name is empty")
        if any(e["display_name"] == name for e in self.kfp_experiments.values()):
            raise _HttpError(409, f"Experiment {name!r} already exists")
        experiment = dict(body, experiment_id=str(uuid.uuid4()), created_at=self._now(), storage_state="AVAILABLE")
        self.kfp_experiments[experiment["experiment_id"]] = experiment
        return experiment

    def _kfp_list_experiments(self, request):
        items = self._kfp_filter(list(self.kfp_experiments.values()), request.query)
        return {"experiments": items, "total_size": len(items)} if items else {}

    def _kfp_get_experiment(self, request):
        return self._kfp_experiment(request.group("id"))

    def _kfp_delete_experiment(self, request):
        self._kfp_experiment(request.group("id"))
        del self.kfp_experiments[request.group("id")]
        return {}

    def _kfp_create_run(self, request):
        run = dict(request.body) if isinstance(request.body, dict) else {}
        if run.get("experiment_id"):
            self._kfp_experiment(run["experiment_id"])
        self._kfp_spec_check(run)
        now = self._now()
        run.update(run_id=str(uuid.uuid4()), created_at=now, scheduled_at=now, state="PENDING",
                   storage_state="AVAILABLE", state_history=[{"update_time": now, "state": "PENDING"}])
        self.kfp_runs[run["run_id"]] = run
        return run

    def _kfp_run(self, request) -> dict:
        run_id = request.group("id")
        if run_id not in self.kfp_runs:
            raise _HttpError(404, f"Run {run_id} not found")
        return self.kfp_runs[run_id]

    def _kfp_get_run(self, request):
        run = self._kfp_run(request)
        if run["state"] in ("PENDING", "RUNNING"):
            now = self._now()
            run.update(state=self.kfp_run_final_state, finished_at=now)
            run["state_history"].append({"update_time": now, "state": self.kfp_run_final_state})
            if self.kfp_run_final_state == "FAILED":
                run["error"] = {"code": 2, "message": "stand-in: kfp_run_final_state is FAILED"}
        return run

    def _kfp_list_runs(self, request):
        items = list(self.kfp_runs.values())
        if request.query.get("experiment_id"):
            items = [r for r in items if r.get("experiment_id") == request.query["experiment_id"]]
        items = self._kfp_filter(items, request.query)
        return {"runs": items, "total_size": len(items)} if items else {}

    def _kfp_delete_run(self, request):
        del self.kfp_runs[self._kfp_run(request)["run_id"]]
        return {}

    def _kfp_run_verb(self, request):
        run, verb = self._kfp_run(request), request.group("verb")
        if verb == "terminate" and run["state"] in ("PENDING", "RUNNING"):
            run.update(state="CANCELED", finished_at=self._now())
        elif verb in ("archive", "unarchive"):
            run["storage_state"] = "ARCHIVED" if verb == "archive" else "AVAILABLE"
        elif verb == "retry":
            run["state"] = "PENDING"
        return {}

    def _kfp_create_recurring(self, request):
        job = dict(request.body) if isinstance(request.body, dict) else {}
        if not job.get("display_name"):
            raise _HttpError(400, "Recurring run display_name is empty")
        if job.get("experiment_id"):
            self._kfp_experiment(job["experiment_id"])
        trigger = job.get("trigger") or {}
        cron = (trigger.get("cron_schedule") or {}).get("cron")
        # KFP's cron (robfig/cron v1) starts with a seconds field. The real server accepts 5 fields too
        # and silently reads them shifted (kubeflow/kubeflow#5306); the stand-in refuses them instead.
        if cron is not None and len(cron.split()) != 6:
            raise _HttpError(400, f"stand-in: KFP cron {cron!r} needs 6 fields, seconds first (e.g. '0 0 3 * * *')")
        if cron is None and not (trigger.get("periodic_schedule") or {}).get("interval_second"):
            raise _HttpError(400, "A recurring run needs a cron or periodic trigger")
        self._kfp_spec_check(job)
        now = self._now()
        job.update(recurring_run_id=str(uuid.uuid4()), created_at=now, updated_at=now,
                   status="DISABLED" if job.get("mode") == "DISABLE" else "ENABLED")
        job.setdefault("mode", "ENABLE")
        self.kfp_recurring_runs[job["recurring_run_id"]] = job
        return job

    def _kfp_recurring(self, request) -> dict:
        job_id = request.group("id")
        if job_id not in self.kfp_recurring_runs:
            raise _HttpError(404, f"Recurring run {job_id} not found")
        return self.kfp_recurring_runs[job_id]

    def _kfp_get_recurring(self, request):
        return self._kfp_recurring(request)

    def _kfp_list_recurring(self, request):
        items = list(self.kfp_recurring_runs.values())
        if request.query.get("experiment_id"):
            items = [r for r in items if r.get("experiment_id") == request.query["experiment_id"]]
        items = self._kfp_filter(items, request.query)
        # kfp_server_api reads this one list under a camelCase key.
        return {"recurringRuns": items, "total_size": len(items)} if items else {}

    def _kfp_delete_recurring(self, request):
        del self.kfp_recurring_runs[self._kfp_recurring(request)["recurring_run_id"]]
        return {}

    def _kfp_enable_recurring(self, request):
        job = self._kfp_recurring(request)
        enable = request.group("verb") == "enable"
        job.update(mode="ENABLE" if enable else "DISABLE", status="ENABLED" if enable else "DISABLED",
                   updated_at=self._now())
        return {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients' connection pools expect
    timeout = 60  # an idle kept-alive connection ends its thread after this

    def _serve(self):
        length = self.headers.get("Content-Length")
        if length is not None:
            data = self.rfile.read(int(length))
        elif "chunked" in self.headers.get("Transfer-Encoding", ""):
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunk = self.rfile.read(size + 2)
                if size == 0:
                    break
                data += chunk[:-2]
            data = bytes(data)
        else:
            data = b""
        raw_path, _, raw_query = self.path.partition("?")
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = self.server.standin._handle(self.command, raw_path, raw_query, headers, data)
        body = reply.body
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            reply.headers.setdefault("Content-Type", "application/json; charset=UTF-8")
        body = body or b""
        self.send_response(reply.status)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass


if __name__ == "__main__":  # a manual run: python tests/cloud/standin.py
    standin = StandIn()
    print(standin.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        standin.close()
