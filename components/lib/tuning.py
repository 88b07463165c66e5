"""Tuning in one run: the search space of ``--tune``, the trials drawn from it, and the choice of
the best trial. Plain Python (no TensorFlow, no kfp): the CLI checks a grid with it before anything
starts, the pipeline factory lays the trials out with it, the selection step picks with it.

``--tune "fine_tune_at=60,100,120 learning_rate=1e-4,3e-5 dropout=0.2,0.4"`` is a grid: every
combination is a trial. ``--tune-trials N`` draws N of its points at random with the run's seed.

What a trial shares with the others: data prep and the data checks run once; feature
extraction runs once per distinct *head setting* (the tuned options the feature-extraction step
reads: ``dropout``, ``epochs``); fine-tuning runs once per trial. ``--tuner vizier`` draws its
own points, so over a grid with more head settings than trials no head is trained ahead and each
trial trains its own (``TuningPlan.heads_ahead``). A tuned ``learning_rate`` is
fine-tuning's (it trains at a tenth of it, as a single run does); feature extraction keeps the
run's ``--learning-rate``. Why: the head trains on cached features in seconds and its rate
hardly matters, while fine-tuning is where the cut and the rate trade off; tuning both phases
would run feature extraction once per rate and share nothing between those trials.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass, field

from tlp.components.lib.options import Option, check_value, coerce, iter_options
from tlp.components.lib.settings import PIPELINE_GROUPS
from tlp.components.lib.specs import ConfigError

MAX_GRID_TRIALS = 64  # without --tune-trials, more than this is refused (each trial is a fine-tuning run)
HEAD_PARAMETERS = ("dropout", "epochs")  # read by feature extraction: one head per distinct setting
TRIAL_PARAMETERS = ("fine_tune_at", "learning_rate", "fine_tune_epochs")  # fine-tuning's own
TUNABLE = HEAD_PARAMETERS + TRIAL_PARAMETERS
TUNERS = ("grid", "vizier")


@dataclass(frozen=True)
class TuningPlan:
    """What a tuned run trains: its trials (each a dict of the tuned options' values, in grid
    order) and how many run at once."""

    grid: dict = field(default_factory=dict)  # option name -> its values, as given
    trials: tuple = ()
    parallelism: int = 4
    tuner: str = "grid"
    trial_count: int = 0  # vizier: --tune-trials (its own draw from the space); else len(trials)

    @property
    def count(self) -> int:
        return self.trial_count or len(self.trials)

    @property
    def head_settings(self) -> list[dict]:
        """The distinct head settings of the trials, first-use order (one feature extraction each)."""
        return distinct_heads(list(self.trials))

    @property
    def heads_ahead(self) -> list[dict]:
        """The head settings trained before the trials (the heads step). The grid's trials are
        known, so all of theirs; Vizier draws its own points, so with more head settings in the
        grid than trials in its job none is trained ahead and each trial trains its own (one
        feature extraction per trial instead of a head per grid point: 3 trials over 64 head
        settings trained 64 heads)."""
        heads = self.head_settings
        return [] if self.tuner == "vizier" and len(heads) > self.count else heads

    def head_index(self, trial: dict) -> int:
        return self.head_settings.index(head_of(trial))


def _options() -> dict[str, Option]:
    return {opt.name: opt for opt in iter_options(PIPELINE_GROUPS) if opt.name in TUNABLE}


def parse_grid(text: str) -> dict[str, list]:
    """``"NAME=V1,V2 NAME=V3"`` -> {name: [values]}; each value coerced and checked by its option's
    declaration (type, bounds). Raises ConfigError naming the bad part."""
    options = _options()
    grid: dict[str, list] = {}
    for part in text.split():
        name, sep, values = part.partition("=")
        name = name.replace("-", "_")
        if not sep or not name:
            raise ConfigError(f"--tune {part!r} is not NAME=VALUE[,VALUE...]; write e.g. --tune \"dropout=0.2,0.4\".")
        if name not in options:
            raise ConfigError(f"--tune cannot tune {name!r}; tunable options: {', '.join(TUNABLE)}.")
        if name in grid:
            raise ConfigError(f"--tune names {name} twice; give all its values once, comma-separated.")
        listed = [value for value in values.split(",") if value.strip()]
        if not listed:
            raise ConfigError(f"--tune {name}= has no values; give at least one, e.g. {name}={options[name].default}.")
        checked = [check_value(options[name], coerce(options[name], value.strip())) for value in listed]
        grid[name] = list(dict.fromkeys(checked))  # a repeated value is one trial, not two
    if not grid:
        raise ConfigError('--tune is empty; give NAME=VALUE[,VALUE...], e.g. --tune "fine_tune_at=60,100".')
    return grid


def grid_points(grid: dict[str, list]) -> list[dict]:
    names = list(grid)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(grid[name] for name in names))]


def plan(text: str, trials: int = 0, seed: int = 42, parallelism: int = 4, tuner: str = "grid") -> TuningPlan | None:
    """The trials of ``--tune TEXT`` (None without it). ``trials`` > 0 draws that many points at
    random with ``seed``; else every point runs, at most MAX_GRID_TRIALS of them."""
    if not text.strip():
        if trials:
            raise ConfigError("--tune-trials needs --tune (the search space to draw the trials from).")
        return None
    if tuner not in TUNERS:
        raise ConfigError(f"--tuner {tuner!r} is not supported; choose one of {', '.join(TUNERS)}.")
    grid = parse_grid(text)
    points = grid_points(grid)
    if trials:
        if tuner == "grid" and trials > len(points):
            raise ConfigError(
                f"--tune-trials {trials} is more than the grid's {len(points)} points; give at most {len(points)}."
            )
        if tuner == "grid":
            chosen = sorted(random.Random(seed).sample(range(len(points)), trials))
            points = [points[index] for index in chosen]
    elif len(points) > MAX_GRID_TRIALS:
        raise ConfigError(
            f"--tune makes {len(points)} trials, more than {MAX_GRID_TRIALS}; draw some of them with --tune-trials N "
            "or give fewer values."
        )
    return TuningPlan(grid=grid, trials=tuple(points), parallelism=parallelism, tuner=tuner,
                      trial_count=trials if tuner == "vizier" else 0)


def head_of(trial: dict) -> dict:
    return {name: trial[name] for name in HEAD_PARAMETERS if name in trial}


def trial_overrides(trial: dict) -> dict:
    """What fine-tuning takes from a trial (its own options; the head's went to feature extraction)."""
    return {name: trial[name] for name in TRIAL_PARAMETERS if name in trial}


def distinct_heads(trials: list[dict]) -> list[dict]:
    heads: list[dict] = []
    for trial in trials:
        if head_of(trial) not in heads:
            heads.append(head_of(trial))
    return heads


def head_key(head: dict) -> str:
    """A stable name for a head setting (its directory among the heads), exact: a float is
    written as ``repr`` gives it (the shortest text that reads back as the same number), so two
    settings share a folder only when they are equal (``:g`` kept six digits: dropout 0.2 and
    0.2000001 shared one, and the second head overwrote the first)."""
    def exact(value) -> str:
        return repr(float(value)) if isinstance(value, float) else str(value)

    return "head-" + "-".join(f"{name}{exact(head[name])}" for name in sorted(head)) if head else "head"


def label(params: dict) -> str:
    return " ".join(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
                    for name, value in params.items())


def best(results: list[dict]) -> dict:
    """The best trial by validation accuracy, ties broken by the lower validation loss (then the
    earlier trial). Never by test: the test split stays unseen until evaluation."""
    if not results:
        raise ConfigError("no trial finished; nothing to choose from.")
    return min(enumerate(results), key=lambda pair: (-pair[1]["val_accuracy"], pair[1]["val_loss"], pair[0]))[1]


def dumps(trial: dict) -> str:
    return json.dumps(trial, sort_keys=True)
