"""Serving one exported model over HTTP, on the KServe Python model server.

The model is the SavedModel that fine-tuning exports (``model.export_servable``): its serving
signature takes encoded image bytes and returns probabilities, label, class index and score. This
package wraps it as a KServe model and builds the server's FastAPI app from KServe's own parts:
its v1 protocol (``POST /v1/models/NAME:predict``, TF-Serving shaped), the v2 Open Inference
Protocol (``/v2/models/NAME/infer``), health and readiness routes and Prometheus ``/metrics``.
What we add: the request body Vertex AI endpoints take (``{"instances": [{"image_bytes": {"b64":
...}}]}``), micro-batching of concurrent requests, a body-size limit, 4xx errors that name the
instance and the problem, Vertex AI's custom-container routes and a page at ``/``.

One module per job: ``protocol`` (requests and their errors), ``predictor`` (the model, its
card, the warm-up), ``batching`` (``MicroBatcher``), ``kserve_model`` (the KServe adapter and
metrics), ``app`` (the ASGI app, the page, the body limit, uvicorn), ``harness`` (a server on a
thread or in its own process, waiting until ready) and ``__main__`` (``python -m
tlp.components.lib.serving``). How it batches and what it accepts is ``settings.ServeOptions``.

Nothing heavy is imported at module level: TensorFlow and KServe load when a server is built.
"""

from tlp.components.lib.serving.app import create_app, drift_state, run_server, watch_drift
from tlp.components.lib.serving.harness import free_port, log_tail, running_in_thread, server_process, wait_until_ready
from tlp.components.lib.serving.predictor import ModelCard, Prediction, Predictor, Unreadable, load_card, warm_up
from tlp.components.lib.serving.protocol import RequestError

__all__ = [
    "ModelCard", "Prediction", "Predictor", "RequestError", "Unreadable", "create_app", "drift_state", "free_port",
    "load_card", "log_tail", "run_server", "running_in_thread", "server_process", "wait_until_ready", "warm_up",
    "watch_drift",
]
