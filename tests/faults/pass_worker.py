"""Runs a model pass in its own process (logical devices and TF_CONFIG are set before TensorFlow
starts): evaluation of a model, or the frozen base's features (feature extraction's pass).

usage: python -m tests.faults.pass_worker OPTIONS_JSON
OPTIONS_JSON: {"mode": "evaluate" | "features", "dataset", "model" (evaluate), "devices", "batch",
               "exclude" (evaluate, optional: source ids left out), "train_sample" (evaluate, optional:
               the gap's sample of training photos)}
Prints "RESULT <json>": evaluate: per split the metrics, and the test split's confusion matrix, ROC
and misclassified source ids; features: per split the labels and the features as lists.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv):
    options = json.loads(argv[0])
    from tlp.components.lib.strategy import make_strategy

    strategy = make_strategy(options["devices"])  # first: logical devices before TensorFlow starts
    if options["mode"] == "evaluate":
        from tlp.components.lib.evaluation import evaluate_model

        results = evaluate_model(options["model"], options["dataset"], batch_size=options["batch"],
                                 exclude_source_ids=frozenset(options.get("exclude", [])),
                                 train_sample=options.get("train_sample"), sample_seed=5, strategy=strategy)
        details = results["test_details"]
        details["misclassified"] = [m["source_id"] for m in details["misclassified"]]
        print("RESULT", json.dumps(results), flush=True)
        return
    from tlp.components.lib import model as model_lib
    from tlp.components.lib import passes
    from tlp.components.lib.training import extract_features

    model_lib.keras().utils.set_random_seed(3)
    backbone = model_lib.build_backbone("MobileNetV2", 0.35, 64, "none")
    scorer = backbone
    if passes.is_divided(strategy):
        with strategy.scope():
            scorer = model_lib.build_backbone("MobileNetV2", 0.35, 64, "none")
        scorer.set_weights(backbone.get_weights())
    found = {}
    for split in ("train", "val"):
        features, labels = extract_features(scorer, options["dataset"], split, options["batch"], strategy=strategy)
        found[split] = {"features": features.tolist(), "labels": labels.tolist()}
    print("RESULT", json.dumps(found), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
