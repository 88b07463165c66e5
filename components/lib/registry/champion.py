"""The champion alias, moved by a person: ``tlp models promote`` and ``rollback``. Every move
records who, why and when on the version. The automatic decisions at registration
(champion/challenger) are the registration step's: ``tlp.components.lib.registration``."""

from __future__ import annotations

import datetime

from tlp.components.lib.registry import Registry
from tlp.components.lib.specs import NotFound


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def move_champion(registry: Registry, name: str, version: str, *, by: str, reason: str, restore: bool = False) -> str:
    """Gives ``version`` the champion alias and records who, why and when on it. A promotion
    remembers the champion it replaced (``previous_champion``), which ``rollback`` follows; a
    restore (rollback) keeps the version's own record of its predecessor. Returns the previous champion."""
    previous = registry.champion_version(name)
    registry.set_champion(name, version)
    when = now()
    if restore:
        registry.set_tags(name, version, {"restored_at": when, "restored_by": by, "restored_reason": reason,
                                          "restored_from": previous or ""})
        if previous:
            registry.set_tags(name, previous, {"rolled_back_at": when, "rolled_back_by": by,
                                               "rolled_back_reason": reason})
    else:
        registry.set_tags(name, version, {"promoted_at": when, "promoted_by": by, "promoted_reason": reason,
                                          "previous_champion": previous or ""})
    return previous or ""


def parse_reference(reference: str) -> tuple[str, str]:
    name, sep, version = reference.rpartition("/")
    if not sep or not name or not version.isdigit():
        raise NotFound(f"{reference!r} is not NAME/VERSION (e.g. cats/3); see `tlp models list NAME`.")
    return name, version


def promote(registry: Registry, reference: str, *, reason: str, by: str) -> str:
    """``tlp models promote NAME/VERSION``. Returns what happened, in one sentence."""
    name, version = parse_reference(reference)
    registry.version(name, version)  # NotFound for an unknown model or version
    with registry.lock():
        if registry.champion_version(name) == version:
            return f"{name} version {version} is already the champion; nothing changed."
        previous = move_champion(registry, name, version, by=by, reason=reason)
    before = f" (was version {previous})" if previous else ""
    return f"{name} version {version} is now the champion{before}; recorded: by {by}, {reason!r}."


def rollback(registry: Registry, name: str, *, reason: str, by: str) -> str:
    """``tlp models rollback NAME``: the champion before the current one takes the alias back."""
    registry.versions(name)  # NotFound for an unknown model
    with registry.lock():
        current = registry.champion_version(name)
        if current is None:
            raise NotFound(f"{name} has no champion to roll back from; promote a version with tlp models promote.")
        previous = registry.version(name, current).tags.get("previous_champion", "")
        if not previous:
            raise NotFound(
                f"{name} champion version {current} records no earlier champion (it was the first, or promoted "
                "before tlp recorded it); promote the version you want with tlp models promote NAME/VERSION."
            )
        registry.version(name, previous)  # NotFound if it was deleted since
        move_champion(registry, name, previous, by=by, reason=reason, restore=True)
    return f"{name} version {previous} is the champion again (was version {current}); recorded: by {by}, {reason!r}."
