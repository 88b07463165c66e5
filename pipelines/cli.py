"""``tlp``: run the pipeline locally, run one component, predict, compile, submit, schedule.

    tlp run [--data auto|sample[:N]|folder:PATH|tfds:NAME] [--weights auto|imagenet|none|FILE] ...
    tlp component NAME --input NAME=PATH ... --param NAME=VALUE ...
    tlp predict MODEL IMAGE...
    tlp compile --output pipeline.yaml [--gpus N --accelerator TYPE --machine-type TYPE --replicas K]
    tlp submit --project P --region R --pipeline-root gs://BUCKET/tlp [--wait] ...   (Vertex AI)
    tlp submit --kfp-host URL ...                                                     (Kubeflow Pipelines)
    tlp schedule create --cron "TZ=Europe/Berlin 0 3 * * 1" --name NAME ... | list | pause | resume | delete
    tlp serve MODEL|NAME@champion [--port 8080] [--host 127.0.0.1] [--max-batch N] [--max-latency-ms MS] ...
    tlp deploy NAME@champion --registry vertex://PROJECT/REGION --endpoint NAME [--traffic PERCENT] ...
    tlp predict MODEL DIR --output preds.jsonl|preds.csv      tlp predict MODEL gs://DIR --batch-job --output gs://...
    tlp options [COMMAND] [--markdown]
    tlp models list NAME | show NAME/VERSION | promote NAME/VERSION --reason TEXT | rollback NAME --reason TEXT

Exit codes: 0 done, 1 a run or the service failed, 2 a bad setting, 3 not found (an unknown
model or version, or no earlier champion to roll back to).

The options' flags, defaults, help and checks come from their declarations in
``tlp/components/lib/settings.py``; this module only maps commands onto the runners.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from tlp.components.lib import litert
from tlp.components.lib.options import add_flags, group_from_values, iter_options, markdown_table
from tlp.components.lib.registry import open_registry
from tlp.components.lib.registry.champion import parse_reference
from tlp.components.lib.settings import (
    ALL_GROUPS,
    PIPELINE_GROUPS,
    CloudOptions,
    DeployOptions,
    DriftOptions,
    HardwareOptions,
    ImageOptions,
    LiteRTOptions,
    LocalRunOptions,
    ModelsOptions,
    PredictOptions,
    ScheduleOptions,
    Settings,
    TrackingOptions,
    TuneOptions,
)
from tlp.components.lib.specs import ConfigError
from tlp.components.lib.steps import STEPS
from tlp.pipelines import checks, cloud, deploy, drift, models, predict, runners, serve, single, tuned
from tlp.pipelines.console import LOGS, RunFailed, exit_code, native_stderr_captured
from tlp.pipelines.environment import check_credentials, quiet_tensorflow
from tlp.pipelines.resolve import default_registry, registry_or_default, resolve_local
from tlp.pipelines.summary import format_summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlp", description="Transfer-learning pipeline.")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str, key: str | None = None, parent=commands):
        sub = parent.add_parser(name, help=help_text)
        add_flags(sub, ALL_GROUPS, key or name)
        return sub

    command("run", "run the whole pipeline locally through kfp.local")

    component = command("component", "run one pipeline step locally")
    component.add_argument("name", choices=[step.name for step in STEPS], help="the step")
    component.add_argument("--input", action="append", default=[], metavar="NAME=PATH",
                           help="an input artifact (a directory or file of an earlier run)")
    component.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                           help="an option the step reads, e.g. --param epochs=2")

    predict = command("predict", "classify images (files, folders, a gs:// folder) with a model")
    predict.add_argument("model", help="a model directory, or NAME/VERSION or NAME@champion in the registry")
    predict.add_argument("images", nargs="+", help="image files or folders")

    serve.add_arguments(commands.add_parser("serve", help=serve.HELP))

    deployed = command("deploy", "deploy a registered version to a Vertex AI endpoint")
    deployed.add_argument("model", help="NAME@champion or NAME/VERSION in the Vertex AI Model Registry")

    drifted = command("drift", "score photos against a model's training photos (exit 4 when they drifted)")
    drifted.add_argument("model", help="a model directory, or NAME/VERSION or NAME@champion in the registry")
    drifted.add_argument("photos", nargs="+", help="image files or folders (local or gs://)")

    exported = command("export", "export a model or registered version for LiteRT (phones, small devices)")
    exported.add_argument("model", help="a model directory, or NAME/VERSION or NAME@champion in the registry")
    exported.add_argument("--litert", required=True, metavar="VARIANTS",
                          help="float32, float16, dynamic, int8 (comma-separated)")
    exported.add_argument("--output", required=True,
                          help="the folder the .tflite files, labels.txt and litert.json go to")
    exported.add_argument("--dataset", default="", help="the prepared data set the model was trained on (scores on "
                          "its test split, calibrates int8 on its training split); default: the one the registered "
                          "version records")

    compile_ = command("compile", "write the pipeline as kfp IR YAML")
    compile_.add_argument("--output", default="pipeline.yaml")

    command("submit", "submit a run to Vertex AI Pipelines (or --kfp-host)")

    listing = commands.add_parser("options", help="list every option of a command, with its group and default")
    listing.add_argument("for_command", nargs="?", default="run", help="the command (default run)")
    listing.add_argument("--markdown", action="store_true", help="as the README's Markdown table")

    schedule = commands.add_parser("schedule", help="scheduled retraining on Vertex AI (or --kfp-host)")
    actions = schedule.add_subparsers(dest="action", required=True)
    command("create", "run the pipeline on a cron schedule", "schedule create", actions)
    command("list", "list schedules", "schedule list", actions)
    for action in ("pause", "resume", "delete"):
        sub = command(action, f"{action} a schedule", "schedule change", actions)
        sub.add_argument("schedule", help="schedule display name, ID or resource name")

    registered = commands.add_parser("models", help="registered models: list, show, promote, roll back")
    verbs = registered.add_subparsers(dest="action", required=True)
    command("list", "a model's versions: accuracy, data, split, created, champion, decision", "models list",
            verbs).add_argument("name", help="the registered model's name")
    command("show", "everything recorded on one version", "models show", verbs).add_argument(
        "reference", help="NAME/VERSION")
    command("promote", "make a version the champion (records who, why, when)", "models promote", verbs).add_argument(
        "reference", help="NAME/VERSION")
    command("rollback", "give the champion alias back to the previous champion", "models rollback",
            verbs).add_argument("name", help="the registered model's name")
    return parser


# Commands that may load TensorFlow in this process: its C++ start-up lines and libjpeg's decoder
# warnings go to a file (named when the command fails), not between the command's own lines.
NATIVE_CAPTURED = ("predict", "component", "serve", "models", "export")


def main(argv: list[str] | None = None) -> int:
    quiet_tensorflow()
    args = build_parser().parse_args(argv)
    handlers = {"run": command_run, "component": command_component, "predict": command_predict,
                "compile": command_compile, "submit": command_submit, "schedule": command_schedule,
                "options": command_options, "serve": serve.run, "deploy": command_deploy,
                "models": command_models, "drift": command_drift,
                "export": command_export}
    return exit_code(lambda: handlers[args.command](args), capture_native=args.command in NATIVE_CAPTURED,
                     logs_dir=lambda: _logs_dir(args))


def _logs_dir(args) -> str | None:
    """The output directory's logs/ if this command has one and it exists, else None (the temp directory)."""
    output_dir = getattr(args, "output_dir", "")
    return os.path.join(output_dir, LOGS) if output_dir and os.path.isdir(output_dir) else None


def _settings(args) -> Settings:
    given = vars(args)
    return Settings.from_values({opt.name: given[opt.name] for opt in iter_options(PIPELINE_GROUPS)})


def _group(group_class, args):
    return group_from_values(group_class, vars(args))


# --- tlp run ----------------------------------------------------------------------------------


def _tuning(args, settings: Settings | None = None):
    """The trials of --tune (None without it), checked before anything starts."""
    chosen = _group(TuneOptions, args)
    return tuned.plan_tuning(chosen, settings or Settings())


def command_run(args) -> int:
    settings, local, images = _settings(args), _group(LocalRunOptions, args), _group(ImageOptions, args)
    tuning = _tuning(args, settings)
    if local.runner == "docker" and not settings.registry.registry:
        # Only the pipeline root is mounted into the containers: keep the registry inside it.
        settings = settings.replace(registry=f"sqlite:///{runners.pipeline_root(local.output_dir)}/registry.db")
    # TensorFlow's C++ start-up lines (resolving `auto`, checking the layers) go to the run's log.
    with native_stderr_captured(enabled=not local.verbose) as native:
        settings, notes = resolve_local(settings, local.output_dir)
        print(f"tlp run: data {settings.data.data}, weights {settings.model.weights}", flush=True)
        for note in notes:
            print(f"tlp run: {note}", flush=True)
        settings = checks.check_settings(settings)
        tuning = tuned.check_trials(tuning, settings)
        print(f"tlp run: registry {settings.registry.registry}; outputs under {os.path.abspath(local.output_dir)}",
              flush=True)
        try:
            summary = runners.run_local(settings, local, images, notes, _group(TrackingOptions, args), tuning,
                                        _group(LiteRTOptions, args))
        except RunFailed as error:
            native.run_dir = error.run_dir
            raise
        native.run_dir = summary["run_dir"]

    print(format_summary(summary), flush=True)
    if local.summary_json:
        with open(local.summary_json, "w") as handle:
            json.dump(summary, handle, indent=2)
        print(f"summary written to {local.summary_json}")
    return 0


# --- tlp component ----------------------------------------------------------------------------


def _pairs(items: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"{what} {item!r} is not NAME=VALUE; write it as e.g. {what} epochs=2.")
        pairs[name.replace("-", "_")] = value
    return pairs


def command_component(args) -> int:
    local = _group(LocalRunOptions, args)
    outputs = single.run_component(
        args.name, _pairs(args.input, "--input"), _pairs(args.param, "--param"), local.output_dir, local.verbose
    )
    print(f"\ntlp component {args.name}: logs in {os.path.join(os.path.dirname(outputs['task_dir']), 'logs')}")
    print(f"tlp component {args.name}: outputs in {outputs['task_dir']}")
    for name, value in outputs["parameters"].items():
        print(f"  {name} = {value}")
    for name, artifact in outputs["artifacts"].items():
        print(f"  {name} -> {artifact['uri']}")
    return 0


# --- tlp predict ------------------------------------------------------------------------------


def command_predict(args) -> int:
    chosen = _group(PredictOptions, args)
    if args.model.endswith(".tflite"):
        return _predict_litert(args.model, args.images, chosen)
    registry = registry_or_default(args.registry)
    if chosen.output or chosen.batch_job or any(os.path.isdir(p) or p.startswith("gs://") for p in args.images):
        return _predict_batch(args.model, args.images, registry, chosen)
    for row in predict.predict_files(args.model, args.images, registry):
        if chosen.json:
            print(json.dumps(row))
        else:
            print(f"{row['image']}\t{row['label']}\t{row['probability']:.4f}")
    return 0


def _predict_litert(model: str, images: list[str], chosen: PredictOptions) -> int:
    """A .tflite model (tlp export --litert) in the LiteRT interpreter, one image per call as on a device."""
    files = [path for path in predict.iter_files(images) if path.lower().endswith(predict.IMAGE_EXTENSIONS)]
    if not files:
        raise ConfigError(f"no image files under {', '.join(images)}; give image files or folders of them.")
    unreadable = 0
    for row in litert.classify_files(model, files):
        unreadable += "error" in row
        if chosen.json:
            print(json.dumps(row))
        elif "error" in row:
            print(f"{row['image']}\terror\t{row['error']}")
        else:
            print(f"{row['image']}\t{row['label']}\t{row['probability']:.4f}")
    return 1 if unreadable else 0


# --- tlp export -------------------------------------------------------------------------------


def command_export(args) -> int:
    """LiteRT variants of an already registered version (or a model directory), scored and gated."""
    chosen = _group(LiteRTOptions, args)
    variants = litert.parse_variants(args.litert)
    if not variants:
        raise ConfigError("--litert: name the variants to export (float32, float16, dynamic, int8, comma-separated).")
    registry = registry_or_default(args.registry)
    name, version = ("", "") if os.path.isdir(args.model) else _registered_version(args.model, registry)
    # A registered version names the data set it was trained on; a model directory needs --dataset.
    dataset = args.dataset or (open_registry(registry).version(name, version).tags.get("dataset_uri", "") if name
                               else "")
    if not dataset:
        raise ConfigError("--dataset: give the prepared data set the model was trained on (the Dataset output of "
                          "data prep); its test split scores each variant and its training split calibrates int8.")
    model_dir = predict.resolve_model(args.model, registry)
    outcome = litert.export_and_register(
        model_dir, dataset, args.output, variants, chosen.max_quantization_drop, registry, name, version,
    )
    passed, reasons = outcome["gate"]["passed"], outcome["gate"]["reasons"]
    print(litert.table(outcome, reasons))
    for variant in variants:
        print(f"  {variant}: {reasons[variant]}")
    where = outcome["registered"]
    recorded = f"; recorded with {name} version {version} ({where['location']})" if where else ""
    print(f"tlp export: {len(passed)} of {len(variants)} variant(s) within --max-quantization-drop in "
          f"{args.output}{recorded}")
    return 0 if len(passed) == len(variants) else 5


def _registered_version(reference: str, registry_uri: str) -> tuple[str, str]:
    """NAME/VERSION or NAME@champion -> (name, version number) in the registry."""
    if "@" in reference:
        name, alias = reference.split("@", 1)
        version = open_registry(registry_uri).champion_version(name) if alias == "champion" else None
        if version is None:
            raise ConfigError(f"{reference} names no version in {registry_uri}; use NAME/VERSION or NAME@champion.")
        return name, version
    return parse_reference(reference)


# --- tlp compile ------------------------------------------------------------------------------


def command_compile(args) -> int:
    hardware = checks.check_hardware(_group(HardwareOptions, args), "auto")
    tracking = _group(TrackingOptions, args)
    if tracking.tensorboard:
        checks.check_tensorboard_name(tracking.tensorboard)
    deploy_options = _group(DeployOptions, args)
    cloud.compile_pipeline(_group(ImageOptions, args), hardware, CloudOptions(), args.output,
                           deploy=deploy_options, tracking=tracking,
                           tuning=tuned.check_trials(_tuning(args), Settings()), litert=_group(LiteRTOptions, args))
    print(f"pipeline written to {args.output}")
    return 0


# --- tlp options ------------------------------------------------------------------------------


def command_options(args) -> int:
    if args.markdown:
        print(markdown_table(ALL_GROUPS, args.for_command))
        return 0
    for opt in iter_options(ALL_GROUPS):
        if args.for_command in opt.spec.commands:
            steps = ", ".join(opt.spec.steps) or "runner"
            print(f"{opt.flag:<24} {opt.group:<12} {str(opt.default) or '-':<12} {steps:<40} {opt.spec.help}")
    return 0


# --- tlp submit / tlp schedule ----------------------------------------------------------------


def _cloud_run(args) -> cloud.CloudRun:
    tuning = _tuning(args, _settings(args))
    run, notes = cloud.plan_run(
        _settings(args), _group(CloudOptions, args), _group(HardwareOptions, args), _group(ImageOptions, args),
        _group(DeployOptions, args),
        _group(TrackingOptions, args),
    )
    run = dataclasses.replace(run, litert=_group(LiteRTOptions, args))
    if tuning is not None:
        run = dataclasses.replace(run, tuning=tuned.check_trials(tuning, run.settings, cloud=run.cloud))
    for note in notes:
        print(f"tlp {args.command}: {note}", flush=True)
    where = run.cloud.kfp_host or f"{run.cloud.project}/{run.cloud.region}"
    settings = run.settings
    print(f"tlp {args.command}: {where}, data {settings.data.data}, weights {settings.model.weights}, registry "
          f"{settings.registry.registry}", flush=True)
    return run


def command_submit(args) -> int:
    cloud.submit(_cloud_run(args))
    return 0


def command_schedule(args) -> int:
    if args.action == "create":
        request = _group(ScheduleOptions, args)
        cloud.check_schedule(request)  # a bad cron fails before anything else is checked
        cloud.create_schedule(_cloud_run(args), request)
        return 0
    target = checks.check_cloud_target(_group(CloudOptions, args), needs_root=False)
    if target.on_vertex:

        check_credentials()
    if args.action == "list":
        rows = cloud.list_schedules(target)
        for row in rows:
            print(f"{row.state:<8} {row.display_name:<30} {row.cron:<28} {row.next_run:<26} {row.name}")
        if not rows:
            print("no schedules")
        return 0
    name = cloud.change_schedule(target, args.schedule, args.action)
    print(f"{args.action}d schedule {name}" if args.action != "resume" else f"resumed schedule {name}")
    return 0


# --- tlp serve / tlp deploy / batch prediction --------------------------------------------------


def command_deploy(args) -> int:
    deploy.deploy(args.model, args.registry, _group(DeployOptions, args), _group(CloudOptions, args))
    return 0


def _predict_batch(model: str, sources: list[str], registry: str, chosen: PredictOptions) -> int:
    if chosen.batch_job:
        predict.run_batch_job(model, sources, registry, chosen)
        return 0
    summary = predict.predict_to_file(model, sources, chosen.output, registry, batch_size=chosen.images_per_call)
    return 0 if summary.predicted else 1



# --- tlp drift --------------------------------------------------------------------------------


def command_drift(args) -> int:
    chosen = _group(DriftOptions, args)
    with native_stderr_captured():
        return drift.run(args.model, args.photos, registry_or_default(args.registry), threshold=chosen.threshold,
                         as_json=chosen.drift_json)


# --- tlp models -------------------------------------------------------------------------------


def command_models(args) -> int:
    chosen = _group(ModelsOptions, args)
    registry_uri = args.registry or default_registry(_group(LocalRunOptions, args).output_dir)
    if args.action == "list":
        print(models.list_versions(registry_uri, args.name, as_json=chosen.models_json))
    elif args.action == "show":
        print(models.show_version(registry_uri, args.reference, as_json=chosen.models_json))
    elif args.action == "promote":
        print(models.promote(registry_uri, args.reference, reason=chosen.reason, by=chosen.by))
    else:
        print(models.rollback(registry_uri, args.name, reason=chosen.reason, by=chosen.by))
    return 0


if __name__ == "__main__":
    sys.exit(main())
