"""The data-prep step: list the source, run the Beam pipeline on the chosen runner, check the result.

Runners: small data (under ``PARALLEL_MIN_IMAGES`` photos) runs in this process (Beam's
in-memory DirectRunner: no worker to start); more runs on Beam's DirectRunner in its
multi-processing mode, one worker process per core; ``dataflow`` submits the same pipeline to
Dataflow, waits for the job, prints its console link and fails with the job's own error.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass

from tlp.components.lib.dataprep import pipeline as prep_pipeline
from tlp.components.lib.dataprep import progress, records, sources
from tlp.components.lib.dataprep.split import SPLITS
from tlp.components.lib.specs import MIN_IMAGE_SIZE, ConfigError, NotFound, ServiceError, TlpError, parse_data_spec
from tlp.components.lib.version import image_reference

DEFAULT_MAX_SKIPPED_FRACTION = 0.10
# Below this many photos the pipeline runs in this process: starting worker processes (each
# imports Beam, about 1.5 s) would cost more than it saves.
PARALLEL_MIN_IMAGES = 1000
RUNNERS = ("direct", "dataflow")
DATAFLOW_CONSOLE = "https://console.cloud.google.com/dataflow/jobs/{region}/{job}?project={project}"


@dataclass(frozen=True)
class DataflowJob:
    """Where and how the pipeline runs on Dataflow. ``temp_location`` (gs://) holds Beam's temp
    and staging files (and, when the data set goes to a local folder, the shards on their way)."""

    project: str
    region: str
    temp_location: str
    max_workers: int = 10
    machine_type: str = "n1-standard-4"
    service_account: str = ""
    network: str = ""
    image: str = ""  # the workers' container (containers/dataflow.Dockerfile)
    endpoint: str = ""  # the Dataflow API root; tests: a loopback stand-in
    job_name: str = ""

    def check(self) -> None:
        missing = [flag for flag, value in (("--dataflow-project (or --project)", self.project),
                                            ("--dataflow-region (or --region)", self.region),
                                            ("--dataflow-temp-location (or --pipeline-root)", self.temp_location),
                                            ("--dataflow-image", self.image)) if not value]
        if missing:
            raise ConfigError(f"--data-prep-runner dataflow needs {', '.join(missing)}; give them, or use "
                              "--data-prep-runner direct.")
        if not self.temp_location.startswith("gs://"):
            raise ConfigError(f"--dataflow-temp-location {self.temp_location!r} must be a gs:// path (Dataflow's "
                              "workers stage and write there).")


def dataflow_job(data, output_uri: str) -> DataflowJob | None:
    """The Dataflow job the data-prep step's settings (``settings.data``) ask for, or None for the
    DirectRunner. Temp and staging default to a folder beside the step's output (under the
    pipeline root) when that output is on Cloud Storage."""
    if data.data_prep_runner != "dataflow":
        return None
    temp = data.dataflow_temp_location
    if not temp and output_uri.startswith("gs://"):
        temp = output_uri.rstrip("/").rsplit("/", 1)[0] + "/dataflow"
    return DataflowJob(project=data.dataflow_project, region=data.dataflow_region, temp_location=temp,
                       max_workers=data.dataflow_max_workers, machine_type=data.dataflow_machine_type,
                       service_account=data.dataflow_service_account, network=data.dataflow_network,
                       image=data.dataflow_image or image_reference(kind="dataflow"))


# glibc keeps freed memory in one arena per thread and, above its dynamic mmap threshold, in the
# heap: the Beam workers' photo buffers (up to a few MB each) stayed resident. Two arenas and a
# fixed 128 KB threshold (large buffers go back to the system when freed) took the process tree's
# peak over 5,000 camera photos from 1,511 to 976 MB (bench.prep_memory). A user's own setting wins.
MALLOC_TUNING = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072"}
_MALLOPT = {"MALLOC_ARENA_MAX": -8, "MALLOC_MMAP_THRESHOLD_": -3}  # glibc's M_ARENA_MAX, M_MMAP_THRESHOLD


@contextlib.contextmanager
def malloc_tuned():
    """MALLOC_TUNING for the worker processes started inside (they inherit the environment) and,
    through mallopt, for this process's later allocations; the environment is restored after."""
    added = {key: value for key, value in MALLOC_TUNING.items() if key not in os.environ}
    os.environ.update(added)
    try:
        libc = ctypes.CDLL("libc.so.6")
        for key in added:
            libc.mallopt(_MALLOPT[key], int(added[key]))
    except (OSError, AttributeError):  # not glibc: the environment alone (which others ignore)
        pass
    try:
        yield added
    finally:
        for key in added:
            os.environ.pop(key, None)


def worker_processes(requested: int | None, photos: int) -> int:
    """Beam worker processes: ``requested`` (0: this process only), else one per usable core, or
    none for fewer than PARALLEL_MIN_IMAGES photos."""
    if requested is not None:
        if requested < 0:
            raise ConfigError(f"processes={requested!r} must be at least 0 (0 = this process only).")
        return requested
    if photos < PARALLEL_MIN_IMAGES:
        return 0
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def beam_options(processes: int, dataflow: DataflowJob | None = None):
    from apache_beam.options.pipeline_options import PipelineOptions

    if dataflow is None:
        if processes == 0:
            return PipelineOptions(flags=[], runner="DirectRunner", direct_running_mode="in_memory",
                                   direct_num_workers=1)
        return PipelineOptions(flags=[], runner="DirectRunner", direct_running_mode="multi_processing",
                               direct_num_workers=processes)
    temp = dataflow.temp_location.rstrip("/")
    flags = {
        "runner": "DataflowRunner", "project": dataflow.project, "region": dataflow.region,
        "temp_location": f"{temp}/temp", "staging_location": f"{temp}/staging",
        "max_num_workers": dataflow.max_workers, "machine_type": dataflow.machine_type,
        "sdk_container_image": dataflow.image, "sdk_location": "container",
        "job_name": dataflow.job_name or f"tlp-data-prep-{time.strftime('%Y%m%d-%H%M%S')}",
    }
    if dataflow.service_account:
        flags["service_account_email"] = dataflow.service_account
    if dataflow.network:
        flags["network"] = dataflow.network.rsplit("/", 1)[-1]  # Dataflow takes the network's name
    if dataflow.endpoint:
        flags["dataflow_endpoint"] = dataflow.endpoint
    return PipelineOptions(flags=[], **flags)  # flags=[]: not sys.argv, the caller's command line


def run_pipeline(listing: sources.Listing, output_dir: str, *, image_size: int, seed: int, max_workers: int,
                 min_shard_records: int, source_fingerprint: str = "", processes: int | None = None,
                 dataflow: DataflowJob | None = None) -> None:
    """Runs data prep's Beam pipeline; the data set (shards, metadata.json) lands in ``output_dir``.
    ``listing``'s units are written to the run's scratch folder and then dropped from it."""
    import logging

    import apache_beam as beam

    # Beam's runners log their workers' start-up warnings; the step's own lines say what happens.
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    workers = worker_processes(processes, listing.photos)
    target = output_dir
    if dataflow is not None:
        dataflow.check()
        if not output_dir.startswith("gs://"):  # a local run: the workers write to Cloud Storage
            target = f"{dataflow.temp_location.rstrip('/')}/dataset-{os.getpid()}-{int(time.time())}"
    elif "://" not in output_dir:
        os.makedirs(output_dir, exist_ok=True)
    where = (f"Dataflow ({dataflow.project}, {dataflow.region}, up to {dataflow.max_workers} x "
             f"{dataflow.machine_type})" if dataflow else "this process" if workers == 0 else f"{workers} processes")
    print(f"  data prep: {listing.photos} images in {len(listing.units)} units on {where}", flush=True)
    start = time.monotonic()
    pipe = beam.Pipeline(options=beam_options(workers, dataflow))
    scratch = scratch_folder(output_dir, dataflow)
    try:
        sources.write_listing(listing, scratch)
        # The workers read the units from the scratch folder; held here they would cost this process
        # about 170 bytes a photo for the whole run (a path and a tuple each).
        listing.units = []

        def build(progress_folder: str | None = None) -> None:
            prep_pipeline.build(pipe, scratch, target, image_size=image_size, seed=seed, max_workers=max_workers,
                                min_shard_records=min_shard_records, fixed_split=listing.split,
                                source_fingerprint=source_fingerprint, progress_folder=progress_folder)

        if dataflow is None:
            with malloc_tuned(), progress.Reporter(listing.photos) as reporter:
                build(reporter.folder)
                try:
                    pipe.run().wait_until_finish()
                except Exception as error:  # a worker's own one sentence (a failed read), out of Beam's wrapping
                    raise worker_failure(error) from error
        else:
            build()
            _run_on_dataflow(pipe, dataflow, target)
            if target != output_dir:
                _copy_tree(target, output_dir)
    finally:
        _remove_tree(scratch, recursive=True)
    seconds = time.monotonic() - start
    print(f"  data prep: read and wrote {listing.photos} images in {seconds:.1f} s "
          f"({listing.photos / max(seconds, 1e-9):.0f}/s on {where})", flush=True)


def scratch_folder(output_dir: str, dataflow: DataflowJob | None) -> str:
    """Where a run keeps the listing its workers read and the resized images on their way to the
    shards (removed after the run): under the Dataflow job's temp location, else on the output's
    disk beside it (not /tmp, which may be memory), or in a temporary folder for a gs:// output."""
    stamp = f"{os.getpid()}-{time.time_ns()}"
    if dataflow is not None:
        return f"{dataflow.temp_location.rstrip('/')}/prep-{stamp}"
    if "://" in output_dir:
        return tempfile.mkdtemp(prefix="tlp-prep-")
    parent, name = os.path.split(os.path.abspath(output_dir))
    return os.path.join(parent, f".{name}.prep-{stamp}")


_SPECS_ERROR = re.compile(r"^tlp\.components\.lib\.specs\.(ServiceError|ConfigError|NotFound): (.+)$", re.MULTILINE)


def worker_failure(error: Exception) -> TlpError:
    """The one sentence a worker raised on purpose (``worker_error``); any other error is raised again
    as it is."""
    failure = worker_error(error)
    if failure is None:
        raise error
    return failure


def worker_error(error: Exception) -> TlpError | None:
    """The error a worker raised on purpose (``TlpError``: one sentence), as Beam's DirectRunner
    passes it on: in this process the same type with " [while running 'STEP']" (and the cause's
    traceback) appended; from worker processes a RuntimeError holding the traceback's text."""
    if isinstance(error, TlpError):
        kind, text = type(error), str(error)
    else:
        found = _SPECS_ERROR.findall(str(error))
        if not found:
            return None
        name, text = found[-1]
        kind = {"ServiceError": ServiceError, "ConfigError": ConfigError, "NotFound": NotFound}[name]
    sentence = text.split(" [while running '")[0].strip().splitlines()[0]
    return kind(sentence)


def _run_on_dataflow(pipe, dataflow: DataflowJob, target: str) -> None:
    """Submits, prints the console link, waits; a failed job raises ServiceError with the job's
    own error and leaves nothing of the data set behind."""
    try:
        result = pipe.run()
    except Exception as error:  # the submission itself was refused
        raise ServiceError(f"Dataflow refused the data-prep job ({type(error).__name__}: {_first_line(error)}); "
                           "check the project, region, the Dataflow API and the service account's roles.") from error
    job = result.job_id()
    link = DATAFLOW_CONSOLE.format(region=dataflow.region, job=job, project=dataflow.project)
    print(f"  data prep: Dataflow job {job}: {link}", flush=True)
    try:
        result.wait_until_finish()
        state = str(result.state)
    except Exception as error:  # DataflowRuntimeException carries the job's own error
        _remove_tree(target)
        raise ServiceError(f"the Dataflow data-prep job {job} failed: {_first_line(error)} (details: {link})"
                           ) from error
    if "DONE" not in state:
        _remove_tree(target)
        raise ServiceError(f"the Dataflow data-prep job {job} ended {state}, not done (details: {link}).")


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[-1] if text else type(error).__name__


def _files_under(root: str, recursive: bool = False) -> list[str]:
    from apache_beam.io.filesystems import FileSystems

    matched = FileSystems.match([records.join(root, "**" if recursive else "*")])[0]
    return [entry.path for entry in matched.metadata_list]


def _remove_tree(root: str, recursive: bool = False) -> None:
    from apache_beam.io.filesystems import FileSystems

    if "://" not in root:
        shutil.rmtree(root, ignore_errors=True)
        return
    try:
        paths = _files_under(root, recursive)
        if paths:
            FileSystems.delete(paths)
    except Exception as error:  # best effort: say so rather than hide the job's error
        print(f"  data prep: could not remove {root} ({type(error).__name__}: {error})", flush=True)


def _copy_tree(source: str, target: str) -> None:
    """The data set from Cloud Storage into a local folder (a local run with Dataflow)."""
    from apache_beam.io.filesystems import FileSystems

    os.makedirs(target, exist_ok=True)
    for path in _files_under(source):
        with FileSystems.open(path) as reading, open(os.path.join(target, path.rsplit("/", 1)[-1]), "wb") as writing:
            while chunk := reading.read(16 * 2**20):
                writing.write(chunk)
    _remove_tree(source)


def read_json(dataset_dir: str) -> dict:
    """metadata.json without TensorFlow (records.read_metadata reads it in training)."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(records.join(dataset_dir, records.METADATA_FILE)) as handle:
        return json.loads(handle.read())


def prepare_dataset(
    data: str,
    output_dir: str,
    *,
    image_size: int = 160,
    seed: int = 42,
    max_skipped_fraction: float = DEFAULT_MAX_SKIPPED_FRACTION,
    tfds_data_dir: str | None = None,
    source_fingerprint: str = "",
    processes: int | None = None,
    max_workers: int = records.DEFAULT_MAX_WORKERS,
    min_shard_records: int = records.MIN_SHARD_RECORDS,
    dataflow: DataflowJob | None = None,
    listing_folder: str = "",
) -> dict:
    """The data-prep step: parse the spec, list, run the pipeline (read, digest, deduplicate, split
    80/10/10 by content, resize, write), check. Returns the metadata (``source_fingerprint``, the
    data-fingerprint step's, is recorded in it).

    ``processes``: Beam worker processes (default: every core for PARALLEL_MIN_IMAGES images or
    more, else none); the output does not depend on it. ``max_workers``: the largest number of
    training workers (machines) the shards should serve with ``AutoShardPolicy.FILE``.
    ``dataflow``: run the pipeline on Dataflow instead. ``listing_folder``: where the fingerprint
    step saved a gs:// folder's listing (``sources.save_bucket_listing``); the one saved with
    ``source_fingerprint`` is read instead of listing the bucket again.

    Fails (ConfigError) when more than ``max_skipped_fraction`` of the image files could not be
    read, or when a class has no image left for some split."""
    spec = parse_data_spec(data)
    if not (isinstance(image_size, int) and image_size >= MIN_IMAGE_SIZE):
        raise ConfigError(f"--image-size {image_size!r} must be a whole number of at least {MIN_IMAGE_SIZE}.")
    if not (isinstance(max_workers, int) and max_workers >= 1):
        raise ConfigError(f"max_workers {max_workers!r} must be a whole number of at least 1 (training machines).")
    if not 0.0 <= max_skipped_fraction <= 1.0:
        raise ConfigError(f"--max-skipped-fraction {max_skipped_fraction!r} must lie between 0 and 1 (default 0.1).")
    listing = _listing(spec, seed, tfds_data_dir, listing_folder, source_fingerprint)
    print(f"  data prep: {spec} -> {len(listing.class_names)} classes {listing.class_names}", flush=True)
    run_pipeline(listing, output_dir, image_size=image_size, seed=seed, max_workers=max_workers,
                 min_shard_records=min_shard_records, source_fingerprint=source_fingerprint, processes=processes,
                 dataflow=dataflow)
    metadata = read_json(output_dir)
    check_prepared(metadata, spec, output_dir, max_skipped_fraction)
    print(f"  data prep: images per split {metadata['num_examples']}, skipped {len(metadata['skipped'])}", flush=True)
    return metadata


def _listing(spec, seed: int, tfds_data_dir: str | None, listing_folder: str, source_fingerprint: str):
    """The source's listing: a gs:// folder's from the fingerprint step when it saved one for this
    fingerprint, else listed here."""
    if spec.kind == "folder" and spec.path.startswith("gs://") and listing_folder and source_fingerprint:
        saved = sources.load_bucket_listing(listing_folder, spec.path, source_fingerprint)
        if saved is not None:
            print(f"  data prep: the fingerprint step's listing of {spec.path} ({source_fingerprint}), not listed "
                  "again", flush=True)
            return sources.list_folder(spec.path, saved)
        print(f"  data prep: no usable listing of {spec.path} with fingerprint {source_fingerprint} (none saved, "
              "or cut short): listing it", flush=True)
    return sources.list_source(spec, seed, tfds_data_dir)


def check_prepared(metadata: dict, spec, output_dir: str, max_skipped_fraction: float) -> None:
    if spec.kind == "folder":
        kept: Counter[int] = Counter()
        for split in SPLITS:
            kept.update({label: metadata["counts"][split][name] for label, name in enumerate(metadata["class_names"])})
        sources.require_two_classes(spec.path, metadata["class_names"], kept, "with readable images")
    kinds = Counter(s.get("kind") for s in metadata["skipped"])
    unreadable = kinds["unreadable"]
    candidates = unreadable + sum(metadata["num_examples"].values()) + kinds["duplicate"] + kinds["conflict"]
    if candidates and unreadable / candidates > max_skipped_fraction:
        raise ConfigError(
            f"{unreadable} of {candidates} image files of {spec} could not be read "
            f"({unreadable / candidates:.0%} > --max-skipped-fraction {max_skipped_fraction:g}); "
            f"fix or remove them (each is listed in {output_dir}/metadata.json) or raise the limit."
        )
    for split in SPLITS:
        empty = [name for name, n in metadata["counts"][split].items() if n == 0]
        if empty:
            raise ConfigError(
                f"the {split} split has no images of class(es) {empty} after the 80/10/10 split "
                f"of {spec}; add images (at least 10 per class) or drop those classes."
            )
