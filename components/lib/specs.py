"""User-facing settings: parsing and checking, before any expensive work starts.

Everything here is plain Python (no TensorFlow), so the CLI can reject a bad setting in
milliseconds and the components can check the same rules again where they run.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit


class TlpError(Exception):
    """Every error tlp raises on purpose. ``exit_code`` is what the CLI exits with; the message is
    one sentence naming the problem and the fix, printed without a traceback."""

    exit_code = 1


class ServiceError(TlpError):
    """A run, a step or a service (Vertex AI, a registry, a server) failed: exit code 1."""

    exit_code = 1


class ConfigError(TlpError, ValueError):
    """A setting is wrong. The message is one sentence naming the value and the fix: exit code 2."""

    exit_code = 2


class NotFound(ConfigError):
    """What a command names (a registered model, a version, a previous champion) does not exist:
    exit code 3."""

    exit_code = 3


# Keras application constructors we support, with how each expects its pixels.
# "minus_one_to_one": the model scales [0, 255] to [-1, 1] itself (MobileNetV2 tutorial);
# "raw": the application carries its own preprocessing and takes [0, 255].
# "layers": the base's layer count without its top (what --fine-tune-at indexes) when it is the same
# at every alpha and image size, so checking a cut needs no TensorFlow; None: the base is built to
# count (MobileNetV3Large has 262 or 263). tests/unit/test_model.py checks each against Keras.
BASES: dict[str, dict] = {
    "MobileNetV2": {"scaling": "minus_one_to_one", "alpha": True, "layers": 154},
    "MobileNetV3Small": {"scaling": "raw", "alpha": True, "layers": 229},
    "MobileNetV3Large": {"scaling": "raw", "alpha": True, "layers": None},
    "EfficientNetB0": {"scaling": "raw", "alpha": False, "layers": 237},
    "ResNet50V2": {"scaling": "minus_one_to_one", "alpha": False, "layers": 190},
}

DEFAULT_DATA = "tfds:cats_vs_dogs"
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
SAMPLE_PER_CLASS = 300
MIN_IMAGE_SIZE = 32


@dataclass(frozen=True)
class DataSpec:
    """Where the images come from: ``tfds:NAME``, ``folder:PATH`` or ``sample[:N]``."""

    kind: str  # "tfds" | "folder" | "sample"
    name: str = ""  # tfds data set name
    path: str = ""  # folder path or gs:// URI
    per_class: int = SAMPLE_PER_CLASS  # sample images per class

    def __str__(self) -> str:
        if self.kind == "tfds":
            return f"tfds:{self.name}"
        if self.kind == "folder":
            return f"folder:{self.path}"
        return f"sample:{self.per_class}"

    @property
    def short_name(self) -> str:
        """A registry-friendly name for the data (default registered-model name)."""
        if self.kind == "tfds":
            raw = self.name.split("/")[0].split(":")[0]
        elif self.kind == "folder":
            raw = os.path.basename(self.path.rstrip("/")) or "images"
        else:
            raw = "sample"
        return re.sub(r"[^A-Za-z0-9_-]+", "-", raw).strip("-") or "images"


def parse_data_spec(spec: str) -> DataSpec:
    """Parses ``--data``. Raises ConfigError naming the spec and the accepted forms."""
    forms = "use tfds:NAME (e.g. tfds:cats_vs_dogs), folder:PATH (one subfolder per class) or sample[:N]"
    spec = (spec or "").strip()
    kind, _, rest = spec.partition(":")
    if kind == "tfds" and rest:
        return DataSpec(kind="tfds", name=rest)
    if kind == "folder" and rest:
        return DataSpec(kind="folder", path=rest)
    if kind == "sample":
        if not rest:
            return DataSpec(kind="sample")
        if rest.isdigit() and int(rest) >= 10:
            return DataSpec(kind="sample", per_class=int(rest))
        raise ConfigError(
            f"--data {spec!r} asks for {rest!r} sample images per class; "
            "give a whole number of at least 10, e.g. sample:200."
        )
    raise ConfigError(f"--data {spec!r} is not a data spec I know; {forms}.")


LITERT_VARIANTS = ("float32", "float16", "dynamic", "int8")


def parse_litert_variants(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"int8,float16"`` -> ``["int8", "float16"]`` (order kept, duplicates dropped); empty -> []."""
    items = text.split(",") if isinstance(text, str) else list(text)
    variants: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item not in LITERT_VARIANTS:
            raise ConfigError(
                f"unknown LiteRT variant {item!r}; use one or more of {', '.join(LITERT_VARIANTS)}, comma-separated "
                "(e.g. --export-litert int8,float16)."
            )
        if item not in variants:
            variants.append(item)
    return variants


def parse_weights_spec(spec: str) -> str:
    """Parses ``--weights``: ``imagenet``, ``none`` or a local weights file.

    Returns ``"imagenet"``, ``"none"`` or the absolute path of the file.
    """
    value = (spec or "").strip()
    if value.lower() in ("imagenet", "none"):
        return value.lower()
    if value.endswith(".h5") or value.endswith(".weights.h5"):
        path = os.path.abspath(os.path.expanduser(value))
        if not os.path.isfile(path):
            raise ConfigError(
                f"--weights file {value!r} does not exist; give the path of a Keras .h5 weights "
                "file of the base model without its top, or use imagenet or none."
            )
        return path
    raise ConfigError(
        f"--weights {spec!r} is not understood; use imagenet, none, or the path of a .h5 "
        "weights file of the base model without its top."
    )


def parse_devices(spec: str) -> tuple[str, int]:
    """Parses ``--devices``: ``auto``, ``cpu``, ``cpu:N`` or ``gpu``/``gpu:N``.

    Returns (kind, count); count 0 means "all there are".
    """
    value = (spec or "auto").strip().lower()
    match = re.fullmatch(r"(auto|cpu|gpu)(?::(\d+))?", value)
    if not match or (match.group(1) == "auto" and match.group(2)):
        raise ConfigError(
            f"--devices {spec!r} is not understood; use auto, cpu, cpu:N (N logical CPU devices, "
            "for testing distribution), or gpu / gpu:N."
        )
    count = int(match.group(2)) if match.group(2) else 0
    if match.group(2) and count < 1:
        raise ConfigError(f"--devices {spec!r} asks for {count} devices; ask for at least 1.")
    return match.group(1), count


def check_base(base: str, alpha: float, image_size: int, weights: str) -> None:
    """Checks the base-model settings."""
    if base not in BASES:
        raise ConfigError(
            f"--base {base!r} is not supported; choose one of {', '.join(sorted(BASES))}."
        )
    if not (isinstance(image_size, int) and image_size >= MIN_IMAGE_SIZE):
        raise ConfigError(
            f"--image-size {image_size!r} is too small; use a whole number of pixels of at least "
            f"{MIN_IMAGE_SIZE} (the tutorial uses 160)."
        )
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ConfigError(f"--alpha {alpha!r} must be a positive width multiplier, e.g. 1.0 or 0.35.")
    if alpha != 1.0 and not BASES[base]["alpha"]:
        raise ConfigError(f"--alpha {alpha} has no meaning for {base}; leave it at 1.0.")
    imagenet_alphas = {
        "MobileNetV2": (0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
        "MobileNetV3Small": (0.75, 1.0),
        "MobileNetV3Large": (0.75, 1.0),
    }
    if weights == "imagenet" and base in imagenet_alphas and alpha not in imagenet_alphas[base]:
        raise ConfigError(
            f"--alpha {alpha} has no ImageNet weights for {base}; use one of "
            f"{', '.join(map(str, imagenet_alphas[base]))}, or --weights none."
        )


def check_precision(precision: str, weights: str) -> None:
    if precision == "mixed_float16" and weights == "none":
        # Random-weight features are ~1e-12, far below float16's smallest value (6e-8).
        raise ConfigError(
            "--mixed-precision mixed_float16 with --weights none would underflow the random-weight "
            "features to zero; use mixed_bfloat16, float32, or ImageNet weights."
        )


def check_fine_tune_at(fine_tune_at: int, layer_count: int, base: str) -> None:
    """fine_tune_at must leave at least one layer of the base to train."""
    if fine_tune_at >= layer_count:
        raise ConfigError(
            f"--fine-tune-at {fine_tune_at} is beyond the {layer_count} layers of {base}; "
            f"use a value below {layer_count} (tutorial: 100)."
        )


# --- registry URIs ----------------------------------------------------------------------------

VERTEX_SCHEME = "vertex://"
VERTEX_OPTIONS = ("api_endpoint", "staging_bucket", "serving_image", "image_repo")
_PROJECT = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
_REGION = re.compile(r"[a-z]+-[a-z]+\d+")


@dataclass(frozen=True)
class VertexUri:
    project: str
    region: str
    model: str = ""
    options: dict = field(default_factory=dict)

    def __str__(self) -> str:
        path = "/".join(p for p in (self.project, self.region, self.model) if p)
        query = f"?{urlencode(sorted(self.options.items()), safe=':/')}" if self.options else ""
        return f"{VERTEX_SCHEME}{path}{query}"


def parse_vertex_uri(uri: str) -> VertexUri:
    """Parses and checks ``vertex://PROJECT/REGION[/MODEL][?OPTIONS]``."""
    form = "vertex://PROJECT/REGION[/MODEL], e.g. vertex://my-project/us-central1/cats-vs-dogs"
    parts = urlsplit(uri)
    path = [p for p in (parts.netloc + parts.path).split("/") if p]
    if parts.scheme != "vertex" or len(path) not in (2, 3):
        raise ConfigError(f"--registry {uri!r} is not a Vertex AI registry URI; write it as {form}.")
    project, region = path[0], path[1]
    if not _PROJECT.fullmatch(project):
        raise ConfigError(
            f"--registry {uri!r}: {project!r} is not a Google Cloud project ID (6-30 lowercase letters, "
            f"digits or hyphens); write it as {form}."
        )
    if not _REGION.fullmatch(region):
        raise ConfigError(f"--registry {uri!r}: {region!r} is not a region such as us-central1; write it as {form}.")
    options = dict(parse_qsl(parts.query))
    unknown = sorted(set(options) - set(VERTEX_OPTIONS))
    if unknown:
        raise ConfigError(
            f"--registry {uri!r}: unknown option(s) {', '.join(unknown)}; known: {', '.join(VERTEX_OPTIONS)}."
        )
    bucket = options.get("staging_bucket", "")
    if bucket and not bucket.startswith("gs://"):
        raise ConfigError(f"--registry {uri!r}: staging_bucket must be a gs:// URI, not {bucket!r}.")
    return VertexUri(project, region, path[2] if len(path) == 3 else "", options)


def check_registry_uri(uri: str) -> str:
    """Validates a registry URI early (before any training). Returns it normalised."""
    if uri == "vertex":
        raise ConfigError(
            "--registry vertex needs a project and region, which only a cloud run (tlp submit) knows; "
            "here write vertex://PROJECT/REGION[/MODEL]."
        )
    if uri.startswith("vertex://"):
        return str(parse_vertex_uri(uri))
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        return "sqlite:///" + os.path.abspath(path)
    if uri.startswith(("http://", "https://", "databricks")):
        from urllib.parse import urlsplit

        if urlsplit(uri).password or urlsplit(uri).username:
            # A URI is a pipeline parameter: it would land in logs and compiled pipelines.
            raise ConfigError(
                "--registry holds credentials in its URI; remove them and set "
                "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead."
            )
        return uri
    raise ConfigError(
        f"--registry {uri!r} is not a registry URI I know; use sqlite:///PATH.db (local MLflow "
        "registry), http(s)://HOST (an MLflow server) or vertex://PROJECT/REGION[/MODEL] (Vertex AI)."
    )
