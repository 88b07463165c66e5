"""The pipeline's steps, named once: the pipeline, the CLI, the summary and the benchmarks
all read this catalogue."""

from __future__ import annotations

from dataclasses import dataclass

from tlp.components.lib.specs import NotFound

DATA_FINGERPRINT = "data-fingerprint"
DATA_PREP = "data-prep"
DATA_CHECKS = "data-checks"
FEATURE_EXTRACTION = "feature-extraction"
FINE_TUNING = "fine-tuning"
EVALUATION = "evaluation"
REGISTRATION = "registration"
LITERT_EXPORT = "litert-export"


@dataclass(frozen=True)
class Step:
    name: str  # task name in kfp and in the run directory; `tlp component NAME`
    function: str  # the component's Python name (tlp.components.<function>)
    image: str  # "train" (TensorFlow with CUDA) or "light" (everything else)
    summary: str  # what it does, for `tlp component --help` and the README


STEPS = (
    Step(DATA_FINGERPRINT, "data_fingerprint", "light",
         "lists the source (names, sizes, generations) into a fingerprint; never cached"),
    Step(DATA_PREP, "data_prep", "light", "reads the images, splits 80/10/10 by content, writes TFRecords"),
    Step(DATA_CHECKS, "data_checks", "light",
         "compares the data with the champion's (size, class shares, class set) before training"),
    Step(FEATURE_EXTRACTION, "feature_extraction", "train", "frozen base, trains the head on cached features"),
    Step(FINE_TUNING, "fine_tuning", "train", "unfreezes the top of the base, trains under tf.distribute"),
    Step(EVALUATION, "evaluation", "light", "scores every split, applies the overfitting gate, writes the report"),
    Step(REGISTRATION, "registration", "light", "registers a version; champion/challenger"),
)
STEP_NAMES = tuple(step.name for step in STEPS)

# Added after registration only when asked for (--export-litert).
OPTIONAL_STEPS = (
    Step(LITERT_EXPORT, "litert_export", "light",
         ".tflite variants scored on the test split, gated, recorded with the registered version"),
)

# A tuned run (--tune) replaces feature extraction and fine-tuning with these.
FEATURE_EXTRACTION_HEADS = "feature-extraction-heads"
FINE_TUNING_TRIAL = "fine-tuning-trial"
TRIAL_SELECTION = "trial-selection"
VIZIER_WORKER_POOLS = "vizier-worker-pools"
VIZIER_SELECTION = "vizier-selection"
TUNING_STEPS = (
    Step(FEATURE_EXTRACTION_HEADS, "feature_extraction_heads", "train",
         "a tuned run's feature extraction: the base runs once, one head per head setting"),
    Step(FINE_TUNING_TRIAL, "fine_tuning_trial", "train", "one trial's fine-tuning (a ParallelFor iteration)"),
    Step(TRIAL_SELECTION, "trial_selection", "light", "the best trial by validation accuracy goes on"),
    Step(VIZIER_WORKER_POOLS, "vizier_worker_pools", "light", "--tuner vizier: the tuning job's trial worker pool"),
    Step(VIZIER_SELECTION, "vizier_selection", "light", "--tuner vizier: the best of the tuning job's trials"),
)


def step(name: str) -> Step:
    for candidate in STEPS + OPTIONAL_STEPS + TUNING_STEPS:
        if candidate.name == name:
            return candidate
    raise NotFound(f"no pipeline step is named {name!r}; use one of {', '.join(STEP_NAMES)}.")
