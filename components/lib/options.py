"""How an option is declared, checked and turned into flags, pipeline parameters and docs.

An option is one field of a typed group (see ``settings.py``), declared with ``option(...)``:
the annotation is its type, the rest (default, help, bounds, choices, the ``tlp`` commands
that offer it, the pipeline steps that read it, whether a registered version records it) is
metadata on the field. Everything that used to spell an option out again is derived here:

- ``add_flags``: the ``tlp`` flags of a command, with their help and default;
- ``check_value``: one ``ConfigError`` sentence per bad value (NaN and infinities included);
- ``coerce``: a value back to its declared type (pipeline parameters cross kfp as strings);
- ``markdown_table``: the README's options table (a test keeps the README in step).

Plain Python: nothing here imports TensorFlow, kfp or a cloud SDK.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tlp.components.lib.specs import ConfigError, ServiceError

_UNSET = object()


@dataclass(frozen=True)
class Spec:
    """Everything about one option except its name and type (those come from the field)."""

    help: str
    commands: tuple[str, ...] = ()  # `tlp` commands offering the flag ("run", "submit", ...)
    steps: tuple[str, ...] = ()  # pipeline steps reading it; none: not a pipeline parameter
    minimum: float | None = None
    maximum: float | None = None
    below: float | None = None  # exclusive upper bound
    above: float | None = None  # exclusive lower bound
    choices: tuple | None = None
    check: Callable[[typing.Any], object] | None = None  # raises ConfigError; may normalise
    lineage: bool = False  # recorded on every registered version
    compiled_default: typing.Any = _UNSET  # the compiled pipeline's default, when not the CLI's
    repeated: bool = False  # a flag that may be given several times (a list)
    metavar: str | None = None
    flag: str | None = None  # when the flag is not --NAME (a name taken in another command's sense)


_T = typing.TypeVar("_T")


def option(default: _T, help: str, **spec: typing.Any) -> _T:  # noqa: A002 - argparse's word
    """Declares an option: a dataclass field with its ``Spec`` as metadata.

    Typed as returning the default's type (as ``dataclasses.field`` itself is typed) so a type
    checker sees ``settings.head.dropout`` as a ``float`` and a wrong group in a call as an error;
    at run time ``@dataclass`` receives the ``Field``.
    """
    metadata = {"option": Spec(help, **spec)}
    if isinstance(default, list):
        items = list(default)
        return typing.cast(_T, dataclasses.field(default_factory=lambda: list(items), metadata=metadata))
    return typing.cast(_T, dataclasses.field(default=default, metadata=metadata))


@dataclass(frozen=True)
class Option:
    """A declared option, as the machinery sees it."""

    name: str
    type: type
    default: typing.Any
    spec: Spec
    group: str

    @property
    def flag(self) -> str:
        return self.spec.flag or "--" + self.name.replace("_", "-")

    @property
    def pipeline_default(self):
        return self.default if self.spec.compiled_default is _UNSET else self.spec.compiled_default


class NotPassedToStep:
    """The value of an option a pipeline step does not receive: reading it is a bug."""

    def __init__(self, name: str, step: str):
        self.name, self.step = name, step

    def __repr__(self) -> str:
        return f"<{self.name}: not passed to {self.step}>"


class OptionNotPassed(ServiceError, LookupError):
    """A step read an option its declaration does not pass to it: a bug in settings.py, exit code 1."""


class Group:
    """Base of the option groups: reading an option a step was not given fails loudly,
    instead of silently using the default."""

    def __getattribute__(self, name: str):
        value = object.__getattribute__(self, name)
        if isinstance(value, NotPassedToStep):
            raise OptionNotPassed(
                f"option {value.name} is not passed to the {value.step} step; add {value.step!r} to its "
                "steps in tlp/components/lib/settings.py."
            )
        return value


def options_of(group_class) -> list[Option]:
    hints = typing.get_type_hints(group_class)
    group = getattr(group_class, "GROUP", group_class.__name__)
    found = []
    for field in dataclasses.fields(group_class):
        spec = field.metadata.get("option")
        if spec is None:
            continue
        kind = typing.get_origin(hints[field.name]) or hints[field.name]
        default = field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
        found.append(Option(field.name, kind, default, spec, group))
    return found


# --- values ----------------------------------------------------------------------------------


def _shown(value) -> str:
    return repr(value) if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)


def coerce(opt: Option, value):
    """A value (as typed on the command line or as it crossed kfp) in the option's type."""
    if opt.type is bool:
        if isinstance(value, str):
            if value.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if value.strip().lower() in ("0", "false", "no", "off", ""):
                return False
            raise ConfigError(f"{opt.flag} {value!r} is not true or false.")
        return bool(value)
    if opt.type is int:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{opt.flag} {value} is not a whole number (default {opt.default}).") from None
        if not number.is_integer():
            raise ConfigError(f"{opt.flag} {value} is not a whole number (default {opt.default}).")
        return int(number)
    if opt.type is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{opt.flag} {value} is not a number (default {_shown(opt.default)}).") from None
    if opt.type is list:
        return list(value)
    return "" if value is None else str(value)


def check_value(opt: Option, value):
    """Checks one value against its declaration; returns it (normalised by a ``check``)."""
    spec, flag = opt.spec, opt.flag
    if opt.type in (int, float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{flag} {value} is not a finite number; give a value such as {_shown(opt.default)}.")
        bounds = []
        if spec.minimum is not None:
            bounds.append(("at least", spec.minimum, value >= spec.minimum))
        if spec.above is not None:
            bounds.append(("above", spec.above, value > spec.above))
        if spec.maximum is not None:
            bounds.append(("at most", spec.maximum, value <= spec.maximum))
        if spec.below is not None:
            bounds.append(("below", spec.below, value < spec.below))
        if not all(ok for _, _, ok in bounds):
            what = "a whole number" if opt.type is int else "a number"
            rule = " and ".join(f"{word} {_shown(bound)}" for word, bound, _ in bounds)
            raise ConfigError(f"{flag} {_shown(value)} must be {what} of {rule} (default {_shown(opt.default)}).")
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"{flag} {value!r} is not supported; choose one of {', '.join(map(str, spec.choices))}.")
    if spec.check is not None:
        normalised = spec.check(value)
        if normalised is not None:
            return normalised
    return value


# --- flags -----------------------------------------------------------------------------------


def add_flags(parser, group_classes, command: str) -> None:
    """Adds the flags of every option of ``group_classes`` that ``command`` offers."""
    for group_class in group_classes:
        offered = [opt for opt in options_of(group_class) if command in opt.spec.commands]
        if not offered:
            continue
        section = parser.add_argument_group(f"{offered[0].group} options")
        for opt in offered:
            shown = "" if opt.default in ("", None, [], False) else f" (default {str(opt.default)})"
            choices = f"; one of {', '.join(map(str, opt.spec.choices))}" if opt.spec.choices else ""
            text = (opt.spec.help + choices + shown).replace("%", "%%")  # argparse formats help with %
            kwargs = {"dest": opt.name, "help": text, "default": opt.default,
                      "metavar": opt.spec.metavar or opt.type.__name__.upper().replace("STR", "TEXT")}
            if opt.type is bool:
                kwargs["action"] = "store_true"
                del kwargs["metavar"]
            elif opt.spec.repeated:
                kwargs.update(action="append", default=[])
            else:
                kwargs["type"] = str  # coerced and checked with the declaration, for its own sentences
            section.add_argument(opt.flag, **kwargs)


def group_from_values(group_class, values: dict, *, check: bool = True):
    """A group from a mapping of option names to raw values (missing ones take the default)."""
    fields = {}
    for opt in options_of(group_class):
        value = values.get(opt.name, opt.default)
        value = coerce(opt, value)
        fields[opt.name] = check_value(opt, value) if check else value
    return group_class(**fields)


def iter_options(group_classes) -> Iterator[Option]:
    for group_class in group_classes:
        yield from options_of(group_class)


# --- documentation ---------------------------------------------------------------------------


def markdown_table(group_classes, command: str) -> str:
    """The options table of ``command`` for the README."""
    rows = ["| option | default | group | meaning |", "| --- | --- | --- | --- |"]
    for opt in iter_options(group_classes):
        if command in opt.spec.commands:
            default = "—" if opt.default in ("", None, []) else f"`{_shown(opt.default).strip(chr(39))}`"
            rows.append(f"| `{opt.flag}` | {default} | {opt.group} | {opt.spec.help} |")
    return "\n".join(rows)
