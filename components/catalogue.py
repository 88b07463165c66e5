"""Each pipeline step's component, by step name (the names live in ``lib/steps.py``)."""

from __future__ import annotations

from tlp.components.data_checks import data_checks
from tlp.components.data_fingerprint import data_fingerprint
from tlp.components.data_prep import data_prep
from tlp.components.evaluation import evaluation
from tlp.components.feature_extraction import feature_extraction
from tlp.components.fine_tuning import fine_tuning
from tlp.components.lib.steps import OPTIONAL_STEPS, STEPS, TUNING_STEPS
from tlp.components.litert_export import litert_export
from tlp.components.registration import registration
from tlp.components.tuning import (
    feature_extraction_heads,
    fine_tuning_trial,
    trial_selection,
    vizier_selection,
    vizier_worker_pools,
)

_FUNCTIONS = {
    "data_fingerprint": data_fingerprint,
    "data_prep": data_prep,
    "data_checks": data_checks,
    "feature_extraction": feature_extraction,
    "fine_tuning": fine_tuning,
    "evaluation": evaluation,
    "registration": registration,
    "litert_export": litert_export,
    "feature_extraction_heads": feature_extraction_heads,
    "fine_tuning_trial": fine_tuning_trial,
    "trial_selection": trial_selection,
    "vizier_worker_pools": vizier_worker_pools,
    "vizier_selection": vizier_selection,
}
COMPONENTS = {step.name: _FUNCTIONS[step.function] for step in STEPS + OPTIONAL_STEPS}
TUNING_COMPONENTS = {step.name: _FUNCTIONS[step.function] for step in TUNING_STEPS}
