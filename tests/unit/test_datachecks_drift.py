"""The data checks' image drift: new training photos vs the champion's reference, with the champion's network."""

import shutil

from tlp.components.lib import drift
from tlp.components.lib.datachecks import image_drift


def test_image_drift_reports_and_stops_only_at_the_limit(sample_dataset, tuned_model):
    # The champion's own training photos: nothing to tell apart.
    calm = image_drift(sample_dataset, tuned_model[0], max_image_drift=0.9)
    assert calm["image_drift_auc"] <= 0.65 and not calm["problems"]
    assert "image drift" in calm["findings"][0]
    stopped = image_drift(sample_dataset, tuned_model[0], max_image_drift=0.01)
    assert "--max-image-drift 0.01" in stopped["problems"][0]


def test_the_champions_own_photos_are_named_when_they_are_all_there_is(sample_dataset, tuned_model):
    found = image_drift(sample_dataset, tuned_model[0], max_image_drift=0.0)
    reference = drift.load_reference(tuned_model[0])
    assert found["image_drift_photos"] == len(reference.ids)  # nothing else to compare: all kept
    assert f"{len(reference.ids)} of the {len(reference.ids)} photos are the champion's own" in found["findings"][0]


def test_photos_the_champion_trained_on_are_left_out_when_others_remain(sample_dataset, tuned_model, tmp_path):
    """A champion whose reference holds half of these training photos: that half is left out, the
    other half is compared (the same kind of photos: no drift)."""
    champion = tmp_path / "champion"
    shutil.copytree(tuned_model[0], champion)
    reference = drift.load_reference(str(champion))
    half = len(reference.ids) // 2
    drift.save_reference(str(champion), reference.features[:half], reference.ids[:half])
    found = image_drift(sample_dataset, str(champion), max_image_drift=0.0)
    assert found["image_drift_photos"] == len(reference.ids) - half
    assert f"{half} photos the champion trained on left out" in found["findings"][0]
    assert found["image_drift_auc"] <= 0.65
