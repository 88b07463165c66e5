"""bench.finetune_memory's growth figures: MB of peak memory per added photo, in KB per photo."""

from bench.finetune_memory import growth_kb


def test_growth_is_per_added_photo_between_consecutive_sizes_per_phase():
    def size(photos, training, export, drift):
        peaks = {"training": training, "export": export, "drift_reference": drift}
        return {"photos": photos, "peak_rss_mb": peaks, "overall_peak_rss_mb": max(peaks.values())}

    growth = growth_kb([size(20_000, 1165.0, 950.0, 1014.0), size(2_000, 922.0, 941.0, 978.0),
                        size(100_000, 1165.0, 950.0, 1014.0)])
    assert growth == {"training": [13.5, 0.0], "export": [0.5, 0.0], "drift_reference": [2.0, 0.0],
                      "overall": [10.39, 0.0]}
