"""MkDocs hooks: the pages generated when the site is built, so they cannot drift from what they
describe. ``<!-- generated:NAME -->`` in a page is replaced by:

- ``commands``: every ``tlp`` command's usage, arguments and options, from tlp's own parser and the
  option declarations (``components/lib/settings.py``), as ``tlp options --markdown`` does;
- ``benchmarks``: the figures of the committed results files ``docs/data/bench-*.json``, each
  table with its date, machine and command;
- ``tenmillion``: the ten-million-photo plan, from the scale benchmark's per-photo costs
  (``docs/data/bench-scale.json``) and the published figures of ``docs/data/published.json``;
- ``summary``: the run summary's keys, from their declarations beside the code that writes them
  (``pipelines/summary.py``);
- ``changelog``: ``CHANGELOG.md``.

The functions are plain so the tests call them (tests/unit/test_docs_site.py)."""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DOCS)
MARKER = re.compile(r"<!-- generated:([a-z]+) -->")


def on_page_markdown(markdown: str, page, config, files) -> str:
    return MARKER.sub(lambda match: GENERATORS[match.group(1)](), markdown)


# --- the command reference ------------------------------------------------------------------


def _cell(text) -> str:
    return str(text or "").replace("|", "\\|").replace("\n", " ")


def _leaves(parser: argparse.ArgumentParser, path: list[str], help_text: str = ""):
    """(command words, its parser, its one-line help) for every command that takes arguments."""
    subcommands = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if not subcommands:
        yield path, parser, help_text
        return
    helps = {choice.dest: choice.help for choice in subcommands[0]._choices_actions}
    for name, sub in subcommands[0].choices.items():
        yield from _leaves(sub, [*path, name], helps.get(name, ""))


# The declarations' name for commands that share their options.
OPTION_KEYS = {"schedule pause": "schedule change", "schedule resume": "schedule change",
               "schedule delete": "schedule change"}


def command_reference() -> str:
    """Markdown: one section per ``tlp`` command, from the parser the command line uses. The
    declared options' rows are exactly ``tlp options COMMAND --markdown``'s; arguments that are
    not options (positionals, ``--output`` of compile, ...) follow from the parser."""
    from tlp.components.lib.options import iter_options, markdown_table
    from tlp.components.lib.settings import ALL_GROUPS
    from tlp.pipelines import cli

    declared = {opt.name for opt in iter_options(ALL_GROUPS)}
    sections = []
    for words, parser, help_text in _leaves(cli.build_parser(), ["tlp"]):
        command = " ".join(words[1:])
        usage = " ".join(parser.format_usage().split()).replace(f"usage: {parser.prog}", f"tlp {command}", 1)
        lines = [f"## `tlp {command}`", ""]
        if help_text:
            lines += [help_text[0].upper() + help_text[1:] + ".", ""]
        lines += ["```text", _wrap(usage), "```", ""]
        positionals = [action for action in parser._actions if not action.option_strings]
        others = [action for action in parser._actions if action.option_strings and action.dest not in declared
                  and not isinstance(action, argparse._HelpAction)]
        if positionals or others:
            lines += ["| argument | default | meaning |", "| --- | --- | --- |"]
            for action in positionals:
                many = " …" if action.nargs in ("+", "*") else ""
                optional = "optional" if action.nargs in ("?", "*") else "—"
                lines.append(f"| `{action.metavar or action.dest.upper()}`{many} | {optional} | {_cell(action.help)} |")
            for action in others:
                default = "off" if isinstance(action, argparse._StoreTrueAction) else (
                    f"`{action.default}`" if action.default not in (None, "", []) else "—")
                lines.append(f"| `{max(action.option_strings, key=len)}` | {default} | {_cell(action.help)} |")
            lines.append("")
        table = markdown_table(ALL_GROUPS, OPTION_KEYS.get(command, command))
        if table.count("\n") > 1:
            lines += ["Options (declared in `components/lib/settings.py`):", "", table, ""]
        sections.append("\n".join(lines))
    return "\n".join(sections)


def _wrap(usage: str, width: int = 100) -> str:
    lines, line = [], ""
    for word in re.findall(r"\[[^\[\]]*(?:\[[^\[\]]*\][^\[\]]*)*\]|\S+", usage):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = "    " + word
        else:
            line = f"{line} {word}" if line else word
    return "\n".join([*lines, line])


# --- the benchmarks page ----------------------------------------------------------------------

DATA = os.path.join(DOCS, "data")


def declared_benchmarks() -> dict[str, str]:
    """Every benchmark ``bench.run`` declares, name -> title, in its order."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)  # bench/ is a folder of the repository, not an installed package
    from bench.run import BENCHMARKS

    return {name: title for name, (title, _func) in BENCHMARKS.items()}


def load_results(name: str, directory: str = DATA) -> dict | None:
    """The committed results file of one benchmark (``bench.run --publish`` writes it), or None."""
    path = os.path.join(directory, f"bench-{name}.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _number(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _measured_on(results: dict) -> str:
    """When, where, under what load and with which command a results file was measured."""
    host = results.get("host") or {}
    load = host.get("load_average_at_start") or ["?"]
    load_end = host.get("load_average_at_end") or ["?"]
    shares = host.get("others_cpu_share")
    others = f"; other processes used {shares[0]:.0%}-{shares[1]:.0%} of the CPUs" if shares else ""
    versions = ", ".join(f"{k} {v}" for k, v in (host.get("versions") or {}).items() if v)
    code = f", code at `{results['code']}`" if results.get("code") else ""
    seconds = results.get("seconds")
    # A benchmark whose child runs an earlier one of the same command made (they are memoized) takes ~0 s.
    took = f"{_number(seconds)} s" if seconds else "its runs made by an earlier benchmark of the same command"
    return (f"Measured {results.get('date', '?')} ({results.get('mode', '?')} mode, {took}) "
            f"on {host.get('cpus', '?')} CPUs ({host.get('machine', '?')}), {host.get('platform', '?')}, Python "
            f"{host.get('python', '?')}{' (' + versions + ')' if versions else ''}; load average "
            f"{load[0]} at start, {load_end[0]} at end{others}{code}. Command: `{results.get('command', '?')}`; "
            f"this benchmark alone: `{results.get('reproduce', '?')}`.")


def benchmark_section(name: str, title: str, results: dict | None) -> str:
    """Markdown for one benchmark: its rows under the line saying when, where and how they were
    measured; without a committed results file, the command that makes one."""
    lines = [f"## {title}", ""]
    if results is None:
        opt_in = " (opt-in: `make bench` does not run it)" if name == "scale" else ""
        return "\n".join([*lines, f"No committed result for `{name}`{opt_in}: run `python -m bench.run --only {name} "
                           f"--publish` and commit `docs/data/bench-{name}.json`.", ""])
    lines += [_measured_on(results) + f" File: `docs/data/bench-{name}.json`.", ""]
    rows = results.get("rows") or []
    if rows:
        lines += ["| measurement | value | target | met |", "| --- | --- | --- | --- |"]
        for row in rows:
            met = {True: "yes", False: "**no**", None: "—"}[row.get("pass")]
            value = f"{_number(row.get('value'))} {row.get('unit') or ''}".strip()
            lines.append(f"| {_cell(row.get('measurement', ''))} | {_cell(value)} | {_cell(row.get('target') or '—')} "
                         f"| {met} |")
        lines.append("")
    lines += [f"- {_cell(note)}" for note in results.get("notes") or []]
    return "\n".join([*lines, ""])


def benchmarks_page(directory: str = DATA, declared: dict[str, str] | None = None) -> str:
    """Markdown: one section per declared benchmark, from ``directory/bench-NAME.json``, then any
    results file of a benchmark ``bench.run`` no longer declares (said as such)."""
    declared = declared_benchmarks() if declared is None else declared
    missing = [name for name in declared if load_results(name, directory) is None]
    parts = []
    if missing:
        parts += [f"No committed result yet for: {', '.join(f'`{name}`' for name in missing)} (each section below "
                  "gives the command that makes one).", ""]
    parts += [benchmark_section(name, title, load_results(name, directory)) for name, title in declared.items()]
    for path in sorted(glob.glob(os.path.join(directory, "bench-*.json"))):
        name = os.path.basename(path)[len("bench-"):-len(".json")]
        if name not in declared:
            parts.append(benchmark_section(name, f"{name} (no longer in bench.run)", load_results(name, directory)))
    return "\n".join(parts)


# --- the ten-million plan ---------------------------------------------------------------------


def _fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares seconds = fixed + per_photo * photos over the measured sizes."""
    n_mean = sum(n for n, _ in points) / len(points)
    t_mean = sum(t for _, t in points) / len(points)
    var = sum((n - n_mean) ** 2 for n, _ in points)
    slope = sum((n - n_mean) * (t - t_mean) for n, t in points) / var if var else t_mean / n_mean
    return t_mean - slope * n_mean, slope


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def _prep_cost_at_default_size(results: dict | None = None) -> tuple[float, str] | None:
    """(CPU seconds per photo, what was measured) of data prep at the default image size with every
    core, from benchmark parallel_prep's committed rows ("photos: N photos, ..." and "CPU seconds,
    one / all"); None without that file or those rows."""
    results = load_results("parallel_prep") if results is None else results
    if not results or results.get("mode") != "full":
        return None
    rows = {row["measurement"].split(":")[0].split(" (")[0]: row for row in results["rows"]}
    described, cpu = rows.get("photos"), rows.get("CPU seconds, one / all")
    if not described or not cpu:
        return None
    count = int(described["measurement"].split(":")[1].split(" photos")[0].replace(",", ""))
    every_core = float(str(cpu["value"]).split("/")[1])
    return every_core / count, f"{described['measurement'].split(': ', 1)[1]}, {results.get('date', '?')[:10]}"


def ten_million_plan(scale: dict | None = None, published: dict | None = None,
                     parallel_prep: dict | None = None) -> str:
    """Markdown: the ten-million-photo plan, each step's time from a figure that names its source.
    Steps that run on CPUs: the CPU seconds the scale benchmark measured (docs/data/bench-scale.json,
    a linear fit over its sizes: fixed + per photo), at the plan's photos, divided over the plan's
    vCPUs for the step. The model passes: the plan's passes over the photos at the published GPU
    throughput (docs/data/published.json) on the plan's GPUs."""
    from tlp.components.lib.settings import FineTuningOptions, GateOptions, TrainingOptions
    from tlp.components.lib.steps import STEP_NAMES

    scale = load_results("scale") if scale is None else scale
    if published is None:
        with open(os.path.join(DATA, "published.json"), encoding="utf-8") as handle:
            published = json.load(handle)
    figures, plan = published["figures"], published["plan"]
    photos, split, gpus = plan["photos"], plan["split"], plan["gpus"]
    train, val, test = (round(photos * split[name]) for name in ("train", "val", "test"))
    epochs, fine_epochs = TrainingOptions().epochs, FineTuningOptions().fine_tune_epochs
    gap_sample = min(GateOptions().gap_sample, train)
    infer, fit = figures["gpu_inference_1x"]["value"] * gpus, figures["gpu_training_8x"]["value"] * gpus / 8
    rows: dict[str, tuple[float, str]] = {
        "feature-extraction": (
            (train + val) / infer,
            f"forward pass over train + val ({train + val:,} photos) at {infer:,.0f} img/s ({gpus} GPUs x "
            f"`gpu_inference_1x`); the head's {epochs} epochs then train on the cached features (not counted)"),
        "fine-tuning": (
            fine_epochs * (train / fit + val / infer),
            f"{fine_epochs} epochs (the default) of {train:,} training photos at {fit:,.0f} img/s (`gpu_training_8x`"
            f" for {gpus} GPUs) and {val:,} validation photos at {infer:,.0f} img/s"),
        "evaluation": (
            (gap_sample + val + test) / infer,
            f"{gap_sample:,} sampled training photos (`--gap-sample`) + validation + test at {infer:,.0f} img/s"),
        "registration": (test / infer,
                         f"the champion's re-measurement on test ({test:,} photos) at {infer:,.0f} img/s"),
    }
    lines = []
    sizes = ((scale or {}).get("data") or {}).get("sizes") or []
    if not sizes:
        lines += ["!!! warning \"No scale results file is committed yet\"",
                  "    The CPU steps' rows need `docs/data/bench-scale.json`: run `python -m bench.run --only scale "
                  "--workdir /tmp/tlp-bench-scale --publish` (2,000, 20,000 and 100,000 photos; hours on 2 cores) "
                  "and commit it. Until then only the model passes, from published figures, are shown.", ""]
    else:
        largest = sizes[-1]["photos"]
        measured = ", ".join(format(size["photos"], ",") for size in sizes)
        lines += [f"CPU steps: measured by the scale benchmark {scale.get('date', '?')} on "
                  f"{scale['host']['cpus']} CPUs "
                  f"(`{scale.get('reproduce', '?')}`; sizes {measured}; "
                  "its Benchmarks section has the conditions). Each step's CPU seconds are fitted as fixed + per photo "
                  f"over those sizes and taken to {photos:,} photos.", ""]
        machines = {"data-prep": (plan["dataflow_vcpus"], plan["dataflow_machines"])}
        for step in ("data-fingerprint", "data-prep", "data-checks"):
            points = [(size["photos"], size["steps"][step]["cpu_seconds"]) for size in sizes
                      if step in size["steps"] and size["steps"][step].get("cpu_seconds") is not None]
            if len(points) < 2:
                continue
            fixed, per_photo = _fit(points)
            vcpus, where = machines.get(step, (plan["cpu_step_vcpus"], plan["cpu_step_machine"]))
            how = (f"measured here: {per_photo * 1000:.3f} CPU ms per photo + {fixed:.0f} CPU s fixed "
                   f"(at {largest:,} photos: {points[-1][1]:,.0f} CPU s)")
            at_default = _prep_cost_at_default_size(parallel_prep) if step == "data-prep" else None
            if at_default:
                # The scale runs prepare 64 px images; decoding and resizing cost more at the default
                # size, so data prep's per-photo cost is the one measured at it.
                how = (f"{at_default[0] * 1000:.1f} CPU ms per photo at the default image size, measured here by "
                       f"benchmark `parallel_prep` ({at_default[1]}); the scale runs at 64 px measured "
                       f"{per_photo * 1000:.1f} ms + {fixed:.0f} CPU s fixed")
                per_photo = at_default[0]
            seconds = (fixed + per_photo * photos) / vcpus
            rows[step] = (seconds, f"{how}, over {vcpus} vCPUs ({where})")
    ordered = [(step, *rows[step]) for step in STEP_NAMES if step in rows]
    total = sum(seconds for _step, seconds, _how in ordered)
    lines += [f"| step | time at {photos:,} photos | share | how (source) |", "| --- | --- | --- | --- |"]
    for step, seconds, how in ordered:
        lines.append(f"| {step} | {_hours(seconds)} | {seconds / total:.0%} | {_cell(how)} |")
    lines += [f"| **end to end** | **{_hours(total)}** | | the steps one after another"
              f"{'' if sizes else '; CPU steps not included (no scale results)'}; each machine's start and image pull "
              "not counted |", "",
              "Published figures used (`docs/data/published.json`):", "",
              "| figure | value | what | source | date |", "| --- | --- | --- | --- | --- |"]
    for name, figure in figures.items():
        lines.append(f"| `{name}` | {_number(figure['value'])} {figure['unit']} | {_cell(figure['what'])} | "
                     f"[{_cell(figure['source'])}]({figure['link']}) | {_cell(figure['source_date'])}; read here: "
                     f"{_cell(figure['read'])} |")
    if "data-prep" in rows:
        vcpu_hours = rows["data-prep"][0] * plan["dataflow_vcpus"] / 3600
        price = figures["dataflow_vcpu_hour"]
        lines += ["", f"Data prep's Dataflow workers: {vcpu_hours:,.1f} vCPU-hours x {price['value']} "
                      f"{price['unit']} (`dataflow_vcpu_hour`) = about {vcpu_hours * price['value']:,.2f} USD, before "
                      "memory, shuffle and start-up; the GPU machine's price is not given (see the plan's line)."]
    lines += ["", "Fine-tuning's row is training on images at the published throughput: at this size the cut "
                  "cache would need about 269 KB of local disk per training or validation photo at 160 px (about "
                  "2.4 TB for 9M photos), so fine-tuning, finding too little free disk, trains on images (and says "
                  "so)."]
    lines += ["", f"Plan: {photos:,} photos split {split['train']:.0%}/{split['val']:.0%}/{split['test']:.0%}; "
                  f"model passes on {gpus} GPUs ({_cell(plan['gpu_machine'])}); data prep on Dataflow, "
                  f"{plan['dataflow_machines']}."]
    return "\n".join(lines)


# --- the run summary's keys -------------------------------------------------------------------


def summary_reference() -> str:
    """Markdown: every key of the run summary with its type and meaning, from the declarations
    beside the code that writes it (``pipelines/summary.py``: ``SUMMARY_FIELDS``)."""
    from tlp.pipelines.summary import SUMMARY_FIELDS

    lines = ["| key | type | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{field.name}` | {field.type} | {_cell(field.meaning)} |" for field in SUMMARY_FIELDS]
    return "\n".join(lines)


# --- the changelog ----------------------------------------------------------------------------


def changelog() -> str:
    with open(os.path.join(ROOT, "CHANGELOG.md"), encoding="utf-8") as handle:
        return handle.read()


GENERATORS = {"commands": command_reference, "benchmarks": benchmarks_page, "changelog": changelog,
              "summary": summary_reference, "tenmillion": ten_million_plan}
