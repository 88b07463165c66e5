"""``tlp predict``: classify image files with a model directory or a registered version; a folder of
any size into a .jsonl/.csv file; a ``gs://`` folder as a Vertex AI batch prediction job."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from tlp.components.lib.dataprep.sources import IMAGE_EXTENSIONS, read_failure
from tlp.components.lib.model import load_servable
from tlp.components.lib.registry import open_registry
from tlp.components.lib.registry.vertex_backend import VertexRegistry
from tlp.components.lib.serving import Predictor, Unreadable
from tlp.components.lib.settings import PredictOptions
from tlp.components.lib.specs import ConfigError
from tlp.pipelines.environment import check_credentials


def resolve_model(model: str, registry_uri: str) -> str:
    """A model directory as is; otherwise NAME/VERSION or NAME@ALIAS looked up in the registry."""
    if os.path.isdir(model):
        return model
    if "/" not in model and "@" not in model:
        raise ConfigError(
            f"model {model!r} is neither a directory nor NAME/VERSION or NAME@champion; "
            "pass a model directory or a registered version."
        )

    return open_registry(registry_uri).model_dir(model)


def predict_files(model: str, image_paths: list[str], registry_uri: str) -> list[dict]:
    import tensorflow as tf


    for path in image_paths:
        if not os.path.isfile(path):
            raise ConfigError(f"image {path!r} does not exist; give paths of image files.")
    serve = load_servable(resolve_model(model, registry_uri))
    rows = []
    for path in image_paths:
        with open(path, "rb") as handle:
            data = handle.read()
        try:
            result = serve(image_bytes=tf.constant([data]))
        except tf.errors.InvalidArgumentError as error:
            reason = error.message.splitlines()[0]
            raise ConfigError(
                f"image {path!r} could not be decoded ({reason}); pass a JPEG, PNG, GIF or BMP file."
            ) from error
        rows.append({
            "image": path,
            "label": result["label"].numpy()[0].decode(),
            "probability": float(result["score"].numpy()[0]),
            "probabilities": [float(p) for p in result["probabilities"].numpy()[0]],
        })
    return rows


# --- a folder of any size: tlp predict MODEL DIR --output preds.jsonl|.csv -------------------

MAX_FILE_BYTES = 64 << 20  # a larger "image" is refused rather than read into memory
SHOWN_UNREADABLE = 20


@dataclass
class PredictSummary:
    output: str
    predicted: int = 0
    unreadable: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)  # the first unreadable files and why
    counts: dict[str, int] = field(default_factory=dict)  # images per predicted label
    seconds: float = 0.0


def iter_files(paths: list[str]) -> Iterator[str]:
    """Every regular file named or under a named folder, folders walked lazily in sorted order."""
    for path in paths:
        if os.path.isdir(path):
            for directory, subdirs, names in os.walk(path):
                subdirs.sort()
                for name in sorted(names):
                    yield os.path.join(directory, name)
        elif os.path.isfile(path):
            yield path
        else:
            raise ConfigError(f"{path!r} is neither a file nor a folder; give image files or folders of them.")


def _read_limited(path: str) -> tuple[bytes | None, str]:
    """The file's bytes, or why it is left out (too big, empty, a link to nothing). A read that
    fails otherwise (permissions, I/O) stops the run: it says nothing about the photo."""
    if os.path.islink(path) and not os.path.exists(path):
        return None, f"a link to a missing file ({os.readlink(path)})"
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            return None, f"{size / 2**20:.0f} MB, larger than {MAX_FILE_BYTES >> 20} MB"
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise read_failure(path, error) from error
    if not data:
        return None, "empty file (0 bytes)"
    return data, ""


class _Writer:
    """One row per image to .jsonl, .csv or (no file) stdout as JSON lines."""

    def __init__(self, output: str, class_names: list[str]):
        self.class_names = class_names
        self.kind = "csv" if output.lower().endswith(".csv") else "jsonl"
        self._handle = open(output, "w", newline="", encoding="utf-8") if output else sys.stdout
        self._csv = None
        if self.kind == "csv":
            import csv

            self._csv = csv.writer(self._handle)
            self._csv.writerow(["image", "label", "score", *[f"p_{name}" for name in class_names], "error"])

    def write(self, path: str, prediction=None, error: str = "") -> None:
        if self._csv is not None:
            if prediction is None:
                self._csv.writerow([path, "", "", *[""] * len(self.class_names), error])
            else:
                self._csv.writerow([path, prediction.label, repr(prediction.score),
                                    *[repr(p) for p in prediction.probabilities], ""])
            return
        row = {"image": path, **(prediction.as_dict() if prediction else {"error": error})}
        self._handle.write(json.dumps(row) + "\n")

    def close(self) -> None:
        if self._handle is not sys.stdout:
            self._handle.close()


def predict_to_file(model: str, paths: list[str], output: str, registry_uri: str, batch_size: int = 32,
                    echo=print) -> PredictSummary:
    """Classifies every file under ``paths`` with the model's serving signature (what ``tlp
    serve`` runs), ``batch_size`` at a time, writing one row per file as it goes: memory stays
    flat whatever the folder's size. Unreadable files get a row with their reason."""
    import time

    from tqdm import tqdm


    if output and not output.lower().endswith((".jsonl", ".csv")):
        raise ConfigError(f"--output {output!r}: name a .jsonl or .csv file.")
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: use 1 or more.")
    total = sum(1 for _ in iter_files(paths))  # a counting pass: names only, for the progress bar
    if not total:
        raise ConfigError(f"no files under {', '.join(paths)}; give image files or folders of them.")
    predictor = Predictor(resolve_model(model, registry_uri))
    summary = PredictSummary(output or "-")
    writer = _Writer(output, predictor.class_names)
    started = time.monotonic()
    progress = tqdm(total=total, unit="img", desc="tlp predict", file=sys.stderr, disable=None)

    def unreadable(path: str, reason: str) -> None:
        summary.unreadable += 1
        if len(summary.examples) < SHOWN_UNREADABLE:
            summary.examples.append((path, reason))
        writer.write(path, error=reason)

    def flush(batch: list[tuple[str, bytes]]) -> None:
        for (path, _), result in zip(batch, predictor([data for _, data in batch]), strict=True):
            if isinstance(result, Unreadable):
                unreadable(path, f"not an image TensorFlow can decode ({result.reason})")
            else:
                summary.predicted += 1
                summary.counts[result.label] = summary.counts.get(result.label, 0) + 1
                writer.write(path, result)
        progress.update(len(batch))

    try:
        batch: list[tuple[str, bytes]] = []
        for path in iter_files(paths):
            data, reason = _read_limited(path)
            if data is None:
                unreadable(path, reason)
                progress.update(1)
                continue
            batch.append((path, data))
            if len(batch) == batch_size:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
    finally:
        progress.close()
        writer.close()
    summary.seconds = time.monotonic() - started
    if output:
        echo(_describe(summary))
    return summary


def _describe(summary: PredictSummary) -> str:
    counts = ", ".join(f"{label} {count}" for label, count in sorted(summary.counts.items()))
    lines = [f"tlp predict: {summary.predicted} images classified ({counts or 'none'}) in {summary.seconds:.1f} s; "
             f"{summary.unreadable} unreadable; written to {summary.output}"]
    for path, reason in summary.examples:
        lines.append(f"  unreadable: {path}: {reason}")
    if summary.unreadable > len(summary.examples):
        lines.append(f"  ... and {summary.unreadable - len(summary.examples)} more, each with its reason in "
                     f"{summary.output}")
    return "\n".join(lines)


# --- a gs:// folder on Vertex AI: --batch-job -------------------------------------------------


def _list_images(folder: str, project: str) -> Iterator[str]:
    from google.cloud import storage


    bucket, _, prefix = folder[len("gs://"):].partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    try:  # the client retries 429, 5xx and timeouts; what is left is refused or still failing
        for blob in storage.Client(project=project).list_blobs(bucket, prefix=prefix):
            if blob.name.lower().endswith(IMAGE_EXTENSIONS):
                yield f"gs://{bucket}/{blob.name}"
    except Exception as error:  # one sentence: the bucket and the role to grant, or what still failed
        raise read_failure(folder, error) from error


def run_batch_job(model: str, sources: list[str], registry_uri: str, options: PredictOptions, echo=print):
    """Classifies the images under a ``gs://`` folder with a Vertex AI BatchPredictionJob on
    ``options.batch_replicas`` x ``options.batch_machine_type`` and waits for it, writing under
    ``options.output``. The job reads a file list (one ``gs://`` URI per line, written next to the output)
    and sends each file to the model's serving container as ``{"b64": ...}``, which ``tlp serve``
    accepts; predictions land as JSON lines under ``output``."""
    import datetime
    import tempfile

    from google.cloud import storage

    output, machine_type, replicas = options.output, options.batch_machine_type, options.batch_replicas
    if not registry_uri.startswith("vertex://"):
        raise ConfigError(f"--batch-job runs on Vertex AI and needs --registry vertex://PROJECT/REGION, not "
                          f"{registry_uri}; without --batch-job, tlp predict classifies a local folder here.")
    if len(sources) != 1 or not sources[0].startswith("gs://"):
        raise ConfigError(f"--batch-job takes one gs:// folder of images, not {' '.join(sources)}.")
    if not output.startswith("gs://"):
        raise ConfigError(f"--batch-job writes to Cloud Storage: pass --output gs://BUCKET/PREFIX, not {output!r}.")
    check_credentials()
    registry = VertexRegistry(registry_uri)  # the vertex:// check above: the Vertex backend's own calls follow
    version = registry.model_version(model)
    project = registry.location.project
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    list_uri = f"{output.rstrip('/')}/inputs/file-list-{stamp}.txt"
    count = 0
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as listing:
        for uri in _list_images(sources[0], project):
            listing.write(uri + "\n")
            count += 1
        listing.flush()
        if not count:
            raise ConfigError(f"no image files under {sources[0]} (looked for {', '.join(IMAGE_EXTENSIONS)}).")
        bucket, _, name = list_uri[len("gs://"):].partition("/")
        storage.Client(project=project).bucket(bucket).blob(name).upload_from_filename(listing.name)
    echo(f"tlp predict: {count} images under {sources[0]} listed in {list_uri}; starting a batch prediction job "
         f"with {version.display_name} version {version.version_id} on {replicas} x {machine_type}", flush=True)
    aiplatform = registry._aiplatform
    job = aiplatform.BatchPredictionJob.create(
        job_display_name=f"{version.display_name}-v{version.version_id}-{stamp}",
        model_name=version.versioned_resource_name,
        instances_format="file-list", predictions_format="jsonl",
        gcs_source=[list_uri], gcs_destination_prefix=output,
        machine_type=machine_type, starting_replica_count=replicas, max_replica_count=replicas,
        labels={"tlp": "batch-prediction"}, sync=True,
    )
    location = job.resource_name.split("/")[3]
    echo(f"tlp predict: {job.resource_name} {job.state.name}; predictions in {job.output_info.gcs_output_directory}\n"
         f"  console: https://console.cloud.google.com/vertex-ai/locations/{location}/batch-predictions/"
         f"{job.resource_name.rsplit('/', 1)[-1]}?project={project}", flush=True)
    return job
