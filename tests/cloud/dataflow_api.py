"""The Dataflow API (v1b3) as Beam 2.77's DataflowRunner uses it, added to a ``StandIn``.

The runner stages its files through the Cloud Storage API (the stand-in's, by
``STORAGE_EMULATOR_HOST``), then, through google-cloud-dataflow-client's REST transport (it picks
REST when the ``dataflow_endpoint`` names localhost), creates the job
(``POST /v1b3/projects/P/locations/L/jobs``), polls it (``GET .../jobs/ID``) and reads its messages
(``GET .../jobs/ID/messages``) until it ends. Beam removes files through Cloud Storage's batch
API (``POST /batch/storage/v1``: object deletes, each an HTTP request in a multipart body),
answered here too. The stand-in runs no worker: a job moves from pending to
``standin.dataflow_outcome`` (``JOB_STATE_FAILED`` by default, with
``standin.dataflow_error`` as its error message). What was sent is kept in ``standin.dataflow_jobs``.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from tests.cloud.standin import StandIn, _HttpError, _Reply

_JOBS = r"^/v1b3/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/jobs"


def add_dataflow_api(standin: StandIn) -> StandIn:
    jobs: dict[str, dict] = {}
    # setattr: the stand-in's class declares none of these (metadata_api.py adds its own the same way)
    setattr(standin, "dataflow_jobs", jobs)  # noqa: B010
    setattr(standin, "dataflow_outcome", "JOB_STATE_FAILED")  # noqa: B010
    setattr(standin, "dataflow_error", "Workflow failed. Causes: S01:ReadDigestEncode failed: ZeroDivisionError")  # noqa: B010

    def job(request):
        found = jobs.get(request.group("id"))
        if found is None:
            raise _HttpError(404, f"Dataflow job {request.group('id')} not found")
        return found

    def create(request):
        body = request.body if isinstance(request.body, dict) else {}
        job_id = f"2026-12-03_00_00_00-{len(jobs) + 1}"
        created = {**body, "id": job_id, "projectId": request.group("project"), "location": request.group("location"),
                   "currentState": "JOB_STATE_PENDING", "createTime": standin._now(), "polls": 0}
        jobs[job_id] = created
        return {key: value for key, value in created.items() if key != "polls"}

    def get(request):
        found = job(request)
        found["polls"] += 1
        if found["polls"] > 1:
            found["currentState"] = getattr(standin, "dataflow_outcome")  # noqa: B009
        return {key: value for key, value in found.items() if key not in ("polls", "steps")}

    def messages(request):
        found = job(request)
        if found["currentState"] != "JOB_STATE_FAILED":
            return {"jobMessages": []}
        return {"jobMessages": [{"id": "1", "time": standin._now(), "messageText": getattr(standin, "dataflow_error"),  # noqa: B009

                                 "messageImportance": "JOB_MESSAGE_ERROR"}]}

    def batch(request):
        """Each part's ``DELETE .../storage/v1/b/BUCKET/o/NAME`` done, answered part by part."""
        parts = re.findall(r"^DELETE \S*/storage/v1/b/([^/\s]+)/o/([^?\s]+)\S* HTTP/1.1", request.data.decode(), re.M)
        answers = []
        for number, (bucket, name) in enumerate(parts, 1):
            key = (unquote(bucket), unquote(name))
            found = standin.objects.pop(key, None) is not None
            standin._object_meta.pop(key, None)
            status = "204 No Content" if found else "404 Not Found"
            answers.append(f"--batch_standin\nContent-Type: application/http\nContent-ID: <response-{number}>\n\n"
                           f"HTTP/1.1 {status}\nContent-Length: 0\n\n")
        return _Reply(200, ("".join(answers) + "--batch_standin--\n").encode(),
                      {"Content-Type": "multipart/mixed; boundary=batch_standin"})

    routes = [
        ("POST", r"^/batch/storage/v1$", batch),
        ("POST", _JOBS + r"$", create),
        ("GET", _JOBS + r"/(?P<id>[^/:]+)/messages$", messages),
        ("GET", _JOBS + r"/(?P<id>[^/:]+)$", get),
    ]
    standin._routes[:0] = [(method, re.compile(pattern), handler) for method, pattern, handler in routes]
    return standin
