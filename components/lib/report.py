"""The evaluation report: one self-contained HTML file (plots and images inlined), rendered
from a Jinja2 template. The data it shows is kept beside it as JSON (``context_path``), so the
registration step renders the same report again with its decision added."""

from __future__ import annotations

import base64
import io
import json

from tlp.components.lib import tuning
from tlp.components.lib.dataprep import records
from tlp.components.lib.specs import ConfigError

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1100px; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
.verdict { color: {{ "#1a7f37" if passed else "#cf222e" }}; font-weight: bold; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; width: 170px; font-size: 12px; }
figure img { width: 160px; height: 160px; object-fit: cover; }
</style></head><body>
<h1>{{ title }}</h1>
<h2>Gate: <span class="verdict">{{ "PASSED" if passed else "FAILED" }}</span></h2>
{% if gap_detail is defined and gap_detail %}
<p class="gap">Overfitting gap (train - {{ split_words[gap_detail.split] }} accuracy): {{ "%.4f"|format(gap) }},
95% interval {{ "%.4f"|format(gap_detail.interval[0]) }} to {{ "%.4f"|format(gap_detail.interval[1]) }}.
Measured on the {{ split_words[gap_detail.split] }} split{% if gap_detail.split == "test" %}, because validation
chose the best trial of this tuned run and reads high for it{% endif %}.
Train accuracy {{ "%.4f"|format(results.train.accuracy) }}
({{ "%.4f"|format(gap_detail.train_accuracy_interval[0]) }} to
{{ "%.4f"|format(gap_detail.train_accuracy_interval[1]) }}) on
{% if gap_detail.train_photos < gap_detail.train_split_photos %}a sample of {{ "{:,}".format(gap_detail.train_photos) }}
of the {{ "{:,}".format(gap_detail.train_split_photos) }} training photos, drawn with seed {{ gap_detail.seed }}
{%- else %}all {{ "{:,}".format(gap_detail.train_split_photos) }} training photos{% endif %};
{{ gap_detail.method }}.</p>
{% else %}
<p>Overfitting gap (train - validation accuracy): {{ "%.4f"|format(gap) }}</p>
{% endif %}
<ul>{% for reason in reasons %}<li>{{ reason }}</li>{% endfor %}</ul>
{% if data_checks is defined and data_checks %}
<h2>Data checks (against the champion's data)</h2>
<ul>{% for finding in data_checks.findings %}<li>{{ finding }}</li>{% endfor %}</ul>
{% endif %}
{% if registered %}
<h2>Registration</h2>
<p>Registered <b>{{ registered.name }}</b> version <b>{{ registered.version }}</b> in {{ registered.registry }}:
{{ "the champion" if registered.champion else "not the champion" }}.</p>
<p>{{ registered.reason }}</p>
{% endif %}
{% if litert is defined and litert %}
<h2>On the device (LiteRT)</h2>
<p>Each variant scored with the LiteRT interpreter on all {{ litert.test_photos }} test photos beside the Keras
model; a variant losing more than {{ "%.3f"|format(litert.max_quantization_drop) }} test accuracy is not
registered. Input: uint8 pixels {{ litert.input_shape }}; labels in labels.txt.</p>
<table><tr><th>variant</th><th>size</th><th>test accuracy</th><th>change</th><th>predictions changed</th>
<th>latency (1 image)</th><th>vs Keras</th><th>registered</th></tr>
<tr><th>Keras</th><td>-</td><td>{{ "%.4f"|format(litert.keras.accuracy) }}</td><td>-</td><td>-</td>
<td>{{ "%.2f"|format(litert.keras.latency_ms) }} ms</td><td>1.00x</td><td>-</td></tr>
{% for row in litert.rows %}<tr><th>{{ row.variant }}</th>{% if row.size_mb is not none %}
<td>{{ "%.2f"|format(row.size_mb) }} MB</td><td>{{ "%.4f"|format(row.accuracy) }}</td>
<td>{{ "%+.4f"|format(row.accuracy_change) }}</td><td>{{ row.changed_predictions }}</td>
<td>{{ "%.2f"|format(row.latency_ms) }} ms</td><td>{{ "%.2f"|format(row.speedup) }}x</td>
{% else %}<td colspan="6">conversion failed</td>{% endif %}<td>{{ row.reason }}</td></tr>
{% endfor %}</table>
{% endif %}
{% if tuning is defined and tuning %}
<h2>Tuning: {{ tuning.trials|length }} trials, the best by validation accuracy went on</h2>
<table class="trials"><tr><th>trial</th><th>parameters</th><th>val accuracy</th><th>val loss</th><th>seconds</th></tr>
{% for trial in tuning.trials %}<tr><th>{{ loop.index }}{{ " (best)" if trial.params == tuning.best.params }}</th>
<td>{{ trial.label }}</td><td>{{ "%.4f"|format(trial.val_accuracy) }}</td><td>{{ "%.4f"|format(trial.val_loss) }}</td>
<td>{{ "%.0f"|format(trial.seconds) }}</td></tr>
{% endfor %}</table>
<img src="data:image/png;base64,{{ tuning.curves_png }}" alt="validation curves of the trials">
{% endif %}
<h2>Metrics (inference mode)</h2>
<table><tr><th>split</th><th>accuracy</th><th>loss</th><th>precision</th><th>recall</th><th>AUC</th><th>images</th></tr>
{% for split in splits %}<tr><th>{{ split }}</th>
{% for key in ("accuracy", "loss", "precision", "recall", "auc") %}
<td>{{ "%.4f"|format(results[split][key]) }}</td>{% endfor %}
<td>{{ results[split].examples }}{% if results[split].split_examples is defined
and results[split].split_examples > results[split].examples %} of {{ results[split].split_examples }}
(sample){% endif %}</td></tr>
{% endfor %}</table>
<h2>Learning curves</h2>
<img src="data:image/png;base64,{{ curves_png }}" alt="learning curves">
{% if roc_png %}
<h2>ROC curve (test)</h2>
<img src="data:image/png;base64,{{ roc_png }}" alt="ROC curve">
{% endif %}
{% if per_class and class_names|length > 2 %}
<h2>Per class (test)</h2>
<table class="per-class"><tr><th>class</th><th>precision</th><th>recall</th><th>images</th></tr>
{% for row in per_class %}<tr><th>{{ row.name }}</th><td>{{ "%.4f"|format(row.precision) }}</td>
<td>{{ "%.4f"|format(row.recall) }}</td><td>{{ row.images }}</td></tr>
{% endfor %}</table>
{% endif %}
<h2>Confusion matrix (test)</h2>
<table><tr><th>true \\ predicted</th>{% for name in class_names %}<th>{{ name }}</th>{% endfor %}</tr>
{% for name, row in confusion %}<tr><th>{{ name }}</th>{% for n in row %}<td>{{ n }}</td>{% endfor %}</tr>
{% endfor %}</table>
<h2>Misclassified test images</h2>
<div class="grid">
{% for m in misclassified %}<figure><img src="data:image/jpeg;base64,{{ m.jpeg }}" alt="{{ m.source_id }}">
<figcaption>true <b>{{ m.true }}</b>, predicted <b>{{ m.predicted }}</b> ({{ "%.2f"|format(m.probability) }})<br>
<small>{{ m.source_id }}</small></figcaption></figure>
{% else %}<p>No misclassified test images.</p>{% endfor %}
</div>
</body></html>
"""

SPLIT_WORDS = {"train": "training", "val": "validation", "test": "test"}


def describe_gap(measured: dict) -> str:
    """One line: the gap, the split it was measured on, the train sample and the interval."""
    low, high = measured["interval"]
    photos, of = measured["train_photos"], measured["train_split_photos"]
    sample = (f"train accuracy on {photos:,} of {of:,} training photos (seed {measured['seed']})" if photos < of
              else f"train accuracy on all {of:,} training photos")
    why = " (validation chose this tuned run's trial)" if measured["split"] == "test" else ""
    return (f"gap {measured['value']:.4f} (95% interval {low:.4f} to {high:.4f}) = train - {measured['split']} "
            f"accuracy{why}; {sample}")


def learning_curves_png(feature_history: dict, fine_tune_history: dict | None) -> bytes:
    """Accuracy and loss over both phases, the fine-tuning start marked (as in the tutorial)."""
    return _png(learning_curves_figure(feature_history, fine_tune_history))


def learning_curves_figure(feature_history: dict, fine_tune_history: dict | None):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    phases = [feature_history] + ([fine_tune_history] if fine_tune_history else [])
    figure, axes = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for axis, key, title in ((axes[0], "accuracy", "Accuracy"), (axes[1], "loss", "Cross-entropy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            epochs = [e for h in phases for e in h["epoch"][: len(h.get(prefix + key, []))]]
            values = [v for h in phases for v in h.get(prefix + key, [])]
            if values:
                label = ("Validation " if prefix else "Training ") + key
                axis.plot(epochs, values, style, marker="o", markersize=3, label=label)
        if fine_tune_history and fine_tune_history["epoch"]:
            start = feature_history["epoch"][-1] + 0.5
            axis.axvline(start, color="gray", linestyle=":", label="Start fine-tuning")
        axis.set_title(title)
        axis.legend(loc="best")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    axes[1].set_xlabel("epoch")
    return figure


# The ROC curve's own colour (not matplotlib's first two, which the learning curves use), so the
# screenshot test can tell the pictures apart.
ROC_COLOUR = "#6a3d9a"


def roc_png(roc: dict, auc: float) -> bytes:
    """The test split's ROC curve (two classes), with the chance diagonal and the AUC."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot(roc["fpr"], roc["tpr"], color=ROC_COLOUR, linewidth=2.5, label=f"model (AUC {auc:.3f})")
    axis.plot([0, 1], [0, 1], color="gray", linestyle=":", label="chance")
    axis.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate")
    axis.set_title("ROC (test)")
    axis.legend(loc="lower right")
    return _png(figure)


def _png(figure) -> bytes:
    from matplotlib import pyplot as plt

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def report_context(
    results: dict, passed: bool, reasons: list[str], gap: float, feature_history: dict,
    fine_tune_history: dict | None, title: str = "Transfer-learning evaluation", gap_detail: dict | None = None,
) -> dict:
    """Everything the report shows, as JSON-ready data (images as base64). ``gap_detail``: how the
    gap was measured (``evaluation.gap_record``)."""
    details = results["test_details"]
    return {
        "title": title,
        "passed": passed,
        "reasons": reasons,
        "gap": gap,
        "gap_detail": gap_detail,
        "split_words": SPLIT_WORDS,
        "splits": list(records.SPLITS),
        "results": {split: results[split] for split in records.SPLITS},
        "class_names": results["class_names"],
        "confusion": list(zip(results["class_names"], details["confusion_matrix"], strict=True)),
        "curves_png": base64.b64encode(learning_curves_png(feature_history, fine_tune_history)).decode(),
        "roc_png": base64.b64encode(roc_png(details["roc"], results["test"]["auc"])).decode() if details.get("roc")
        else None,
        "per_class": details.get("per_class", []),
        "misclassified": [
            {**{k: v for k, v in m.items() if k != "jpeg"}, "jpeg": base64.b64encode(m["jpeg"]).decode()}
            for m in details["misclassified"]
        ],
        "registered": None,
        "tuning": tuning_context((fine_tune_history or {}).get("tuning")),
    }


def tuning_context(tuned: dict | None) -> dict | None:
    """A tuned run's trials for the report: a table and every trial's validation curve."""
    if not tuned:
        return None
    trials = [{**trial, "label": tuning.label(trial["params"])} for trial in tuned["trials"]]
    return {"trials": trials, "best": tuned["best"],
            "curves_png": base64.b64encode(trial_curves_png(trials)).decode()}


def trial_curves_png(trials: list[dict]) -> bytes:
    """Each trial's fine-tuning validation accuracy per epoch, one line per trial."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4))
    for trial in trials:
        curve = trial.get("val_curve", [])
        axis.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=trial["label"])
    axis.set(xlabel="fine-tuning epoch", ylabel="validation accuracy", title="Trials")
    axis.legend(loc="best", fontsize=8)
    return _png(figure)


def render_html(context: dict) -> str:
    import jinja2

    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return environment.from_string(TEMPLATE).render(**context)


def context_path(report_path: str) -> str:
    return report_path + ".json"


def page_path(report_path: str) -> str:
    """The report as a file a browser shows as a page: kfp names an HTML artifact without an
    extension (browsers then show its source as text), so a copy ending in .html sits beside it."""
    return report_path if report_path.endswith((".html", ".htm")) else report_path + ".html"


def write_report(report_path: str, context: dict) -> None:
    page = render_html(context)
    for path in {report_path, page_path(report_path)}:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(page)
    with open(context_path(report_path), "w", encoding="utf-8") as handle:
        json.dump(context, handle, default=float)  # numpy scalars


def add_litert(report_path: str, output_path: str, measured: dict, reasons: dict[str, str],
               max_quantization_drop: float) -> None:
    """The registered report again, with the LiteRT variants' table (components/lib/litert.py)."""
    with open(context_path(report_path), encoding="utf-8") as handle:
        context = json.load(handle)
    keras = measured["keras"]
    rows = [
        {"variant": variant, "size_mb": m["size_bytes"] / 1e6, "accuracy": m["accuracy"],
         "accuracy_change": m["accuracy_change"], "changed_predictions": m["changed_predictions"],
         "latency_ms": m["latency_ms"], "speedup": keras["latency_ms"] / m["latency_ms"], "reason": reasons[variant]}
        for variant, m in measured["variants"].items()
    ] + [{"variant": variant, "size_mb": None, "reason": reasons[variant]} for variant in measured.get("failed", {})]
    litert = {"test_photos": measured["test_photos"], "max_quantization_drop": max_quantization_drop,
              "input_shape": measured["input"]["shape"], "keras": keras, "rows": rows}
    write_report(output_path, {**context, "litert": litert})


def add_registration(report_path: str, output_path: str, registered: dict) -> None:
    """The evaluation report again, with what was registered and the champion decision."""
    try:
        with open(context_path(report_path), encoding="utf-8") as handle:
            context = json.load(handle)
    except FileNotFoundError:
        raise ConfigError(
            f"{report_path} has no {context_path(report_path)} beside it; pass the report output of the evaluation "
            "step of this version of tlp (re-run evaluation)."
        ) from None
    # Defaults for reports written before these sections existed.
    write_report(output_path, {"roc_png": None, "per_class": [], "tuning": None, "gap_detail": None,
                               "split_words": SPLIT_WORDS, **context, "registered": registered})
