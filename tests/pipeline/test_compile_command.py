"""``tlp compile`` through the installed console script: with its defaults, as the README and
``make compile`` run it, and with every option group it accepts (images, hardware, deploy,
tracking), each spec equal to the pipeline ``tlp submit`` compiles from the same options."""

import pytest
import yaml
from kfp import compiler

from tests.pipeline.test_golden_ir import GOLDEN, _normalised
from tests.support import run_tlp
from tlp.components.lib.settings import CloudOptions, DeployOptions, HardwareOptions, ImageOptions, TrackingOptions
from tlp.pipelines.training import create_pipeline

IMAGES = ["--image-repo", "us-docker.pkg.dev/my-project/tlp", "--image-tag", "golden"]
BOARD = "projects/my-project/locations/us-central1/tensorboards/123"


def _compiled(path) -> str:
    return yaml.safe_dump(_normalised(yaml.safe_load(path.read_text())), sort_keys=True, width=100)


def test_compile_with_its_defaults_writes_pipeline_yaml_in_the_current_directory(tmp_path):
    result = run_tlp("compile", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "pipeline written to pipeline.yaml"
    assert yaml.safe_load((tmp_path / "pipeline.yaml").read_text())["pipelineInfo"]["name"] == "transfer-learning"


@pytest.mark.parametrize("golden, options", [
    ("pipeline.yaml", []),
    ("pipeline-deploy.yaml", ["--deploy-endpoint", "cats", "--traffic", "10"]),
])
def test_compile_writes_the_golden_pipeline(tmp_path, golden, options):
    output = tmp_path / "spec.yaml"
    result = run_tlp("compile", *IMAGES, *options, "--output", str(output))
    assert result.returncode == 0, result.stderr
    assert _compiled(output) == (GOLDEN / golden).read_text()


def test_compile_with_hardware_deploy_and_tracking_options(tmp_path):
    output = tmp_path / "spec.yaml"
    result = run_tlp("compile", *IMAGES, "--gpus", "2", "--accelerator", "NVIDIA_L4", "--machine-type",
                     "g2-standard-24", "--replicas", "2", "--deploy-endpoint", "cats", "--traffic", "10",
                     "--tensorboard", BOARD, "--output", str(output))
    assert result.returncode == 0, result.stderr
    expected = tmp_path / "expected.yaml"
    compiler.Compiler().compile(create_pipeline(
        ImageOptions(image_repo="us-docker.pkg.dev/my-project/tlp", image_tag="golden"),
        HardwareOptions(gpus=2, accelerator="NVIDIA_L4", machine_type="g2-standard-24", replicas=2), CloudOptions(),
        deploy=DeployOptions(deploy_endpoint="cats", traffic=10), tracking=TrackingOptions(tensorboard=BOARD),
    ), str(expected))
    assert _compiled(output) == _compiled(expected)
    spec = output.read_text()
    assert "g2-standard-24" in spec and "NVIDIA_L4" in spec and BOARD in spec and "deployment" in spec


def test_compile_refuses_a_bad_option_in_one_sentence(tmp_path):
    result = run_tlp("compile", "--traffic", "120", "--output", str(tmp_path / "x.yaml"))
    assert result.returncode == 2
    assert "--traffic 120" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.yaml").exists()


def test_compile_with_export_litert_chains_the_step_after_registration_inside_the_gate(tmp_path):
    output = tmp_path / "spec.yaml"
    result = run_tlp("compile", *IMAGES, "--export-litert", "float16,int8", "--max-quantization-drop", "0.02",
                     "--output", str(output))
    assert result.returncode == 0, result.stderr
    spec = yaml.safe_load(output.read_text())
    gate = spec["components"]["comp-condition-1"]["dag"]["tasks"]
    task = gate["litert-export"]
    assert task["dependentTasks"] == ["registration"]
    parameters = task["inputs"]["parameters"]
    assert parameters["variants"]["runtimeValue"]["constant"] == "float16,int8"
    assert parameters["max_quantization_drop"]["runtimeValue"]["constant"] == 0.02
    assert parameters["version"]["taskOutputParameter"] == {"outputParameterKey": "version",
                                                            "producerTask": "registration"}
    # Without --export-litert the pipeline has no such step (the golden file stays as it was).
    assert "litert-export" not in (GOLDEN / "pipeline.yaml").read_text()
    refused = run_tlp("compile", "--export-litert", "int4", "--output", str(tmp_path / "x.yaml"))
    assert refused.returncode == 2 and "unknown LiteRT variant 'int4'" in refused.stderr
