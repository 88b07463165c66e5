"""Infra validation: the candidate is served once and must answer as evaluation did."""

import shutil

import pytest

from tlp.components.lib.infra_validation import evaluation_probabilities, infra_validate, split_images


# The server in its own process loads TensorFlow again (slow: make test runs it, make test-fast does not).
@pytest.mark.parametrize("mode", [pytest.param("subprocess", marks=pytest.mark.slow), "inprocess"])
def test_a_good_model_passes(tuned_model, sample_dataset, mode):
    result = infra_validate(tuned_model[0], sample_dataset, mode=mode)
    assert result.passed, result
    assert result.images == 8 and result.max_abs_difference <= 1e-5
    assert "served 8 test images" in result.summary() and result.mode == mode


def test_a_model_answering_differently_from_evaluation_fails(tuned_model, sample_dataset):
    images = split_images(sample_dataset, 4)
    expected = evaluation_probabilities(tuned_model[0], images)
    swapped = [list(reversed(row)) for row in expected]  # what a mixed-up class order would look like
    result = infra_validate(tuned_model[0], images, swapped, mode="inprocess")
    assert not result.passed
    assert "answers differently from evaluation" in result.reason and result.max_abs_difference > 0.01


def test_a_model_that_does_not_load_fails_with_the_servers_words(tuned_model, sample_dataset, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tuned_model[0], broken)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    images = split_images(sample_dataset, 2)
    result = infra_validate(str(broken), images, [[0.5, 0.5], [0.5, 0.5]], timeout=120)
    assert not result.passed
    assert "could not be served" in result.reason and "exited" in result.reason
    assert result.server_log  # the server's last lines say why
