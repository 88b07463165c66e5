"""The request side of the serving protocol: Vertex AI's / TF Serving's v1 body and the Open
Inference Protocol (v2) request decoded into encoded image bytes, and the 4xx errors that name
the instance and the problem."""

from __future__ import annotations

import base64
import binascii

INPUT_NAME = "image_bytes"
EXPECTED_INSTANCE = '{"image_bytes": {"b64": "<base64 of a JPEG, PNG, GIF, BMP or WebP file>"}}'


class RequestError(Exception):
    """A request the server refuses: answered with ``status`` and a JSON error naming the
    instance (when one is to blame) and the problem."""

    def __init__(self, message: str, status: int = 400, index: int | None = None, problem: str = "bad_request"):
        super().__init__(message)
        self.message, self.status, self.index, self.problem = message, status, index, problem

    def as_json(self) -> dict:
        body: dict[str, object] = {"error": self.message, "problem": self.problem}
        if self.index is not None:
            body["instance"] = self.index
        return body


def bad_instance(index: int, problem: str, text: str) -> RequestError:
    return RequestError(f"instances[{index}]: {text}", 400, index, problem)


# --- decoding requests ------------------------------------------------------------------------


def images_from_instances(instances) -> list[bytes]:
    """Vertex AI's / TF Serving's body -> encoded image bytes, one per instance.

    Accepts ``{"image_bytes": {"b64": ...}}`` and the bare ``{"b64": ...}`` that Vertex AI batch
    prediction sends for each file of a file list. Anything else is refused, naming the instance."""
    if instances is None:
        raise RequestError(f'the body has no "instances"; send {{"instances": [{EXPECTED_INSTANCE}]}}.',
                           problem="missing_instances")
    if not isinstance(instances, list):
        raise RequestError(f'"instances" is a {type(instances).__name__}, not a list; send '
                           f'{{"instances": [{EXPECTED_INSTANCE}]}}.', problem="instances_not_a_list")
    if not instances:
        raise RequestError(f'"instances" is empty; send at least one {EXPECTED_INSTANCE}.',
                           problem="empty_instances")
    images = []
    for index, instance in enumerate(instances):
        if isinstance(instance, dict) and set(instance) == {"b64"}:
            value = instance
        elif isinstance(instance, dict) and INPUT_NAME in instance:
            value = instance[INPUT_NAME]
        else:
            what = f"has the keys {sorted(instance)}" if isinstance(instance, dict) else \
                f"is a {type(instance).__name__}"
            raise bad_instance(index, "wrong_key", f"{what}; expected {EXPECTED_INSTANCE}.")
        if not isinstance(value, dict) or not isinstance(value.get("b64"), str):
            raise bad_instance(index, "wrong_key", f'image_bytes must be {{"b64": "<base64 string>"}}; expected '
                                                   f"{EXPECTED_INSTANCE}.")
        images.append(_b64(value["b64"], index))
    return images


def _b64(text: str, index: int) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        # Browsers and some clients send URL-safe base64; accept it before giving up.
        try:
            data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise bad_instance(index, "not_base64", "image_bytes.b64 is not valid base64.") from None
    if not data:
        raise bad_instance(index, "empty_image", "image_bytes is empty (0 bytes).")
    return data


def images_from_v2(request) -> list[bytes]:
    """An Open Inference Protocol (v2) request -> encoded image bytes. The input is the BYTES
    tensor ``image_bytes``: raw bytes with the binary-data extension, base64 strings in JSON."""
    inputs = list(request.inputs or [])
    tensor = next((t for t in inputs if t.name == INPUT_NAME), inputs[0] if len(inputs) == 1 else None)
    if tensor is None:
        names = [t.name for t in inputs]
        raise RequestError(f"the request's inputs are {names}; send one BYTES input named {INPUT_NAME!r}.",
                           problem="wrong_key")
    if tensor.datatype != "BYTES":
        raise RequestError(f"input {tensor.name!r} is {tensor.datatype}; {INPUT_NAME!r} must be BYTES (encoded "
                           "image files).", problem="wrong_datatype")
    if getattr(tensor, "_raw_data", None) is not None:
        values = list(tensor.as_numpy().reshape(-1))
    else:
        values = list(_flatten(tensor.data or []))
    if not values:
        raise RequestError(f"input {INPUT_NAME!r} holds no images; send at least one.", problem="empty_instances")
    images = []
    for index, value in enumerate(values):
        if isinstance(value, str):
            images.append(_b64(value, index))
        elif isinstance(value, bytes) and value:
            images.append(value)
        else:
            raise bad_instance(index, "empty_image", "image_bytes is empty (0 bytes).")
    return images


def _flatten(values):
    for value in values:
        if isinstance(value, list):
            yield from _flatten(value)
        else:
            yield value

