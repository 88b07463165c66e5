"""The content split: which of train, val and test each photo belongs to.

A pure function of the photos' identities (content hashes), their classes and the seed, so the
same photos and seed give the same split, whoever computes it (tlp 0.1.0's data prep in one
process, or the Beam pipeline's split stage on the gathered (class, digest) list).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # the tutorial's 80/10/10
# Only photos this close to a split boundary (in position) may move to balance a class, so a photo
# that is in train for one data set is never in test for another (same seed): train stays below
# 0.8 + BAND, test above 0.9 - BAND.
SPLIT_BAND = 0.04
BALANCED_FROM = 500  # photos per class from which each split is held within BALANCE_POINTS of 80/10/10
BALANCE_POINTS = 0.02
SPLIT_METHOD = "content-sha256"


@dataclass
class Example:
    """What the split needs of one photo: its name, its class and its content hash."""

    source_id: str
    label: int
    content_hash: str | None = None  # SHA-256 of the file's bytes; None: the name stands for the content


def split_position(identity: str, seed: int) -> float:
    """Where a photo falls on [0, 1), from the SHA-256 of its content salted with the seed:
    below 0.8 train, below 0.9 val, else test. Other photos have no say in it."""
    digest = hashlib.sha256(f"tlp-split:{seed}:{identity}".encode()).hexdigest()
    return int(digest[:13], 16) / 16**13


def identity(example: Example) -> str:
    """The photo's content hash (folders: SHA-256 of the file); generated samples are a function of
    their name and the seed, so the name stands for the content."""
    return example.content_hash or hashlib.sha256(example.source_id.encode()).hexdigest()


def _natural_split(position: float) -> str:
    return "train" if position < SPLIT_FRACTIONS[0] else "val" if position < sum(SPLIT_FRACTIONS[:2]) else "test"


def split_by_content(examples: list, seed: int) -> tuple[dict[str, list], dict]:
    """Stable, stratified 80/10/10 split: each photo's split comes from its content and the seed
    (``split_position``), so adding, removing or renaming photos moves no other photo. Two
    exceptions, both recorded in the returned ``moved`` list: in a class of ``BALANCED_FROM`` or
    more photos whose shares land more than ``BALANCE_POINTS`` off 80/10/10, the fewest photos
    nearest a boundary (within ``SPLIT_BAND``) move to the adjacent split; and in a class of 3 or
    more, an empty split takes the photo nearest to it. ``examples``: anything with
    ``source_id``, ``label`` and ``content_hash`` (or its ``position``, ``split_position``).
    Returns the splits (each ordered by position) and the record of the method for
    ``metadata.json``."""
    by_class: dict[int, list[tuple[float, Example]]] = {}
    for example in examples:
        position = getattr(example, "position", None)  # computed already (data prep's workers do)
        if position is None:
            position = split_position(identity(example), seed)
        by_class.setdefault(example.label, []).append((position, example))
    splits: dict[str, list[tuple[float, Example]]] = {split: [] for split in SPLITS}
    moved: list[dict] = []
    for label in sorted(by_class):
        members = _by_position_then_name(by_class[label])
        assigned = {split: [m for m in members if _natural_split(m[0]) == split] for split in SPLITS}
        if len(members) >= BALANCED_FROM:
            _balance(assigned, len(members), moved)
        _fill_empty(assigned, moved)
        for split in SPLITS:
            splits[split] += assigned[split]
    record = {
        "method": SPLIT_METHOD, "seed": seed, "fractions": list(SPLIT_FRACTIONS), "band": SPLIT_BAND,
        "balanced_from": BALANCED_FROM, "balance_points": BALANCE_POINTS, "moved": moved,
    }
    # Ordered by position: classes interleave in shards and batches, and the order is stable too.
    return {split: [e for _, e in sorted(splits[split], key=lambda m: m[0])] for split in SPLITS}, record


def _by_position_then_name(members: list[tuple[float, Example]]) -> list[tuple[float, Example]]:
    """``members`` sorted by (position, source_id), asking for source_id only where positions tie
    (data prep's split stage reads a photo's name from disk)."""
    ordered = sorted(members, key=lambda item: item[0])
    start = 0
    while start < len(ordered):
        end = start + 1
        while end < len(ordered) and ordered[end][0] == ordered[start][0]:
            end += 1
        if end - start > 1:
            ordered[start:end] = sorted(ordered[start:end], key=lambda item: item[1].source_id)
        start = end
    return ordered


def _move(assigned: dict, source: str, target: str, count: int, highest: bool, limit: float, moved: list, why: str):
    """Moves up to ``count`` photos of ``source`` nearest to ``target`` (highest or lowest position,
    not beyond ``limit``) over to ``target``."""
    candidates = sorted(assigned[source], key=lambda m: m[0], reverse=highest)
    chosen = [m for m in candidates if (m[0] >= limit if highest else m[0] < limit)][:count]
    for member in chosen:
        assigned[source].remove(member)
        assigned[target].append(member)
        moved.append({"source_id": member[1].source_id, "from": source, "to": target, "why": why})


def _balance(assigned: dict, n: int, moved: list) -> None:
    """Brings a large class's shares within BALANCE_POINTS of 80/10/10 with the fewest moves."""
    window = {
        split: (math.ceil((share - BALANCE_POINTS) * n - 1e-9), math.floor((share + BALANCE_POINTS) * n + 1e-9))
        for split, share in zip(SPLITS, SPLIT_FRACTIONS, strict=True)
    }
    natural = {split: len(assigned[split]) for split in SPLITS}
    final = {split: min(max(natural[split], window[split][0]), window[split][1]) for split in ("train", "test")}
    for _ in range(n):  # val takes what train and test leave; nudge them until it fits its window too
        val = n - final["train"] - final["test"]
        if val < window["val"][0]:
            split = max(("train", "test"), key=lambda s: final[s] - window[s][0])
            if final[split] <= window[split][0]:
                break
            final[split] -= 1
        elif val > window["val"][1]:
            split = max(("train", "test"), key=lambda s: window[s][1] - final[s])
            if final[split] >= window[split][1]:
                break
            final[split] += 1
        else:
            break
    train_edge, test_edge = SPLIT_FRACTIONS[0], SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1]
    more_test, more_train = final["test"] - natural["test"], final["train"] - natural["train"]
    if more_test > 0:
        _move(assigned, "val", "test", more_test, True, test_edge - SPLIT_BAND, moved, "balance")
    elif more_test < 0:
        _move(assigned, "test", "val", -more_test, False, test_edge + SPLIT_BAND, moved, "balance")
    if more_train > 0:
        _move(assigned, "val", "train", more_train, False, train_edge + SPLIT_BAND, moved, "balance")
    elif more_train < 0:
        _move(assigned, "train", "val", -more_train, True, train_edge - SPLIT_BAND, moved, "balance")


def _fill_empty(assigned: dict, moved: list) -> None:
    """A class of 3 or more photos gets at least one in each split: an empty split takes the
    photo nearest to it from a neighbour that can spare one."""
    if sum(len(members) for members in assigned.values()) < len(SPLITS):
        return
    donors = {"train": (("val", False), ("test", False)), "test": (("val", True), ("train", True)),
              "val": (("train", True), ("test", False))}
    for split in ("train", "test", "val"):
        if assigned[split]:
            continue
        for source, highest in donors[split]:
            if len(assigned[source]) >= 2:
                _move(assigned, source, split, 1, highest, -1.0 if highest else 2.0, moved, "small class")
                break
