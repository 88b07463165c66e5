"""LiteRT benchmark: ``python -m bench.litert --model DIR --dataset DIR --output DIR [--result FILE]``.

Each .tflite variant (float32, float16, dynamic, int8) of a model: file size, single-image latency
in the LiteRT interpreter on this CPU (median over the test split, one image per call, in a process
without TensorFlow) against the Keras model's, and its test accuracy change. Run by ``make bench``
(bench/run.py, benchmark ``litert``) at the suite's size (160 px, alpha 1.0, calibrated random
weights; the head trained on benchmark 1's data set), where accuracy says little: the row that
matters is size and latency.
"""

from __future__ import annotations

import argparse
import json

from tlp.components.lib import litert


def run(model_dir: str, dataset_dir: str, output_dir: str) -> dict:
    return litert.export_and_score(model_dir, dataset_dir, output_dir, list(litert.VARIANTS))


def fill_report(report, measured: dict) -> None:
    """Adds the rows to a bench/run.py ``Report``."""
    keras = measured["keras"]
    report.measure("Keras model: single-image latency (median)", keras["latency_ms"], "ms")
    for variant, m in measured["variants"].items():
        report.measure(f"{variant}: file size", m["size_bytes"] / 1e6, "MB")
        report.measure(f"{variant}: single-image latency (median)", m["latency_ms"], "ms")
        report.measure(f"{variant}: latency vs Keras", keras["latency_ms"] / m["latency_ms"], "x faster")
        report.measure(f"{variant}: test accuracy change vs Keras ({measured['test_photos']} photos)",
                       m["accuracy_change"], "")
    for variant, error in measured.get("failed", {}).items():
        report.notes.append(f"{variant}: {error}")
    report.notes.append(f"Input uint8 {measured['input']['shape']}; int8 calibrated on {measured['calibration']}.")
    report.details = measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.litert", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model directory (a feature-extraction or fine-tuning output)")
    parser.add_argument("--dataset", required=True, help="its prepared data set")
    parser.add_argument("--output", required=True, help="where the variants go")
    parser.add_argument("--result", default="", help="also write the measurements as JSON")
    args = parser.parse_args(argv)
    measured = run(args.model, args.dataset, args.output)
    print(litert.table(measured))
    if args.result:
        with open(args.result, "w") as handle:
            json.dump(measured, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
