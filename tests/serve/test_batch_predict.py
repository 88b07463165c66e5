"""Batch prediction: ``tlp predict MODEL DIR --output preds.jsonl|.csv`` over a folder (rows equal
``tlp predict``'s, unreadable files listed with their reason, model called in bounded batches),
and ``--batch-job`` on a ``gs://`` folder as a Vertex AI BatchPredictionJob (stand-in)."""

import csv
import json
import os
import shutil

import numpy as np
import pytest

from tests.serve.conftest import instance, photo_paths, post


@pytest.fixture
def folder(tmp_path, photos):
    """Photos in nested folders, plus a text file, a truncated JPEG and an empty file."""
    root = tmp_path / "photos"
    (root / "trip" / "day2").mkdir(parents=True)
    for index, path in enumerate(photos):
        target = root / ("trip/day2" if index % 2 else "trip") / os.path.basename(path)
        shutil.copy(path, target)
    (root / "notes.txt").write_text("not an image")
    data = open(photos[0], "rb").read()
    (root / "trip" / "broken.jpg").write_bytes(data[: len(data) // 2])
    (root / "empty.png").write_bytes(b"")
    return root


def _expected(model_dir, folder):
    from tlp.pipelines.predict import predict_files

    images = sorted(str(p) for p in folder.rglob("*") if p.suffix in (".jpg", ".jpeg", ".png", ".gif", ".bmp")
                    and p.name not in ("broken.jpg", "empty.png"))
    return {row["image"]: row for row in predict_files(model_dir, images, registry_uri="unused")}


def test_a_folder_to_jsonl(tuned_model, folder, tmp_path, capsys):
    from tlp.pipelines.cli import main

    output = tmp_path / "preds.jsonl"
    assert main(["predict", tuned_model[0], str(folder), "--output", str(output), "--batch-size", "4"]) == 0
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 9  # 6 photos + 3 unreadable files, each once
    expected = _expected(tuned_model[0], folder)
    predicted = {row["image"]: row for row in rows if "error" not in row}
    assert set(predicted) == set(expected)
    for path, row in predicted.items():
        assert row["label"] == expected[path]["label"]
        np.testing.assert_allclose(row["probabilities"], expected[path]["probabilities"], atol=1e-5)
    errors = {os.path.basename(row["image"]): row["error"] for row in rows if "error" in row}
    assert set(errors) == {"notes.txt", "broken.jpg", "empty.png"}
    assert errors["empty.png"] == "empty file (0 bytes)"
    assert "Unknown image file format" in errors["notes.txt"]
    assert "Invalid JPEG data" in errors["broken.jpg"]
    out = capsys.readouterr().out
    assert "6 images classified" in out and "3 unreadable" in out
    assert f"unreadable: {folder / 'notes.txt'}: not an image TensorFlow can decode" in out


def test_a_folder_to_csv(tuned_model, folder, tmp_path):
    from tlp.pipelines.cli import main

    output = tmp_path / "preds.csv"
    assert main(["predict", tuned_model[0], str(folder), "--output", str(output)]) == 0
    with open(output, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["image", "label", "score", "p_circles", "p_squares", "error"]
    expected = _expected(tuned_model[0], folder)
    for row in rows:
        if row["error"]:
            assert not row["label"]
            continue
        want = expected[row["image"]]
        assert row["label"] == want["label"]
        np.testing.assert_allclose([float(row["p_circles"]), float(row["p_squares"])], want["probabilities"],
                                   atol=1e-5)
    assert sum(1 for row in rows if row["error"]) == 3


def test_the_model_sees_bounded_batches_and_files_stream(tuned_model, tmp_path, monkeypatch):
    """Memory stays flat: files are read batch by batch, never all at once."""
    from tlp.components.lib import serving
    from tlp.pipelines import predict

    for index in range(3):
        photo_paths(tmp_path / "many" / str(index))
    calls, opened = [], []
    original_call, original_read = serving.Predictor.__call__, predict._read_limited

    def spy_call(self, images):
        calls.append((len(images), len(opened)))
        return original_call(self, images)

    def spy_read(path):
        opened.append(path)
        return original_read(path)

    monkeypatch.setattr(serving.Predictor, "__call__", spy_call)
    monkeypatch.setattr(predict, "_read_limited", spy_read)
    summary = predict.predict_to_file(tuned_model[0], [str(tmp_path / "many")], str(tmp_path / "p.jsonl"),
                                      "unused", batch_size=5, echo=lambda *a: None)
    assert summary.predicted == 18
    assert [size for size, _ in calls] == [5, 5, 5, 3]
    # Before each model call only that batch (and earlier ones) had been read.
    assert [read for _, read in calls] == [5, 10, 15, 18]


def test_a_file_that_cannot_be_read_stops_the_run_and_a_dangling_link_is_listed(tuned_model, folder, tmp_path,
                                                                                 monkeypatch, capsys):
    """A failed read says nothing about the photo (issue 28, point 4): it stops with one sentence,
    the rows already written stay. A link to a missing file has no bytes to read: listed, not fatal."""
    import builtins

    from tlp.pipelines import predict
    from tlp.pipelines.cli import main

    os.symlink(tmp_path / "gone.jpg", folder / "trip" / "link.jpg")
    output = tmp_path / "preds.jsonl"
    locked = sorted(str(p) for p in (folder / "trip" / "day2").iterdir())[-1]  # read after the others

    def refusing_open(path, *args, **kwargs):  # the fault: what the OS answers for a file without read access
        if str(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(predict, "open", refusing_open, raising=False)
    assert main(["predict", tuned_model[0], str(folder), "--output", str(output), "--batch-size", "2"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tlp: error:")]
    assert len(errors) == 1  # one sentence, no traceback (the other line names TensorFlow's native log)
    assert f"could not read {locked} (PermissionError" in errors[0] and "make it readable" in errors[0]
    written = [json.loads(line)["image"] for line in output.read_text().splitlines()]
    assert written and locked not in written  # what was done before stays; nothing claims the file is a bad photo

    monkeypatch.undo()
    assert main(["predict", tuned_model[0], str(folder), "--output", str(output), "--batch-size", "2"]) == 0
    errors_by_file = {os.path.basename(row["image"]): row["error"]
                      for row in map(json.loads, output.read_text().splitlines()) if "error" in row}
    assert errors_by_file["link.jpg"].startswith("a link to a missing file")


def test_bad_output_name_is_refused(tuned_model, folder, capsys):
    from tlp.pipelines.cli import main

    assert main(["predict", tuned_model[0], str(folder), "--output", "preds.txt"]) == 2
    assert "name a .jsonl or .csv file" in capsys.readouterr().err


def test_the_server_takes_vertex_batch_predictions_file_list_instances(served, photos):
    """Vertex AI batch prediction sends each listed file as {"b64": ...}."""
    url, _, _ = served
    body = {"instances": [{"b64": instance(open(photos[0], "rb").read())["image_bytes"]["b64"]}]}
    status, answer = post(f"{url}/v1/models/sample:predict", body)
    assert status == 200 and answer["predictions"][0]["label"] in ("circles", "squares")


def test_batch_job_on_a_gs_folder(standin, photos, monkeypatch, capsys):
    from google.cloud.aiplatform import jobs

    from tests.cloud.test_deploy import seed_model
    from tlp.pipelines.cli import main

    monkeypatch.setattr(jobs, "_JOB_WAIT_TIME", 0.05)
    parent = seed_model(standin)
    for path in photos:
        standin.put_object(f"gs://photos/in/{os.path.basename(path)}", open(path, "rb").read())
    standin.put_object("gs://photos/in/README.txt", b"not a photo")
    standin.add_bucket("preds")
    registry = f"vertex://tlp-test/us-central1?api_endpoint={standin.url}"
    code = main(["predict", "cats@champion", "gs://photos/in", "--batch-job", "--output", "gs://preds/run1",
                 "--registry", registry, "--batch-machine-type", "n1-standard-4", "--batch-replicas", "2"])
    assert code == 0
    [create] = standin.find("POST", r"/batchPredictionJobs$")
    job = create.body
    assert job["model"] == f"{parent}@2"
    assert job["inputConfig"]["instancesFormat"] == "file-list"
    [list_uri] = job["inputConfig"]["gcsSource"]["uris"]
    listed = standin.get_object(list_uri).decode().split()
    assert sorted(listed) == sorted(f"gs://photos/in/{os.path.basename(p)}" for p in photos)  # no README.txt
    assert job["outputConfig"] == {"predictionsFormat": "jsonl",
                                   "gcsDestination": {"outputUriPrefix": "gs://preds/run1"}}
    resources = job["dedicatedResources"]
    assert resources["machineSpec"]["machineType"] == "n1-standard-4"
    assert (resources["startingReplicaCount"], resources["maxReplicaCount"]) == (2, 2)
    [stored] = standin.batch_prediction_jobs.values()
    assert stored["state"] == "JOB_STATE_SUCCEEDED"  # followed until it ended
    out = capsys.readouterr().out
    assert "6 images under gs://photos/in" in out and "JOB_STATE_SUCCEEDED" in out
    assert "predictions in gs://preds/run1/prediction-" in out


def test_batch_job_needs_vertex_and_gs(capsys, tmp_path):
    from tlp.pipelines.cli import main

    assert main(["predict", "cats@champion", "gs://photos/in", "--batch-job", "--output", "gs://p/o",
                 "--registry", f"sqlite:///{tmp_path}/r.db"]) == 2
    assert "needs --registry vertex://PROJECT/REGION" in capsys.readouterr().err
