"""Bad --tune input ends with exit 2 and one sentence, before anything starts."""

import os

import pytest

from tlp.pipelines.cli import main

SMALL = ["--weights", "none", "--data", "sample:10", "--image-size", "32", "--alpha", "0.35"]
TOO_MANY = "fine_tune_at=" + ",".join(str(n) for n in range(10, 90, 5)) + " learning_rate=1e-4,3e-5,1e-5,3e-6,1e-6"


@pytest.mark.parametrize("tune, expected", [
    ("momentum=0.9", "--tune cannot tune 'momentum'"),
    ("learning_rate=1e-4,20", "--learning-rate 20 must be a number of above 0 and at most 10"),
    ("fine_tune_at=60,500", "--fine-tune-at 500 is beyond the 154 layers of MobileNetV2"),
    ("dropout=", "--tune dropout= has no values"),
    (TOO_MANY, "--tune makes 80 trials, more than 64"),
])
def test_bad_tune_fails_with_exit_2_and_nothing_started(tmp_path, capsys, tune, expected):
    code = main(["run", *SMALL, "--tune", tune, "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("tlp: error: ") and expected in err and len(err.splitlines()) == 1
    assert not os.path.exists(tmp_path / "out" / "pipeline-root")  # nothing started


def test_tune_trials_beyond_the_grid_and_without_tune(tmp_path, capsys):
    assert main(["run", *SMALL, "--tune", "dropout=0.1,0.2", "--tune-trials", "3",
                 "--output-dir", str(tmp_path / "out")]) == 2
    assert "more than the grid's 2 points" in capsys.readouterr().err
    assert main(["run", *SMALL, "--tune-trials", "3", "--output-dir", str(tmp_path / "out")]) == 2
    assert "--tune-trials needs --tune" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out" / "pipeline-root")


def test_compile_refuses_a_bad_grid_without_writing(tmp_path, capsys):
    target = tmp_path / "p.yaml"
    assert main(["compile", "--output", str(target), "--tune", "epochs=0"]) == 2
    assert "--epochs 0 must be a whole number of at least 1" in capsys.readouterr().err
    assert not target.exists()
