"""What ``tlp`` prints when a command fails, and what it keeps off the console, through the real
entry points: every error raised on purpose ends in its one sentence and its exit code; a bug
ends in one line naming where its traceback was written; TensorFlow's and libjpeg's native
lines go to a file, not between the command's own lines."""

import os
import re

import pytest
from google.api_core.exceptions import PermissionDenied

from tests.conftest import write_image
from tests.support import run_tlp
from tlp.components.lib.specs import ConfigError, NotFound, ServiceError
from tlp.pipelines import cli
from tlp.pipelines.console import RunFailed

UNEXPECTED = re.compile(r"^tlp: error: unexpected (\w+): (.*); full traceback in (\S+)$")


@pytest.mark.parametrize("error, code", [
    (ConfigError("--x 3 is wrong; pass 2."), 2),
    (NotFound("cats/9 is not registered; see tlp models list cats."), 3),
    (ServiceError("the endpoint does not list the deployment; retry."), 1),
    (RunFailed("step evaluation failed: boom; its full log: X"), 1),
])
def test_errors_raised_on_purpose_map_to_their_exit_code(monkeypatch, capsys, error, code):
    def fails(args):
        raise error

    monkeypatch.setattr(cli, "command_options", fails)
    assert cli.main(["options"]) == code
    assert capsys.readouterr().err == f"tlp: error: {error}\n"


def test_deploy_when_the_service_fails_ends_in_one_sentence_and_exit_1(monkeypatch, capsys):
    def refused(*args, **kwargs):
        raise ServiceError("endpoint cats does not list deployed model 123 after the deploy; check it in the console.")

    monkeypatch.setattr(cli.deploy, "deploy", refused)
    code = cli.main(["deploy", "cats@champion", "--registry", "vertex://p/us-central1", "--endpoint", "cats"])
    err = capsys.readouterr().err
    assert code == 1
    assert err == ("tlp: error: endpoint cats does not list deployed model 123 after the deploy; check it in the "
                   "console.\n")


def test_a_refused_google_request_keeps_its_sentence(monkeypatch, capsys):
    def refused(args):
        raise PermissionDenied("aiplatform.pipelineJobs.create denied")

    monkeypatch.setattr(cli, "command_submit", refused)
    assert cli.main(["submit"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tlp: error: Google Cloud refused the request: 403 aiplatform.pipelineJobs.create denied;")
    assert len(err.splitlines()) == 1


def test_an_unexpected_exception_prints_one_line_and_writes_its_traceback(monkeypatch, capsys):
    def broken(args):
        return {}["missing"] + args  # a bug, not an error raised on purpose

    monkeypatch.setattr(cli, "command_options", broken)
    assert cli.main(["options"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    kind, message, path = UNEXPECTED.match(err.strip()).groups()
    assert (kind, message) == ("KeyError", "'missing'")
    written = open(path).read()
    assert written.startswith("Traceback (most recent call last):") and "in broken" in written
    os.unlink(path)


def test_the_traceback_goes_to_the_output_dir_logs_when_the_command_has_one(monkeypatch, capsys, tmp_path):
    def broken(args):
        raise TypeError("unsupported operand\nsecond line")

    monkeypatch.setattr(cli, "command_models", broken)
    assert cli.main(["models", "list", "cats", "--output-dir", str(tmp_path)]) == 1
    kind, message, path = UNEXPECTED.match(capsys.readouterr().err.strip()).groups()
    assert (kind, message) == ("TypeError", "unsupported operand")
    assert os.path.dirname(path) == str(tmp_path / "logs") and "TypeError" in open(path).read()


# --- TensorFlow's native lines ------------------------------------------------------------------

NATIVE = ("cuInit", "Premature end of JPEG data", "E0000", "W0000", "I0000", "oneDNN", "cpu_feature_guard")


def _truncated_jpeg(path):
    """Noise, so that the bytes are mostly scan data: cutting them in half cuts pixels, not headers."""
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


@pytest.mark.slow  # its own processes load TensorFlow or Beam: make test runs it, make test-fast does not
def test_predict_a_folder_keeps_native_lines_off_the_console(tuned_model, tmp_path):
    folder = tmp_path / "photos"
    write_image(str(folder / "a.jpg"), size=(80, 60), color=(10, 200, 30))
    write_image(str(folder / "b.png"), size=(50, 70), color=(200, 20, 30))
    _truncated_jpeg(folder / "half.jpg")
    result = run_tlp("predict", tuned_model[0], str(folder), "--output", str(tmp_path / "preds.csv"),
                     env={"TF_CPP_MIN_LOG_LEVEL": "0"})  # as loud as TensorFlow can be
    console = result.stdout + result.stderr
    assert result.returncode == 0, console
    assert not [word for word in NATIVE if word in console], console
    rows = (tmp_path / "preds.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("image,")


@pytest.mark.slow  # its own processes load TensorFlow or Beam: make test runs it, make test-fast does not
def test_predict_files_keeps_native_lines_off_the_console(tuned_model, tmp_path):
    image = write_image(str(tmp_path / "cat.jpg"), size=(80, 60))
    result = run_tlp("predict", tuned_model[0], image, "--json", env={"TF_CPP_MIN_LOG_LEVEL": "0"})
    console = result.stdout + result.stderr
    assert result.returncode == 0, console
    assert not [word for word in NATIVE if word in console], console
    assert '"label"' in result.stdout
