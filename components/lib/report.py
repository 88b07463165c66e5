"""The evaluation report: one self-contained HTML file (plots and images inlined)."""

from __future__ import annotations

import base64
import html
import io

from tlp.components.lib import images


def learning_curves_png(feature_history: dict, fine_tune_history: dict | None) -> bytes:
    """Accuracy and loss over both phases, the fine-tuning start marked (as in the tutorial)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

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
    axes[1].set_xlabel("epoch")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def render_html(
    results: dict,
    passed: bool,
    reasons: list[str],
    gap: float,
    feature_history: dict,
    fine_tune_history: dict | None,
    title: str = "Transfer-learning evaluation",
) -> str:
    esc = html.escape
    class_names = results["class_names"]
    rows = "".join(
        f"<tr><th>{split}</th>" + "".join(
            f"<td>{results[split][key]:.4f}</td>" for key in ("accuracy", "loss", "precision", "recall", "auc")
        ) + f"<td>{results[split]['examples']}</td></tr>"
        for split in images.SPLITS
    )
    details = results["test_details"]
    matrix = details["confusion_matrix"]
    matrix_html = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{esc(c)}</th>" for c in class_names) + "</tr>"
    for name, row in zip(class_names, matrix, strict=True):
        matrix_html += f"<tr><th>{esc(name)}</th>" + "".join(f"<td>{n}</td>" for n in row) + "</tr>"
    grid = "".join(
        f'<figure><img src="data:image/jpeg;base64,{base64.b64encode(m["jpeg"]).decode()}" '
        f'alt="{esc(m["source_id"])}"><figcaption>true <b>{esc(m["true"])}</b>, predicted '
        f'<b>{esc(m["predicted"])}</b> ({m["probability"]:.2f})<br><small>{esc(m["source_id"])}'
        "</small></figcaption></figure>"
        for m in details["misclassified"]
    ) or "<p>No misclassified test images.</p>"
    curves = base64.b64encode(learning_curves_png(feature_history, fine_tune_history)).decode()
    verdict = "PASSED" if passed else "FAILED"
    colour = "#1a7f37" if passed else "#cf222e"
    reason_items = "".join(f"<li>{esc(r)}</li>" for r in reasons)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
.verdict {{ color: {colour}; font-weight: bold; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 10px; }}
figure {{ margin: 0; width: 170px; font-size: 12px; }}
figure img {{ width: 160px; height: 160px; object-fit: cover; }}
</style></head><body>
<h1>{esc(title)}</h1>
<h2>Gate: <span class="verdict">{verdict}</span></h2>
<p>Overfitting gap (train - validation accuracy): {gap:.4f}</p>
<ul>{reason_items}</ul>
<h2>Metrics (inference mode)</h2>
<table><tr><th>split</th><th>accuracy</th><th>loss</th><th>precision</th><th>recall</th><th>AUC</th><th>images</th></tr>{rows}</table>
<h2>Learning curves</h2>
<img src="data:image/png;base64,{curves}" alt="learning curves">
<h2>Confusion matrix (test)</h2>
<table>{matrix_html}</table>
<h2>Misclassified test images</h2>
<div class="grid">{grid}</div>
</body></html>
"""


def add_registration(report_path: str, output_path: str, registered: dict) -> None:
    """Copies the evaluation report, adding what was registered and the champion decision."""
    esc = html.escape
    with open(report_path, encoding="utf-8") as handle:
        page = handle.read()
    status = "the champion" if registered["champion"] else "not the champion"
    section = (
        f"<h2>Registration</h2><p>Registered <b>{esc(registered['name'])}</b> version "
        f"<b>{esc(str(registered['version']))}</b> in {esc(registered['registry'])}: {status}.</p>"
        f"<p>{esc(registered['reason'])}</p>"
    )
    marker = "<h2>Metrics"
    page = page.replace(marker, section + marker, 1) if marker in page else page.replace("</body>", section + "</body>")
    with open(output_path, "w", encoding="utf-8") as handle:
        handle.write(page)
