"""The data checks' image drift: new training photos vs the champion's reference, with the champion's network."""

from tlp.components.lib.datachecks import image_drift


def test_image_drift_reports_and_stops_only_at_the_limit(sample_dataset, tuned_model):
    # The champion's own training photos: nothing to tell apart.
    calm = image_drift(sample_dataset, tuned_model[0], max_image_drift=0.9)
    assert calm["image_drift_auc"] <= 0.65 and not calm["problems"]
    assert "image drift" in calm["findings"][0]
    stopped = image_drift(sample_dataset, tuned_model[0], max_image_drift=0.01)
    assert "--max-image-drift 0.01" in stopped["problems"][0]
