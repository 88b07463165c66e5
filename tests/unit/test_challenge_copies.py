"""The champion is never re-measured on a test photo it may have trained on as another copy."""
from tests.support import ChampionRegistry
from tlp.components.lib import registration
from tlp.components.lib.dataprep import split as content_split


def test_test_photos_kept_with_copies_are_left_out_of_the_champions_scoring(monkeypatch):
    scored: dict[str, set] = {}

    def fake_evaluate(model_dir, dataset_dir, splits, exclude_source_ids=(), strategy=None):
        scored[model_dir] = set(exclude_source_ids)
        return {"test": {"accuracy": 0.5, "examples": 3}}

    metadata = {
        "split": {"method": content_split.SPLIT_METHOD, "seed": 42, "moved": []},
        "skipped": [
            {"path": "cat/resaved.png", "kind": "duplicate", "duplicate_of": "cat/original.png",
             "reason": "the same picture as cat/original.png saved again"},
            {"path": "dog/broken.jpg", "kind": "unreadable", "reason": "cannot be decoded"},
        ],
    }
    monkeypatch.setattr(registration, "evaluate_model", fake_evaluate)
    monkeypatch.setattr(registration.records, "read_metadata", lambda _: metadata)
    monkeypatch.setattr(registration.model_lib, "read_info", lambda _: {"class_names": ["cat", "dog"]})
    monkeypatch.setattr(registration, "split_of_data", lambda _: registration.split_of(
        ChampionRegistry().version("pets", "1").tags))
    promote, reason = registration.challenge(ChampionRegistry(), "pets", "2", 0.5, "candidate-model", "data", 0.0)
    assert promote is not None, reason
    # The kept copy (cat/original.png) may sit in test here and in train in the champion's data set.
    assert scored["champion-model"] == {"cat/original.png"}
    assert scored["candidate-model"] == {"cat/original.png"}, "both are scored on the same photos"
    assert "1 left out" in reason
