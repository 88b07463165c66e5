"""``tlp``: run the pipeline locally, run one component, predict, compile.

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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from google.api_core.exceptions import GoogleAPICallError

from tlp.components.lib.specs import ConfigError
from tlp.pipelines import docker_runner, runners


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    defaults = runners.RunConfig()
    add = parser.add_argument
    add("--data", default=defaults.data,
        help="auto (default: tfds:cats_vs_dogs if cached or reachable, else sample), "
             "tfds:NAME, folder:PATH (one subfolder per class; local or gs://), sample[:N]")
    add("--weights", default=defaults.weights,
        help="auto (default: imagenet if cached or reachable, else none), imagenet, none, "
             "or a .h5 weights file of the base without its top")
    add("--base", default=defaults.base, help="Keras application (default MobileNetV2)")
    add("--alpha", type=float, default=defaults.alpha, help="MobileNet width multiplier (1.0)")
    add("--image-size", type=int, default=defaults.image_size, help="input side in pixels (160)")
    add("--batch-size", type=int, default=defaults.batch_size, help="batch per replica (32)")
    add("--epochs", type=int, default=defaults.epochs, help="feature-extraction epochs (10)")
    add("--fine-tune-epochs", type=int, default=defaults.fine_tune_epochs,
        help="fine-tuning epochs (10; 0 skips)")
    add("--fine-tune-at", type=int, default=defaults.fine_tune_at,
        help="first base layer to unfreeze (100)")
    add("--learning-rate", type=float, default=defaults.learning_rate,
        help="RMSprop learning rate (1e-4; fine-tuning uses a tenth)")
    add("--dropout", type=float, default=defaults.dropout, help="dropout before the Dense layer (0.2)")
    add("--devices", default=defaults.devices,
        help="auto (all GPUs, else CPU), cpu:N (N logical CPUs), gpu[:N]")
    add("--max-gap", type=float, default=defaults.max_gap,
        help="largest allowed train - val accuracy (0.05)")
    add("--min-accuracy", type=float, default=defaults.min_accuracy,
        help="smallest allowed test accuracy (0.90)")
    add("--model-name", default="", help="registered model name (default: from the data spec)")
    add("--seed", type=int, default=defaults.seed, help="random seed (42)")
    add("--mixed-precision", default=defaults.mixed_precision, choices=("float32", "mixed_float16", "mixed_bfloat16"),
        help="Keras mixed precision for both training steps (GPUs: mixed_float16; TPUs/recent GPUs: "
             "mixed_bfloat16; default float32)")
    add("--xla", action="store_true", help="compile the training steps with XLA (jit_compile)")
    add("--steps-per-execution", type=int, default=defaults.steps_per_execution,
        help="batches per compiled call (1; try 8-32 on GPUs)")
    add("--champion-tolerance", type=float, default=defaults.champion_tolerance,
        help="a new version becomes champion if its test accuracy >= the champion's on the same "
             "test split minus this (0.0)")
    add("--max-skipped-fraction", type=float, default=defaults.max_skipped_fraction,
        help="fail if more than this fraction of image files are unreadable (0.1)")


def _add_image_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-repo", default="tlp",
                        help="container image repository, e.g. us-docker.pkg.dev/PROJECT/tlp (default tlp)")
    parser.add_argument("--image-tag", default=None, help="image tag (default: the project version)")


def _add_hardware_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--gpus", type=int, default=0, help="GPUs per fine-tuning machine (MirroredStrategy over them)")
    add("--accelerator", default="", help="GPU type, a Vertex AI AcceleratorType such as NVIDIA_L4 or NVIDIA_TESLA_T4")
    add("--machine-type", default="", help="fine-tuning machine type, e.g. g2-standard-8 (runs it as a custom job)")
    add("--replicas", type=int, default=1,
        help="fine-tuning machines; more than 1 runs a Vertex AI custom job with MultiWorkerMirroredStrategy")


def _add_cloud_options(parser: argparse.ArgumentParser) -> None:
    _add_training_options(parser)
    add = parser.add_argument
    add("--project", default="", help="Google Cloud project ID (default: $GOOGLE_CLOUD_PROJECT)")
    add("--region", default="", help="Vertex AI region, e.g. us-central1 (default: $GOOGLE_CLOUD_REGION)")
    add("--pipeline-root", default="", help="gs://BUCKET/PATH where the run keeps its data and models")
    add("--service-account", default="", help="service account the run (and its custom jobs) runs as")
    add("--labels", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]", help="labels on the run")
    add("--no-cache", action="store_true", help="re-run every step instead of reusing cached results")
    add("--network", default="", help="VPC network to peer, projects/NUMBER/global/networks/NAME")
    add("--api-endpoint", default="", help="Vertex AI API endpoint (private or regional), host[:port] or URL")
    add("--kfp-host", default="", help="submit to this Kubeflow Pipelines API instead of Vertex AI")
    add("--display-name", default="", help="run name (default transfer-learning-TIMESTAMP)")
    add("--registry", default="vertex",
        help="vertex (default: the Vertex AI Model Registry of --project/--region), vertex://PROJECT/REGION[/MODEL] "
             "or an MLflow server URL")
    _add_image_options(parser)
    _add_hardware_options(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlp", description="Transfer-learning pipeline.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the whole pipeline locally through kfp.local")
    _add_training_options(run)
    run.add_argument("--output-dir", default=runners.DEFAULT_OUTPUT_DIR,
                     help="where runs, outputs and the local registry go (tlp-runs)")
    run.add_argument("--registry", default="",
                     help="registry URI (default sqlite:///OUTPUT_DIR/registry.db, an MLflow registry)")
    run.add_argument("--summary-json", default=None, help="also write the summary to this JSON file")
    run.add_argument("--runner", choices=docker_runner.RUNNERS, default="subprocess",
                     help="subprocess: this environment (default); docker: the component images")
    _add_image_options(run)

    component = commands.add_parser("component", help="run one component locally")
    component.add_argument("name", choices=sorted(_components()), help="the component")
    component.add_argument("--input", action="append", default=[], metavar="NAME=PATH",
                           help="an input artifact (a directory or file of an earlier run)")
    component.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                           help="a parameter of the component")
    component.add_argument("--output-dir", default=runners.DEFAULT_OUTPUT_DIR)

    predict = commands.add_parser("predict", help="classify images with a model")
    predict.add_argument("model", help="a model directory, or NAME/VERSION or NAME@champion in the registry")
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--registry", default="",
                         help=f"registry URI (default sqlite:///{runners.DEFAULT_OUTPUT_DIR}/registry.db)")
    predict.add_argument("--json", action="store_true", help="print JSON lines")

    compile_ = commands.add_parser("compile", help="write the pipeline as kfp IR YAML")
    compile_.add_argument("--output", default="pipeline.yaml")
    _add_image_options(compile_)
    _add_hardware_options(compile_)

    submit = commands.add_parser("submit", help="submit a run to Vertex AI Pipelines (or --kfp-host)")
    _add_cloud_options(submit)
    submit.add_argument("--wait", action="store_true", help="follow the run's state until it ends")

    schedule = commands.add_parser("schedule", help="scheduled retraining on Vertex AI (or --kfp-host)")
    actions = schedule.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="run the pipeline on a cron schedule")
    _add_cloud_options(create)
    create.add_argument("--cron", required=True,
                        help='"[TZ=Area/City ]minute hour day-of-month month day-of-week", '
                             'e.g. "TZ=Europe/Berlin 0 3 * * 1"')
    create.add_argument("--name", required=True, help="schedule name")
    create.add_argument("--max-concurrent", type=int, default=1, help="runs at once (1)")
    create.add_argument("--max-runs", type=int, default=None, help="stop after this many runs (default: no limit)")
    create.add_argument("--start", default="", help="first possible run, ISO 8601 (default: now)")
    create.add_argument("--end", default="", help="no runs after, ISO 8601 (default: never)")
    for action in ("list", "pause", "resume", "delete"):
        sub = actions.add_parser(action, help=f"{action} schedules" if action == "list" else f"{action} a schedule")
        if action != "list":
            sub.add_argument("name", help="schedule display name, ID or resource name")
        for flag, help_text in (("--project", "Google Cloud project ID (default: $GOOGLE_CLOUD_PROJECT)"),
                                ("--region", "Vertex AI region (default: $GOOGLE_CLOUD_REGION)"),
                                ("--api-endpoint", "Vertex AI API endpoint"),
                                ("--kfp-host", "a Kubeflow Pipelines API instead of Vertex AI")):
            sub.add_argument(flag, default="", help=help_text)
    _add_serving_commands(commands, predict, submit, create)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return command_run(args)
        if args.command == "component":
            return command_component(args)
        if args.command == "predict":
            return command_predict(args)
        if args.command == "submit":
            return command_submit(args)
        if args.command == "schedule":
            return command_schedule(args)
        if args.command == "serve":
            return command_serve(args)
        if args.command == "deploy":
            return command_deploy(args)
        return command_compile(args)
    except ConfigError as error:
        print(f"tlp: error: {error}", file=sys.stderr)
        return 2
    except runners.RunFailed as error:
        print(f"tlp: error: {error}", file=sys.stderr)
        return 1
    except GoogleAPICallError as error:  # e.g. a missing permission or API, or no route to Google
        print(f"tlp: error: Google Cloud refused the request: {error.code} {error.message}; check the project, "
              "region, that the Vertex AI API is enabled and your account's roles.", file=sys.stderr)
        return 1


# --- tlp run --------------------------------------------------------------------------------


def command_run(args) -> int:
    fields = {f.name for f in dataclasses.fields(runners.RunConfig)}
    config = runners.RunConfig(**{k: v for k, v in vars(args).items() if k in fields})
    if args.runner == "docker" and not args.registry:
        # Only the pipeline root is mounted into the containers: keep the registry inside it.
        root = os.path.join(os.path.abspath(config.output_dir), "pipeline-root")
        config = dataclasses.replace(config, registry=f"sqlite:///{root}/registry.db")
    config = runners.resolve_auto(config)
    print(f"tlp run: data {config.data}, weights {config.weights}", flush=True)
    for note in config.notes:
        print(f"tlp run: {note}", flush=True)
    config = runners.validate(config)
    print(f"tlp run: registry {config.registry}; outputs under {os.path.abspath(config.output_dir)}", flush=True)
    summary = runners.run_local(config, args.image_repo, args.image_tag, runner=args.runner)
    print(runners.format_summary(summary), flush=True)
    if args.summary_json:
        with open(args.summary_json, "w") as handle:
            json.dump(summary, handle, indent=2)
        print(f"summary written to {args.summary_json}")
    return 0


# --- tlp component --------------------------------------------------------------------------


def _components() -> dict:
    from tlp.components.data_prep import data_prep
    from tlp.components.evaluation import evaluation
    from tlp.components.feature_extraction import feature_extraction
    from tlp.components.fine_tuning import fine_tuning
    from tlp.components.registration import registration

    return {
        "data-prep": data_prep,
        "feature-extraction": feature_extraction,
        "fine-tuning": fine_tuning,
        "evaluation": evaluation,
        "registration": registration,
    }


def _pairs(items: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"{what} {item!r} is not NAME=VALUE; write it as e.g. {what} epochs=2.")
        pairs[name.replace("-", "_")] = value
    return pairs


def command_component(args) -> int:
    from tlp.pipelines.single import run_component

    outputs = run_component(
        args.name, _pairs(args.input, "--input"), _pairs(args.param, "--param"), args.output_dir
    )
    print(f"\ntlp component {args.name}: outputs in {outputs['task_dir']}")
    for name, value in outputs["parameters"].items():
        print(f"  {name} = {value}")
    for name, artifact in outputs["artifacts"].items():
        print(f"  {name} -> {artifact['uri']}")
    return 0


# --- tlp predict ----------------------------------------------------------------------------


def command_predict(args) -> int:
    from tlp.pipelines.predict import predict_files

    if args.output or args.batch_job or any(os.path.isdir(path) or path.startswith("gs://") for path in args.images):
        return command_predict_batch(args)
    registry = args.registry or "sqlite:///" + os.path.abspath(
        os.path.join(runners.DEFAULT_OUTPUT_DIR, "registry.db")
    )
    for row in predict_files(args.model, args.images, registry):
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['image']}\t{row['label']}\t{row['probability']:.4f}")
    return 0


# --- tlp compile ----------------------------------------------------------------------------


def command_compile(args) -> int:
    from tlp.pipelines import cloud

    config = cloud.check_hardware(_cloud_config(args), "auto")
    cloud.compile_pipeline(config, args.output)
    print(f"pipeline written to {args.output}")
    return 0


# --- tlp submit / tlp schedule --------------------------------------------------------------


def _cloud_config(args):
    from tlp.pipelines import cloud

    fields = {f.name for f in dataclasses.fields(cloud.CloudConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields and k != "labels"}
    config = cloud.CloudConfig(**values, labels=cloud.parse_labels(getattr(args, "labels", [])))
    if getattr(args, "no_cache", False):
        config = dataclasses.replace(config, enable_caching=False)
    return config


def _cloud_run(args):
    from tlp.pipelines import cloud

    fields = {f.name for f in dataclasses.fields(runners.RunConfig)} - {"output_dir", "notes"}
    run = runners.RunConfig(**{k: v for k, v in vars(args).items() if k in fields})
    run, config = cloud.resolve_cloud(run, _cloud_config(args))
    for note in run.notes:
        print(f"tlp {args.command}: {note}", flush=True)
    where = config.kfp_host or f"{config.project}/{config.region}"
    print(f"tlp {args.command}: {where}, data {run.data}, weights {run.weights}, registry {run.registry}", flush=True)
    return run, config


def command_submit(args) -> int:
    from tlp.pipelines import cloud

    run, config = _cloud_run(args)
    cloud.submit(run, config, wait=args.wait)
    return 0


def command_schedule(args) -> int:
    from tlp.pipelines import cloud

    if args.action == "create":
        request = cloud.ScheduleRequest(args.cron, args.name, args.max_concurrent, args.max_runs, args.start, args.end)
        cloud.check_schedule(request)  # a bad cron fails before anything else is checked
        run, config = _cloud_run(args)
        cloud.create_schedule(run, config, request)
        return 0
    config = _schedule_target(args)
    if args.action == "list":
        rows = cloud.list_schedules(config)
        for row in rows:
            print(f"{row.state:<8} {row.display_name:<30} {row.cron:<28} {row.next_run:<26} {row.name}")
        if not rows:
            print("no schedules")
        return 0
    name = cloud.change_schedule(config, args.name, args.action)
    print(f"{args.action}d schedule {name}" if args.action != "resume" else f"resumed schedule {name}")
    return 0


def _schedule_target(args):
    """Project/region (or KFP host) for list/pause/resume/delete, checked like a submission's."""
    from tlp.pipelines import cloud

    config = cloud.CloudConfig(project=args.project, region=args.region, api_endpoint=args.api_endpoint,
                               kfp_host=args.kfp_host, pipeline_root="gs://unused")
    if config.on_vertex:
        project = config.project or os.environ.get("GOOGLE_CLOUD_PROJECT", "")
        region = config.region or os.environ.get("GOOGLE_CLOUD_REGION", "")
        if not project or not region:
            raise ConfigError("pass --project PROJECT_ID and --region REGION (or set GOOGLE_CLOUD_PROJECT and "
                              "GOOGLE_CLOUD_REGION).")
        cloud.check_credentials()
        config = dataclasses.replace(config, project=project, region=region)
    return config


# === serving: tlp serve, tlp deploy, batch prediction (issue 12) ===============================
# One block on purpose (to be ported to the option declaration): the argparse code below and the
# command_* functions only map options onto plain functions in pipelines/serve.py,
# pipelines/deploy.py and pipelines/predict.py.


def _local_registry(registry: str) -> str:
    return registry or "sqlite:///" + os.path.abspath(os.path.join(runners.DEFAULT_OUTPUT_DIR, "registry.db"))


def _add_serving_commands(commands, predict, submit, schedule_create) -> None:
    from tlp.components.lib import serving
    from tlp.pipelines import deploy as deploy_lib
    from tlp.pipelines import serve as serve_lib

    add = predict.add_argument
    add("--output", default="",
        help="write one prediction per image to this .jsonl or .csv file (folders of any size, with progress; "
             "unreadable files are listed with their reason); with --batch-job a gs:// prefix")
    add("--batch-job", action="store_true",
        help="classify a gs:// folder with a Vertex AI BatchPredictionJob (needs --registry vertex://PROJECT/REGION "
             "and --output gs://...)")
    add("--batch-size", type=int, default=32, help="images per model call when predicting a folder (32)")
    add("--batch-machine-type", default=deploy_lib.DEFAULT_MACHINE_TYPE,
        help=f"--batch-job machine type ({deploy_lib.DEFAULT_MACHINE_TYPE})")
    add("--batch-replicas", type=int, default=1, help="--batch-job machines (1)")

    for parser in (submit, schedule_create):
        parser.add_argument("--deploy-endpoint", default="",
                            help="after registration makes a new champion, deploy it to this Vertex AI endpoint "
                                 "(created if missing; the replaced version is undeployed once the new one is healthy)")

    serve = commands.add_parser("serve", help="serve a model over HTTP (KServe v1/v2 protocols, a page at /)")
    add = serve.add_argument
    add("model", nargs="?", default="",
        help="a model directory, NAME@champion or NAME/VERSION in --registry (default: $AIP_STORAGE_URI)")
    add("--registry", default="", help=f"registry URI (default sqlite:///{runners.DEFAULT_OUTPUT_DIR}/registry.db)")
    add("--host", default="127.0.0.1", help="address to listen on (127.0.0.1; 0.0.0.0 for every interface)")
    add("--port", type=int, default=serve_lib.DEFAULT_PORT,
        help=f"port ({serve_lib.DEFAULT_PORT}; $AIP_HTTP_PORT wins)")
    add("--name", default="", help="model name in the routes (default: the registered name, or 'model')")
    add("--max-batch", type=int, default=serving.DEFAULT_MAX_BATCH,
        help=f"most images run together: concurrent requests are batched up to this ({serving.DEFAULT_MAX_BATCH})")
    add("--max-latency-ms", type=float, default=serving.DEFAULT_MAX_LATENCY_MS,
        help=f"longest wait for a batch to fill ({serving.DEFAULT_MAX_LATENCY_MS:g} ms)")
    add("--max-body-mb", type=float, default=serving.DEFAULT_MAX_BODY_MB,
        help=f"largest request body; larger ones get 413 ({serving.DEFAULT_MAX_BODY_MB:g} MB)")

    deploy = commands.add_parser("deploy", help="deploy a registered version to a Vertex AI endpoint")
    add = deploy.add_argument
    add("model", help="NAME@champion or NAME/VERSION in the Vertex AI Model Registry")
    add("--registry", default="", help="vertex://PROJECT/REGION (default: from --project/--region)")
    add("--endpoint", required=True, help="endpoint display name; created if missing")
    add("--machine-type", default=deploy_lib.DEFAULT_MACHINE_TYPE,
        help=f"serving machine type ({deploy_lib.DEFAULT_MACHINE_TYPE})")
    add("--min-replicas", type=int, default=1, help="fewest serving machines (1)")
    add("--max-replicas", type=int, default=1, help="most serving machines, autoscaled (1)")
    add("--accelerator", default="", help="GPU type, a Vertex AI AcceleratorType such as NVIDIA_TESLA_T4")
    add("--gpus", type=int, default=0, help="GPUs per machine (1 when --accelerator is given)")
    add("--traffic", type=int, default=100,
        help="percent of the endpoint's traffic for this version (canary: the rest stays on the current one; 100)")
    add("--promote-traffic", action="store_true",
        help="move 100%% of the traffic to this (already deployed) version and undeploy the one it replaces")
    add("--project", default="", help="Google Cloud project ID (default: from --registry or $GOOGLE_CLOUD_PROJECT)")
    add("--region", default="", help="Vertex AI region (default: from --registry or $GOOGLE_CLOUD_REGION)")
    add("--api-endpoint", default="", help="Vertex AI API endpoint (private or regional), host[:port] or URL")
    add("--service-account", default="", help="service account the serving container runs as")
    add("--network", default="",
        help="VPC network, projects/NUMBER/global/networks/NAME: the endpoint is created private (VPC peering)")


def command_serve(args) -> int:
    from tlp.pipelines import serve

    config = serve.ServeConfig(
        model=args.model, registry=_local_registry(args.registry), host=args.host, port=args.port, name=args.name,
        max_batch=args.max_batch, max_latency_ms=args.max_latency_ms, max_body_mb=args.max_body_mb,
    )
    serve.serve(serve.apply_vertex_environment(config))
    return 0


def command_deploy(args) -> int:
    from tlp.pipelines import deploy

    request = deploy.DeployOptions(
        model=args.model, registry=args.registry, endpoint=args.endpoint, machine_type=args.machine_type,
        min_replicas=args.min_replicas, max_replicas=args.max_replicas, accelerator=args.accelerator, gpus=args.gpus,
        traffic=args.traffic, promote_traffic=args.promote_traffic, project=args.project, region=args.region,
        api_endpoint=args.api_endpoint, service_account=args.service_account, network=args.network,
    )
    deploy.deploy(request)
    return 0


def command_predict_batch(args) -> int:
    from tlp.pipelines import predict

    registry = _local_registry(args.registry)
    if args.batch_job:
        predict.run_batch_job(args.model, args.images, args.output, registry,
                              machine_type=args.batch_machine_type, replicas=args.batch_replicas)
        return 0
    summary = predict.predict_to_file(args.model, args.images, args.output, registry, batch_size=args.batch_size)
    return 0 if summary.predicted else 1

# === end of the serving block ===================================================================


if __name__ == "__main__":
    sys.exit(main())
