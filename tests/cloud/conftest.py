"""The ``standin`` fixture: a loopback Google Cloud + Kubeflow Pipelines API for one test.

It sets real ``os.environ`` entries (through monkeypatch), so subprocesses started by the test
talk to the same stand-in: ``GOOGLE_APPLICATION_CREDENTIALS`` (a throwaway key whose token_uri is
the stand-in), ``STORAGE_EMULATOR_HOST``, ``GOOGLE_CLOUD_PROJECT=tlp-test``; and it removes what
could lead to a real project. The code under test still calls ``aiplatform.init(project="tlp-test",
location=..., api_endpoint=standin.url, api_transport="rest")`` itself (an ``http://`` endpoint
only works with the REST transport); ``kfp.Client(host=standin.url)`` needs nothing more.

In this process only, it also makes ``PipelineJob.wait()`` poll every 0.05 s instead of 5 s and
sends the SDK's Resource Manager look-up to the stand-in. aiplatform's global config is reset
before and after each test.
"""

import functools
import json
import os
import types

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.cloud.dataflow_api import add_dataflow_api
from tests.cloud.metadata_api import add_metadata_api
from tests.cloud.standin import StandIn

# Anything that could lead a client to a real project, real credentials or the metadata server.
_REAL_CLOUD_ENV = (
    "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "GCP_PROJECT",
    "CLOUDSDK_CORE_PROJECT", "CLOUDSDK_CONFIG", "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE", "GOOGLE_CLOUD_QUOTA_PROJECT",
    "GOOGLE_CLOUD_LOCATION", "GOOGLE_CLOUD_REGION", "CLOUD_ML_REGION", "CLOUD_ML_PROJECT_ID", "GOOGLE_API_KEY",
    "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_CLOUD_UNIVERSE_DOMAIN", "GOOGLE_API_USE_CLIENT_CERTIFICATE",
    "GOOGLE_API_USE_MTLS_ENDPOINT", "GOOGLE_API_PREVENT_AGENT_TOKEN_SHARING_FOR_GCP_SERVICES",
    "STORAGE_EMULATOR_HOST", "API_ENDPOINT_OVERRIDE", "AIP_PROJECT_NUMBER",
    "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT", "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME",
    "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME", "KF_PIPELINES_SA_TOKEN_PATH",
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
)

# aiplatform's PipelineJob.wait() sleeps this long between GETs (5 s in the SDK).
FAST_POLL_SECONDS = 0.05


@functools.lru_cache(maxsize=1)
def _private_key_pem() -> str:
    # One RSA key per test process: generating it takes ~0.1 s and it protects nothing.
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def write_service_account_key(path, token_uri: str, project_id: str = StandIn.project_id) -> str:
    """A throwaway service-account key whose token exchange goes to ``token_uri``."""
    pem = _private_key_pem()
    email = f"{project_id}@{project_id}.iam.gserviceaccount.com"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": project_id, "private_key_id": "standin-key",
        "private_key": pem, "client_email": email, "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{email}",
        "universe_domain": "googleapis.com",
    }))
    return str(path)


def _reset_aiplatform():
    from google.cloud.aiplatform import initializer
    from google.cloud.aiplatform.metadata import metadata

    # Everyone imported this one object, so reset it in place rather than replacing it.
    initializer.global_config.__init__()
    metadata._experiment_tracker.reset()


@pytest.fixture
def standin(tmp_path, monkeypatch):
    """A started ``StandIn`` (with the Metadata API of Vertex AI Experiments) with the environment
    pointing at it; closed after the test."""
    server = add_dataflow_api(add_metadata_api(StandIn()))
    try:
        _point_at(server, tmp_path, monkeypatch)
        _reset_aiplatform()
        yield server
    finally:
        if os.environ.get("STANDIN_TRACE"):  # STANDIN_TRACE=1 pytest -s: see what the clients sent
            print(f"\n--- stand-in requests ---\n{server.dump()}")
        _reset_aiplatform()
        server.close()


def _point_at(server, tmp_path, monkeypatch):
    from google.cloud import resourcemanager
    from google.cloud.aiplatform import pipeline_jobs
    from google.cloud.aiplatform.utils import resource_manager_utils

    for name in _REAL_CLOUD_ENV:
        monkeypatch.delenv(name, raising=False)
    gcloud_dir = tmp_path / "gcloud-config"
    gcloud_dir.mkdir()
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS",
                       write_service_account_key(tmp_path / "standin-key.json", f"{server.url}/token"))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", server.project_id)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(gcloud_dir))  # no gcloud user credentials
    # google-auth must never try the GCE metadata server (a non-loopback address).
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")

    # PipelineJob.wait() reads this module constant at each call (5 s in the SDK).
    monkeypatch.setattr(pipeline_jobs, "_JOB_WAIT_TIME", FAST_POLL_SECONDS)
    # The SDK asks Resource Manager (gRPC by default, not redirectable) who owns an existing bucket,
    # and retries ~50 s offline; send it over REST to the stand-in instead (this process only).
    monkeypatch.setattr(resource_manager_utils, "resourcemanager", types.SimpleNamespace(
        ProjectsClient=functools.partial(resourcemanager.ProjectsClient, transport="rest",
                                         client_options={"api_endpoint": server.url})))
