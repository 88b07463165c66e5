"""The compiled pipeline against stored golden IR files, so that any change to the pipeline's
shape (steps, wiring, parameters and defaults, images, resources, the custom job's worker
pools) shows up in review as a diff of tests/pipeline/golden/*.yaml.

After an intended change: TLP_UPDATE_GOLDEN=1 .venv/bin/pytest tests/pipeline/test_golden_ir.py
and commit the new files. The Python source embedded in each executor's command is replaced by
a placeholder: component bodies are covered by their own tests, not by this one."""

import os
from pathlib import Path

import pytest
import yaml
from kfp import compiler

from tlp.components.lib.settings import (
    CloudOptions,
    DeployOptions,
    HardwareOptions,
    ImageOptions,
    TrackingOptions,
)
from tlp.pipelines.training import create_pipeline

GOLDEN = Path(__file__).parent / "golden"
VARIANTS = {
    "pipeline.yaml": (HardwareOptions(), CloudOptions(), DeployOptions()),
    "pipeline-2-nodes-l4.yaml": (
        HardwareOptions(gpus=2, accelerator="NVIDIA_L4", machine_type="g2-standard-24", replicas=2),
        CloudOptions(service_account="trainer@my-project.iam.gserviceaccount.com"),
        DeployOptions(),
    ),
    # The deploy step, only behind "gate passed" and "registration made a new champion".
    "pipeline-deploy.yaml": (HardwareOptions(), CloudOptions(), DeployOptions(deploy_endpoint="cats", traffic=10)),
    "pipeline-vertex-tensorboard.yaml": (
        HardwareOptions(),
        CloudOptions(service_account="trainer@my-project.iam.gserviceaccount.com"),
        DeployOptions(),
        TrackingOptions(tensorboard="projects/my-project/locations/us-central1/tensorboards/123"),
    ),
}


def _normalised(document):
    if isinstance(document, dict):
        return {k: ("<component source>" if k == "command" else _normalised(v)) for k, v in document.items()}
    if isinstance(document, list):
        return [_normalised(item) for item in document]
    return document


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_compiled_pipeline_matches_the_golden_file(tmp_path, name):
    package = tmp_path / name
    images = ImageOptions(image_repo="us-docker.pkg.dev/my-project/tlp", image_tag="golden")
    compiler.Compiler().compile(create_pipeline(images, *VARIANTS[name]), str(package))
    compiled = yaml.safe_dump(_normalised(yaml.safe_load(package.read_text())), sort_keys=True, width=100)
    golden = GOLDEN / name
    if os.environ.get("TLP_UPDATE_GOLDEN") == "1":
        golden.write_text(compiled)
    assert golden.exists(), f"no golden file {golden}; create it with TLP_UPDATE_GOLDEN=1"
    assert compiled == golden.read_text(), (
        f"the compiled pipeline differs from {golden}; if the change is intended, regenerate with "
        "TLP_UPDATE_GOLDEN=1 .venv/bin/pytest tests/pipeline/test_golden_ir.py and review the diff"
    )
