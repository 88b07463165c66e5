"""MkDocs hooks: the pages generated when the site is built, so they cannot drift from what they
describe. ``<!-- generated:NAME -->`` in a page is replaced by:

- ``commands``: every ``tlp`` command's usage, arguments and options, from tlp's own parser and the
  option declarations (``components/lib/settings.py``), as ``tlp options --markdown`` does;
- ``benchmarks``: the figures of the committed results files ``docs/data/bench-*.json``, each
  table with its date, machine and command;
- ``changelog``: ``CHANGELOG.md``.

The functions are plain so the tests call them (tests/unit/test_docs_site.py)."""

from __future__ import annotations

import argparse
import glob
import json
import os
import re

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


def results_files() -> list[str]:
    return sorted(glob.glob(os.path.join(DOCS, "data", "bench-*.json")), reverse=True)


def benchmarks_page(paths: list[str] | None = None) -> str:
    """Markdown: per results file (newest first), per benchmark, every measured row with its
    target and verdict, under a line saying when, where and how it was measured."""
    paths = results_files() if paths is None else paths
    if not paths:
        return ("No results file is committed yet: run `make bench` and copy `bench/results.json` to "
                "`docs/data/bench-DATE-MODE.json`.")
    parts = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            results = json.load(handle)
        host = results.get("host", {})
        load = host.get("load_average_at_start", ["?"])[0]
        when = results.get("started_at", "?")
        machine = (f"{host.get('cpus', '?')} CPUs ({host.get('machine', '?')}), {host.get('platform', '?')}, "
                   f"Python {host.get('python', '?')}, load average {load} at start")
        command = results.get("command", "?")
        versions = ", ".join(f"{k} {v}" for k, v in (host.get("versions") or {}).items() if v)
        parts += [f"## {when[:10]}, {results.get('mode', '?')} mode", "",
                  f"Measured {when} on {machine}, with `{command}`"
                  f"{' (' + versions + ')' if versions else ''}; file `docs/data/{os.path.basename(path)}`.", ""]
        summary = results.get("summary") or {}
        if summary:
            parts += [f"Targets met: {summary.get('met', '?')} of {summary.get('targets', '?')}"
                      f"{'; could not run: ' + ', '.join(summary['errors']) if summary.get('errors') else ''}.", ""]
        for name, bench in results.get("benchmarks", {}).items():
            parts += [f"### {bench.get('title', name)}", "",
                      f"`{name}`: {when}, {host.get('cpus', '?')} CPUs, `{command}`.", ""]
            if bench.get("status") not in (None, "ok"):
                parts += [f"Could not run: {bench.get('error', bench.get('status'))}", ""]
            rows = bench.get("rows") or []
            if rows:
                parts += ["| measurement | value | target | met |", "| --- | --- | --- | --- |"]
                for row in rows:
                    met = {True: "yes", False: "**no**", None: "—"}[row.get("passed")]
                    value = f"{row.get('value')} {row.get('unit') or ''}".strip()
                    target = row.get("target") or "—"
                    parts.append(f"| {_cell(row.get('label', ''))} | {_cell(value)} | {_cell(target)} | {met} |")
                parts.append("")
    return "\n".join(parts)


# --- the changelog ----------------------------------------------------------------------------


def changelog() -> str:
    with open(os.path.join(ROOT, "CHANGELOG.md"), encoding="utf-8") as handle:
        return handle.read()


GENERATORS = {"commands": command_reference, "benchmarks": benchmarks_page, "changelog": changelog}
