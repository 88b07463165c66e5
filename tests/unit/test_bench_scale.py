"""Benchmark 12's bookkeeping (bench/scale.py): which step a process belongs to, a step's memory
as the sum over its process tree, and the two checks. No process is started."""

import json

import pytest

from bench.scale import ORCHESTRATOR, Proc, TreeUsage, per_photo_ratio, step_of, worst_growth_kb

MB = 1_000_000


def _step_command(task: str) -> tuple:
    """The command line kfp's local SubprocessRunner gives a step (trimmed)."""
    executor_input = {"inputs": {"parameterValues": {"data": "folder:/photos"}},
                      "outputs": {"artifacts": {"dataset": {"artifacts": [{"uri": f"/root/run-1/{task}/dataset"}]}},
                                  "outputFile": f"/root/run-1/{task}/executor_output.json"}}
    return ("sh", "-c", "python3 -m kfp.dsl.executor_main \"$0\" \"$@\"", "--executor_input",
            json.dumps(executor_input), "--function_to_execute", task.replace("-", "_"))


def test_step_of_reads_the_task_from_the_executor_output_file():
    assert step_of(_step_command("data-prep")) == "data-prep"
    # a later step's inputs name an earlier step's folder; its own output file decides
    command = list(_step_command("fine-tuning"))
    command[4] = command[4].replace('{"parameterValues"', '{"artifacts": {"model": "/root/run-1/feature-extraction/m"},'
                                    ' "parameterValues"')
    assert step_of(command) == "fine-tuning"
    assert step_of(("python", "-c", "from apache_beam.runners.worker import sdk_worker_main")) is None


def test_a_steps_memory_is_the_sum_over_its_process_tree_at_its_largest_sample():
    usage = TreeUsage(root=1)
    tlp = Proc(1, 0, 300 * MB, 5.0, ("tlp", "run"))
    shell, step = Proc(2, 1, 3 * MB, 0.0, _step_command("data-prep")), Proc(3, 2, 900 * MB, 10.0, ("python3",))
    worker = Proc(4, 3, 700 * MB, 20.0, ("python", "-m", "beam_worker"))
    usage.add([tlp, shell, step], at=0.1)
    usage.add([tlp, shell, step, worker, Proc(5, 3, 600 * MB, 18.0, ("python", "-m", "beam_worker"))], at=0.2)
    # one worker ended and the step process grew: a smaller sum than the sample before
    usage.add([tlp, shell, Proc(3, 2, 1000 * MB, 40.0, ("python3",)), Proc(4, 3, 700 * MB, 30.0, ())], at=0.3)
    usage.add([Proc(1, 0, 310 * MB, 6.0, ("tlp", "run")), Proc(6, 1, 2 * MB, 0.0, _step_command("evaluation")),
               Proc(7, 6, 500 * MB, 3.0, ("python3",))], at=0.4)

    prep = usage.steps["data-prep"]
    assert prep.peak_rss == (3 + 900 + 700 + 600) * MB  # not the largest process, not the last sample
    assert prep.largest_process_rss == 1000 * MB
    assert prep.most_processes == 4
    assert prep.cpu_seconds == pytest.approx(40.0 + 30.0 + 18.0)  # each process's latest CPU seconds
    assert usage.steps["evaluation"].peak_rss == 502 * MB
    assert usage.steps[ORCHESTRATOR].peak_rss == 310 * MB  # tlp run itself is charged to no step
    assert usage.to_json()["data-prep"]["peak_rss_mb"] == 2203.0


def test_checks_per_photo_cost_and_memory_growth_between_sizes():
    assert per_photo_ratio([(2000, 20.0), (20000, 150.0)]) == pytest.approx(0.75)
    # 1,000 MB at 2k, 1,036 MB at 20k (2 KB per photo), 1,236 MB at 100k (2.5 KB per photo)
    growth, sizes = worst_growth_kb([(20000, 1036.0), (2000, 1000.0), (100000, 1236.0)])
    assert growth == pytest.approx(2.5) and sizes == (20000, 100000)
