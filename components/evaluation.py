"""Component 4: evaluation on every split, with the overfitting-gap gate."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from tlp.components.container_images import image_reference


@dsl.component(base_image=image_reference(kind="light"), install_kfp_package=False)
def evaluation(
    dataset: Input[Dataset],
    model: Input[Model],
    feature_history: Input[Artifact],
    fine_tune_history: Input[Artifact],
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    report: Output[HTML],
    options: dict,
    data_checks: Input[Artifact] = None,
) -> bool:
    """Scores the model in inference mode on train, val and test, and applies the gate.

    Args:
        dataset: The data-prep output.
        model: The fine-tuned, servable model.
        feature_history: History of the feature-extraction phase.
        fine_tune_history: History of the fine-tuning phase.
        metrics: Output: accuracy, loss, precision, recall, AUC per split, the gap with its 95%
            interval, the training photos its train accuracy was measured on, and (a string,
            ``gap_split``) the held-out split it was measured against.
        classification_metrics: Output: test confusion matrix and ROC curve.
        report: Output: HTML report (learning curves, confusion matrix, misclassified images).
        options: The options this step reads (the gate's ``max_gap``, largest allowed train -
            held-out accuracy, ``min_accuracy``, smallest allowed test accuracy, ``gap_sample``,
            training photos scored for the gap, and ``seed``, which draws them).
        data_checks: Optional: the data-checks findings, shown in the report.

    Returns:
        Whether the gate passed. The reasons go in the report's metadata (``gate_reasons``).
        A single output on purpose: kfp.local resolves ``dsl.If`` conditions only on a task's
        single ``Output``, not on named outputs (kfp 2.17).
    """
    import json

    from tlp.components.lib.evaluation import evaluate_and_report
    from tlp.components.lib.settings import Settings
    from tlp.components.lib.steps import EVALUATION

    checked = None
    if data_checks is not None:
        with open(data_checks.path) as handle:
            checked = json.load(handle)
    outcome = evaluate_and_report(
        model.path, dataset.path, feature_history.path, fine_tune_history.path, report.path,
        Settings.for_step(EVALUATION, options), data_checks=checked,
    )
    for name, value in outcome["flat_metrics"].items():
        metrics.log_metric(name, value)
    metrics.metadata["gap_split"] = outcome["gap"]["split"]  # registration records it as a tag
    details = outcome["results"]["test_details"]
    classification_metrics.log_confusion_matrix(outcome["results"]["class_names"], details["confusion_matrix"])
    if details["roc"]:
        roc = details["roc"]
        classification_metrics.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])
    report.metadata["gate_passed"] = outcome["passed"]
    report.metadata["gate_reasons"] = outcome["reasons"]
    report.metadata["gap"] = outcome["gap"]
    return outcome["passed"]
