"""The cut cache and file sharding under tf.distribute: MirroredStrategy over two logical CPUs,
and MultiWorkerMirroredStrategy with two worker processes on localhost reading their own files."""

import json
import os
import subprocess
import sys

import pytest

from tests.support import LOSS_RELATIVE_TOLERANCE, free_port, max_difference, weights
from tlp.components.lib.dataprep import records

WORKER = [sys.executable, "-m", "tests.faults.cut_cache_worker"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# As in test_training_faults: float summation order only (measured differences 0 to ~1.5e-8).
TOLERANCE = 1e-6


def _options(dataset, head, out, **options):
    return {"dataset": dataset, "model_in": head, "model_out": out, "backup": "", "epochs": 2, "batch": 16,
            "devices": "auto", "cut_cache": True, **options}


def _start(options, env=None):
    return subprocess.Popen([*WORKER, json.dumps(options)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=ROOT, env=env)


def _finish(process, timeout=900) -> str:
    stdout = process.communicate(timeout=timeout)[0]
    assert process.returncode == 0, stdout[-3000:]
    return stdout


def _line(stdout, key):
    return json.loads([x for x in stdout.splitlines() if x.startswith(key + " ")][-1][len(key) + 1:])





@pytest.mark.slow
def test_cut_cache_on_two_logical_cpus_equals_training_on_images(sharded, tmp_path):
    # Global batch 14: every epoch ends with a partial batch (64 = 4 x 14 + 8), split over 2 replicas.
    dataset, head = sharded
    runs = {}
    for name, cut in (("cut", True), ("plain", False)):
        out = str(tmp_path / name)
        stdout = _finish(_start(_options(dataset, head, out, batch=7, devices="cpu:2", cut_cache=cut)))
        assert "REPLICAS 2" in stdout and ("cut cache: built" in stdout) == cut
        runs[name] = (_line(stdout, "HISTORY"), weights(out))
    assert runs["cut"][0]["loss"] == pytest.approx(runs["plain"][0]["loss"], rel=LOSS_RELATIVE_TOLERANCE)
    assert max_difference(weights(head), runs["plain"][1]) > 50 * TOLERANCE  # training moved the weights
    assert max_difference(runs["cut"][1], runs["plain"][1]) < TOLERANCE


@pytest.mark.slow
def test_two_workers_each_read_half_of_the_files_and_equal_one_worker(sharded, tmp_path):
    """MultiWorkerMirroredStrategy with AutoShardPolicy.FILE, plain and cut-cached: each worker
    reads (or caches) only its own files, half of the records, and the result equals one worker.
    Global batch 64 = the whole training split, so each step's gradient is over the same images
    whichever worker read them."""
    dataset, head = sharded
    assert [len(records.read_metadata(dataset)["files"][s]) for s in ("train", "val")] == [8, 2]
    single = str(tmp_path / "single")
    single_out = _finish(_start(_options(dataset, head, single, batch=64, devices="cpu:1", count_records=True)))
    everything = _line(single_out, "RECORDS")
    assert len(everything) == 72 == len(set(everything))  # 64 train + 8 val, each read once
    reads = {}
    for cut in (False, True):
        cluster = {"chief": [f"127.0.0.1:{free_port()}"], "worker": [f"127.0.0.1:{free_port()}"]}
        processes = []
        for index, task in enumerate(({"type": "chief", "index": 0}, {"type": "worker", "index": 0})):
            env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": task})}
            out = str(tmp_path / f"{'cut' if cut else 'plain'}-{index}")
            processes.append((out, _start(_options(dataset, head, out, batch=32, cut_cache=cut, count_records=True),
                                          env)))
        outputs = [(out, _finish(process)) for out, process in processes]
        for _out, stdout in outputs:
            assert "REPLICAS 2" in stdout and "AutoShardPolicy.FILE" in stdout
            assert ("worker 1/2 caches its own files" in stdout or "worker 2/2 caches its own files" in stdout) == cut
        chief, worker = (_line(stdout, "RECORDS") for _out, stdout in outputs)
        assert len(chief) == len(worker) == 36  # half of the 64 + 8 records each
        assert sorted(chief + worker) == sorted(everything)  # together: every record, once
        reads[cut] = (set(chief), set(worker))
        assert max_difference(weights(outputs[0][0]), weights(single)) < TOLERANCE
        assert not os.path.exists(outputs[1][0])  # only the chief writes the model
    assert reads[True] == reads[False]  # the cut cache holds exactly the files plain training reads
