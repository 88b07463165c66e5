"""The option declarations: one declaration per option gives its flag, check, pipeline
parameter, what each step receives and the lineage; the README table follows it."""

import math
import re
from pathlib import Path

import pytest

from tlp.components.lib import settings as declared
from tlp.components.lib.options import iter_options, markdown_table
from tlp.components.lib.settings import ALL_GROUPS, PIPELINE_GROUPS, Settings, pipeline_options, step_values
from tlp.components.lib.specs import ConfigError
from tlp.components.lib.steps import FEATURE_EXTRACTION, FINE_TUNING, REGISTRATION, STEP_NAMES
from tlp.pipelines.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def test_every_option_has_one_name_and_known_steps():
    names = [opt.name for opt in iter_options(ALL_GROUPS)]
    assert len(names) == len(set(names)), "two options share a name (and so a pipeline parameter)"
    commands = {command for opt in iter_options(ALL_GROUPS) for command in opt.spec.commands}
    for command in commands:
        flags = [opt.flag for opt in iter_options(ALL_GROUPS) if command in opt.spec.commands]
        assert len(flags) == len(set(flags)), f"two options share a flag in `tlp {command}`"
    for opt in iter_options(ALL_GROUPS):
        assert set(opt.spec.steps) <= set(STEP_NAMES), opt.name
        assert opt.spec.help and opt.spec.commands, f"{opt.name} needs help and at least one command"
    assert {opt.name for opt in pipeline_options()} == {
        opt.name for opt in iter_options(PIPELINE_GROUPS)
    }, "every option of a pipeline group is read by at least one step"


@pytest.mark.parametrize(
    "name, value, sentence",
    [
        ("epochs", "0", "--epochs 0 must be a whole number of at least 1"),
        ("epochs", "-3", "--epochs -3 must be a whole number of at least 1"),
        ("epochs", "2.5", "--epochs 2.5 is not a whole number"),
        ("fine_tune_epochs", "-1", "--fine-tune-epochs -1 must be a whole number of at least 0"),
        ("batch_size", "0", "--batch-size 0 must be a whole number of at least 1"),
        ("learning_rate", "0", "--learning-rate 0 must be a number of above 0"),
        ("learning_rate", "inf", "--learning-rate inf is not a finite number"),
        ("dropout", "1.0", "--dropout 1 must be a number of at least 0 and below 1"),
        ("fine_tune_at", "-1", "--fine-tune-at -1 must be a whole number of at least 0"),
        ("max_gap", "-1", "--max-gap -1 must be a number of at least 0 and at most 1"),
        ("min_accuracy", "1.5", "--min-accuracy 1.5 must be a number of at least 0 and at most 1"),
        ("champion_tolerance", "nan", "--champion-tolerance nan is not a finite number"),
        ("max_skipped_fraction", "2", "--max-skipped-fraction 2 must be a number of at least 0 and at most 1"),
        ("mixed_precision", "float64", "--mixed-precision 'float64' is not supported; choose one of float32"),
        ("base", "VGG99", "--base 'VGG99' is not supported; choose one of MobileNetV2"),
        ("alpha", "abc", "--alpha abc is not a number"),
    ],
)
def test_bad_values_get_one_sentence_from_the_declaration(name, value, sentence):
    with pytest.raises(ConfigError) as error:
        Settings.from_values({name: value})
    assert sentence in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("args", [["--champion-tolerance", "nan"], ["--max-gap", "-1"], ["--learning-rate", "inf"]])
def test_cli_refuses_non_finite_and_out_of_range_before_anything_starts(tmp_path, capsys, args):
    code = main(["run", *args, "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("tlp: error: ") and args[0] in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_values_cross_kfp_as_strings_and_come_back_typed():
    received = Settings.for_step(FINE_TUNING, {"fine_tune_epochs": "7.0", "xla": "False", "learning_rate": "0.001",
                                               "devices": "cpu:2"})
    assert received.fine_tuning.fine_tune_epochs == 7 and received.runtime.xla is False
    assert math.isclose(received.training.learning_rate, 0.001) and received.runtime.devices == "cpu:2"


def test_a_step_cannot_read_an_option_it_was_not_given():
    received = Settings.for_step(REGISTRATION, {"registry": "sqlite:///r.db"})
    assert received.registry.champion_tolerance == 0.0  # its own options take their defaults
    with pytest.raises(LookupError, match="option dropout is not passed to the registration step"):
        _ = received.head.dropout
    with pytest.raises(ConfigError, match="does not take option"):
        Settings.for_step(REGISTRATION, {"dropout": 0.5})


def test_each_step_receives_exactly_the_options_declared_for_it():
    values = Settings().values()
    head = step_values(FEATURE_EXTRACTION, values)
    assert {"dropout", "epochs", "learning_rate", "weights", "base", "alpha"} <= set(head)
    assert "fine_tune_at" not in head and "registry" not in head


def test_lineage_is_the_options_declared_for_it():
    lineage = Settings().lineage()
    assert {"dropout", "learning_rate", "fine_tune_at", "base", "weights"} <= set(lineage)
    assert "devices" not in lineage and "registry" not in lineage
    only_head = Settings.for_step(FEATURE_EXTRACTION, {}).lineage()
    assert "dropout" in only_head and "fine_tune_at" not in only_head


def test_flags_come_from_the_declaration():
    parser = build_parser()
    run = parser._subparsers._group_actions[0].choices["run"]
    flags = {flag: action.dest for action in run._actions for flag in action.option_strings}
    for opt in iter_options(ALL_GROUPS):
        assert (flags.get(opt.flag) == opt.name) == ("run" in opt.spec.commands), opt.name


def test_the_docs_reference_shows_every_declared_option_as_tlp_options_markdown_does():
    """The reference page is generated from the declarations when the site is built
    (docs/hooks.py): every command of tlp's parser has a section, and its declared options are
    the rows `tlp options COMMAND --markdown` prints."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    reference = hooks.command_reference()
    sections = dict(re.findall(r"^## `tlp ([a-z ]+)`\n(.*?)(?=^## |\Z)", reference, re.S | re.M))
    assert set(sections) == {
        "run", "component", "predict", "serve", "deploy", "drift", "export", "compile", "submit", "options",
        "schedule create", "schedule list", "schedule pause", "schedule resume", "schedule delete",
        "models list", "models show", "models promote", "models rollback",
    }
    commands = {command for opt in iter_options(declared.ALL_GROUPS) for command in opt.spec.commands}
    for command, section in sections.items():
        key = hooks.OPTION_KEYS.get(command, command)
        rows = markdown_table(declared.ALL_GROUPS, key).splitlines()[2:]
        assert (key in commands) == bool(rows), command
        for row in rows:
            assert row in section, f"tlp {command}: {row}"


@pytest.mark.parametrize("command", [["run"], ["submit"], ["compile"], ["predict"], ["serve"], ["deploy"],
                                     ["component"], ["schedule", "create"], ["schedule", "list"]])
def test_every_command_prints_its_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0 and "options" in capsys.readouterr().out
