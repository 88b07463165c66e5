"""Data prep as one Apache Beam pipeline of named stages.

``List`` (the workers read the listing's units from the file ``sources.write_listing`` wrote) ->
``Distribute`` -> ``ReadDigestEncode`` (read each photo once: its SHA-256, then decode, resize,
encode; the resized JPEGs go straight to a staged file per unit, each followed by its name) ->
``Deduplicate`` (by buckets of the prepared image's digest; one record per prepared image: the first
in listing order is kept, the others are skipped as duplicates; a picture filed under two classes is
a labelling conflict and all its copies are skipped) -> ``SplitByContent`` (the gathered (class,
split position) records through ``split.split_by_content``, the very function tlp 0.1.0 split with;
each kept photo leaves it with its shard) -> ``WriteShards`` (TFRecord files per split, the images
and names read back from the staged files) -> ``WriteMetadata``
(counts, skipped files with their reasons, fingerprints: ``metadata.json``).

Photos are decoded in the same pass that digests them, before deduplication, so each photo is read
once (reading twice would double the bytes read from Cloud Storage). What travels between the
stages is small and does not hold the images: one packed bytes record a photo (its class, digests
and where its JPEG is staged; a folder photo's name waits on disk after its JPEG; after
deduplication 37 bytes), so no
grouping holds image bytes (the DirectRunner keeps each grouping's elements, decoded, in memory).
Nothing in the job request grows with the photos: the workers read the listing from its file, and
no per-photo structure is a side input. Every stage is deterministic: the shards hold the same
records in the same order whatever the runner and however many workers it has.
"""

from __future__ import annotations

import struct
from collections import Counter

from tlp.components.lib.dataprep import encode, progress, records, sources, split
from tlp.components.lib.dataprep.sources import Photo
from tlp.components.lib.specs import ServiceError

STAGED_FOLDER = "staged"  # under the run's scratch folder: one file of resized JPEGs per unit


def staged_path(scratch: str, unit: int) -> str:
    return sources.join(scratch, f"{STAGED_FOLDER}/unit-{unit:08d}.jpgs")


# What travels from the read stage on: a photo packed into one bytes object (``pack``), not a
# ``Photo`` nor a tuple. Beam's local runner decodes every element of a grouping into Python objects
# and holds them all in the launcher until the grouping is done, and the split stage's worker holds
# every kept photo: a 7-tuple of strings and tuples took about 700 bytes a photo there, one bytes
# object about 130. Digests travel as their 32 raw bytes, not 64 hex characters.
ORDER, SOURCE_ID, LABEL, DIGEST, ERROR, SPLIT, STORED, PREPARED = range(8)  # the fields of ``unpack``
_HEAD = struct.Struct("<IIiqqBBI")  # unit, index, label, offset, length, flags, split, source_id's length
_HAS_DIGEST, _HAS_ERROR, _HAS_STORED, _HAS_PREPARED, _NAME_STAGED = 1, 2, 4, 8, 16
# Photos group for deduplication by a bucket of their prepared digest, not by the digest itself:
# the local runner holds a list and a key for each group, about 220 bytes, which per photo was more
# than the photo's record. 1,024 buckets still spread the work over many workers.
DEDUPE_BUCKETS = 1024
_SPLIT_CODES = (None, *split.SPLITS)


def pack(order: tuple, source_id: str, label: int, digest: str | None, error: str | None = None,
         fixed_split: str | None = None, stored: tuple | None = None, prepared: str | None = None,
         name_staged: bool = False) -> bytes:
    """A photo's fields in one bytes object (``unpack`` gives them back). ``name_staged``: the
    source id is left out (only its length is kept): it is staged after the photo's JPEG."""
    name = source_id.encode()
    flags = ((_HAS_DIGEST if digest is not None else 0) | (_HAS_ERROR if error is not None else 0)
             | (_HAS_STORED if stored is not None else 0) | (_HAS_PREPARED if prepared is not None else 0)
             | (_NAME_STAGED if name_staged else 0))
    offset, length = stored if stored is not None else (0, 0)
    head = _HEAD.pack(order[0], order[1], label, offset, length, flags, _SPLIT_CODES.index(fixed_split), len(name))
    return b"".join((head, bytes.fromhex(digest) if digest is not None else b"",
                     bytes.fromhex(prepared) if prepared is not None else b"", b"" if name_staged else name,
                     error.encode() if error is not None else b""))


def unpack(raw: bytes, scratch: str | None = None) -> tuple:
    """(order, source_id, label, digest, error, split, stored, prepared) of a ``pack``-ed photo; a
    staged name is read from ``scratch``'s staged file (None without ``scratch``)."""
    unit, index, label, offset, length, flags, split_code, name_length = _HEAD.unpack_from(raw)
    at = _HEAD.size
    digest = prepared = None
    if flags & _HAS_DIGEST:
        digest, at = raw[at : at + 32].hex(), at + 32
    if flags & _HAS_PREPARED:
        prepared, at = raw[at : at + 32].hex(), at + 32
    if flags & _NAME_STAGED:
        source_id = None if scratch is None else read_staged(scratch, unit, offset + length, name_length).decode()
        name_length = 0
    else:
        source_id = raw[at : at + name_length].decode()
    error = raw[at + name_length :].decode() if flags & _HAS_ERROR else None
    stored = (offset, length) if flags & _HAS_STORED else None
    return (unit, index), source_id, label, digest, error, _SPLIT_CODES[split_code], stored, prepared


def _compact(photo: Photo) -> bytes:
    # Photos without a file digest (generated, TFDS) and unreadable files are never duplicates.
    prepared = photo.prepared_digest if photo.digest is not None else None
    # A folder photo's name waits on disk after its JPEG: only a duplicate's group needs it before the shards.
    return pack(photo.order, photo.source_id, photo.label, photo.digest, photo.error, photo.split, photo.stored,
                prepared, name_staged=photo.stored is not None and photo.digest is not None)


def _read(numbered_unit: tuple, image_size: int, progress_folder: str | None, scratch: str) -> list[tuple]:
    """A unit's photos, staged, each as (its content key, ``_compact`` tuple)."""
    index, unit = numbered_unit
    photos = encode.read_unit(unit, index, image_size)
    _stage(photos, scratch, index)
    progress.count(progress_folder, len(photos))
    return [(_key_by_content(photo), _compact(photo)) for photo in photos]


def _stage(photos: list[Photo], scratch: str, unit: int) -> None:
    """Writes a unit's resized JPEGs one after another into its staged file, each followed by its
    photo's source id (UTF-8), and keeps, in each photo, only where its JPEG is: the bytes then wait
    on disk for their shard, not in the runner's memory, and the split stage and the shards read the
    name from there. A unit read again (a retried bundle) writes the same file again."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    if not any(photo.encoded is not None for photo in photos):
        return
    offset = 0
    with FileSystems.create(staged_path(scratch, unit), compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        for photo in photos:
            if photo.encoded is None:
                continue
            name = photo.source_id.encode()
            handle.write(photo.encoded + name)
            photo.stored, photo.encoded = (offset, len(photo.encoded)), None
            offset += photo.stored[1] + len(name)


def read_staged(scratch: str, unit: int, offset: int, length: int) -> bytes:
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(staged_path(scratch, unit), compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.seek(offset)
        data = handle.read(length)
    if len(data) != length:
        raise ServiceError(f"staged file {staged_path(scratch, unit)} holds {len(data)} bytes at {offset}, not "
                      f"{length}: it changed while data prep ran; run data prep again.")
    return data


def _key_by_content(photo: Photo) -> int:
    """The photo's dedupe bucket, from its prepared image's digest (its resized pixels): identical
    bytes give identical prepared images, and so does the same picture saved again with other bytes.
    A photo that cannot be a duplicate (no file digest or prepared image) goes to a bucket by its place."""
    if photo.digest is None or photo.prepared_digest is None:
        return (photo.order[0] * 31 + photo.order[1]) % DEDUPE_BUCKETS
    return int(photo.prepared_digest[:8], 16) % DEDUPE_BUCKETS


def _skip(photo: tuple, kind: str, reason: str, **extra) -> object:
    import apache_beam as beam

    return beam.pvalue.TaggedOutput("skipped", (photo[ORDER], {"path": photo[SOURCE_ID], "reason": reason,
                                                               "kind": kind, **extra}))


def _deduplicate(bucket: tuple, seed: int, scratch: str):
    """``_keep_first`` on each group of a bucket's photos that prepare to one image (a photo that
    cannot be a duplicate is a group of its own); the names of a group of copies are read from the
    staged files."""
    groups: dict = {}
    for raw in bucket[1]:
        photo = unpack(raw)
        groups.setdefault(photo[PREPARED] or ("alone", photo[ORDER]), []).append((photo, raw))
    for members in groups.values():
        if len(members) > 1:
            members = [(unpack(raw, scratch), raw) for _, raw in members]
        yield from _keep_first(members, seed)


def _keep_first(group: list, seed: int):
    """Of the photos that prepare to one image, the first in listing order is kept and the others
    are skipped as duplicates of it (``duplicate_of``), so the picture lands in one split. Filed
    under two or more classes, the picture is a labelling conflict: every copy is left out and
    listed with the paths of the others (``conflicts_with``). Unreadable files key alone. Photos
    are (``unpack``-ed, packed) pairs of one group; a kept one leaves as a ``Kept`` record (its split position
    computed here, in parallel), what the split stage gathers."""
    members = sorted(group, key=lambda member: member[0][ORDER])
    photos = [photo for photo, _ in members]
    if photos[0][ERROR] is not None:
        for photo in photos:
            yield _skip(photo, "unreadable", photo[ERROR])
        return
    if len({photo[LABEL] for photo in photos}) > 1:
        for photo in photos:
            others = [other[SOURCE_ID] for other in photos if other is not photo]
            yield _skip(photo, "conflict", f"the same picture as {', '.join(others)} in another class folder: a "
                        "labelling conflict, left out of training; keep it in the one right class folder",
                        conflicts_with=others)
        return
    kept = photos[0]
    (unit, index), source_id, label, _, _, fixed_split, (offset, length), _ = kept
    position = split.split_position(split.identity(split.Example(source_id, label, kept[DIGEST])), seed)
    yield _KEPT.pack(unit, index, label, offset, length, _HEAD.unpack_from(members[0][1])[7], position,
                     _SPLIT_CODES.index(fixed_split))
    for photo in photos[1:]:
        if photo[DIGEST] == kept[DIGEST]:
            reason = f"exact duplicate of {kept[SOURCE_ID]} (kept once, in one split)"
        else:
            reason = (f"the same picture as {kept[SOURCE_ID]} saved again (other bytes, the same pixels once "
                      "prepared); kept once, in one split")
        yield _skip(photo, "duplicate", reason, duplicate_of=kept[SOURCE_ID])


# A kept photo as the split stage gathers it: what the split needs (class, split position; TFDS: its
# place in the listing and its slice) and where its JPEG and name are staged; its name is read from
# the staged file only when asked for. 37 bytes, where the photo's read record is about 115.
_KEPT = struct.Struct("<IIiqIIdB")  # unit, index, label, offset, length, name's length, position, split


class Kept:
    """A kept photo as the split stage holds it (the split stage holds every kept photo at once):
    its ``_KEPT`` record, unpacked when asked for; ``split.split_by_content`` reads label, position
    and, only where two positions tie or a photo moves, source_id."""

    __slots__ = ("raw", "scratch")

    def __init__(self, raw: bytes, scratch: str):
        self.raw, self.scratch = raw, scratch

    @property
    def label(self) -> int:
        return _KEPT.unpack_from(self.raw)[2]

    @property
    def position(self) -> float:
        return _KEPT.unpack_from(self.raw)[6]

    @property
    def order(self) -> tuple:
        return _KEPT.unpack_from(self.raw)[:2]

    @property
    def split(self) -> str | None:
        return _SPLIT_CODES[_KEPT.unpack_from(self.raw)[7]]

    @property
    def source_id(self) -> str:
        unit, _, _, offset, length, name_length, _, _ = _KEPT.unpack_from(self.raw)
        return read_staged(self.scratch, unit, offset + length, name_length).decode()


def plan_splits(gathered, scratch: str, seed: int, fixed: bool, image_size: int, max_workers: int,
                min_shard_records: int, split_record: dict | None = None) -> dict:
    """Each split's kept photos (``Kept``) in their order in the split (a photo's rank; the shard is
    rank // per_shard), from the gathered ``_KEPT`` records (any iterable) of photos staged under
    ``scratch``. ``fixed`` (TFDS): each photo stays in the slice it was read from, in read order;
    else ``split.split_by_content``."""
    kept = [Kept(raw, scratch) for raw in gathered]
    if fixed:
        ordered = {name: sorted((photo for photo in kept if photo.split == name), key=lambda photo: photo.order)
                   for name in split.SPLITS}
        record = dict(split_record or {})
    else:
        ordered, record = split.split_by_content(kept, seed)
    del kept
    per_shard = {name: records.records_per_shard(len(ordered[name]), image_size, max_workers, min_shard_records)
                 for name in split.SPLITS}
    return {"ordered": ordered, "record": record, "per_shard": per_shard}


def _plan_record(plan: dict) -> dict:
    return {"record": plan["record"], "per_shard": plan["per_shard"]}


_PLACE = struct.Struct("<QIqIIi")  # rank, unit, offset, length, name's length, label


def _assign_shards(gathered: tuple, scratch: str, seed: int, fixed: bool, image_size: int, max_workers: int,
                   min_shard_records: int, split_record: dict | None):
    """The split (``plan_splits``) of the gathered (key, ``_KEPT`` records) group, as each kept
    photo's ((split, shard), ``_PLACE`` record), and the plan's record (tagged "plan"). Here, in the
    one worker that gathered them, and not as a side input: every worker of the next stage would
    receive every photo's place."""
    import apache_beam as beam

    _, packed = gathered
    plan = plan_splits(packed, scratch, seed, fixed, image_size, max_workers, min_shard_records, split_record)
    for name in split.SPLITS:
        for rank, photo in enumerate(plan["ordered"][name]):
            unit, _, label, offset, length, name_length, _, _ = _KEPT.unpack_from(photo.raw)
            yield (name, rank // plan["per_shard"][name]), _PLACE.pack(rank, unit, offset, length, name_length,
                                                                       label)
    yield beam.pvalue.TaggedOutput("plan", _plan_record(plan))


def _write_shard(keyed: tuple, output_dir: str, scratch: str) -> dict:
    (name, shard), packed = keyed
    members = sorted(map(_PLACE.unpack, packed), key=lambda member: member[0])
    file_name = records.shard_name(name, shard)
    digest = records.write_shard(records.join(output_dir, file_name),
                                 (_staged_photo(scratch, *member[1:]) for member in members))  # one at a time
    return {"split": name, "shard": shard, "name": file_name, "digest": digest,
            "labels": dict(Counter(member[5] for member in members))}


def _staged_photo(scratch: str, unit: int, offset: int, length: int, name_length: int, label: int) -> tuple:
    """(JPEG, label, source id) of a staged photo, in one read."""
    staged = read_staged(scratch, unit, offset, length + name_length)
    return staged[:length], label, staged[length:].decode()


def metadata_of(listed: dict, image_size: int, shards: list[dict], skipped: list[tuple], plan: dict,
                source_fingerprint: str) -> dict:
    """metadata.json: per-split per-class counts, shard files, skipped files (found while listing,
    then in listing order), the fingerprint of the images written and the split's record.
    ``listed``: the listing's ``listing.json`` (``sources.read_listing``)."""
    shards = sorted(shards, key=lambda s: (split.SPLITS.index(s["split"]), s["shard"]))
    counts, files = {}, {}
    for name in split.SPLITS:
        mine = [s for s in shards if s["split"] == name]
        files[name] = [s["name"] for s in mine]
        per_label: Counter[int] = Counter()
        for s in mine:
            per_label.update({int(label): n for label, n in s["labels"].items()})
        counts[name] = {class_name: per_label.get(label, 0) for label, class_name in enumerate(listed["class_names"])}
    skip_list = list(listed["skipped"]) + [entry for _, entry in sorted(skipped, key=lambda item: item[0])]
    return records.metadata_record(listed["spec"], listed["class_names"], image_size, counts, files, skip_list,
                                   records.fingerprint([s["digest"] for s in shards]), plan["record"],
                                   source_fingerprint)


def _write_metadata(_, scratch: str, output_dir: str, image_size: int, shards: list, skipped: list, plan: dict,
                    source_fingerprint: str) -> None:
    listed = sources.read_listing(scratch)
    records.write_metadata(output_dir, metadata_of(listed, image_size, shards, skipped, plan, source_fingerprint))


def build(pipeline, scratch: str, output_dir: str, *, image_size: int, seed: int, max_workers: int,
          min_shard_records: int, fixed_split: dict | None = None, source_fingerprint: str = "",
          progress_folder: str | None = None) -> None:
    """Adds data prep's stages to ``pipeline`` (a ``beam.Pipeline``); running it writes the data set.
    ``scratch``: the folder (local or gs://) that holds the listing (``sources.write_listing``) and
    where the resized images are staged; the caller removes it after the run. ``fixed_split``: the
    listing's own split record (TFDS), None for the content split. ``progress_folder``: where the
    workers keep their counts of photos read (``progress.Reporter``)."""
    import apache_beam as beam
    from apache_beam.pvalue import AsSingleton

    photos = (
        pipeline
        | "List" >> beam.io.ReadFromText(sources.join(scratch, sources.LISTING_UNITS_FILE))
        # Units spread over the workers as their lines: the local runner holds a grouping's elements
        # decoded, and a line is one string where a parsed unit is a tuple of a list of lists.
        | "Distribute" >> beam.Reshuffle()
        | "ParseUnits" >> beam.Map(sources.read_unit_line)
        | "ReadDigestEncode" >> beam.FlatMap(_read, image_size, progress_folder, scratch)
    )
    verdicts = (
        photos
        | "GroupByContent" >> beam.GroupByKey()
        | "Deduplicate" >> beam.FlatMap(_deduplicate, seed, scratch).with_outputs("skipped", main="kept")
    )
    # One grouping under one key, not beam.combiners.ToList: ToList merges lists in a worker and passes
    # the whole list on as a side input, so every kept photo was held several times over.
    assigned = (
        verdicts.kept
        | "KeyAsOne" >> beam.Map(lambda raw: (b"", raw))
        | "GatherIdentities" >> beam.GroupByKey()
        | "SplitByContent" >> beam.FlatMap(_assign_shards, scratch, seed, fixed_split is not None, image_size,
                                           max_workers, min_shard_records, fixed_split).with_outputs("plan",
                                                                                                     main="photos")
    )
    # No kept photo: no group to split, and the plan of none.
    no_photos_plan = _plan_record(plan_splits([], scratch, seed, fixed_split is not None, image_size, max_workers,
                                              min_shard_records, fixed_split))
    shards = (
        assigned.photos
        | "GroupByShard" >> beam.GroupByKey()
        | "WriteShards" >> beam.Map(_write_shard, output_dir, scratch)
    )
    _ = (
        pipeline
        | "Once" >> beam.Create([None])
        | "WriteMetadata" >> beam.Map(
            _write_metadata, scratch, output_dir, image_size,
            AsSingleton(shards | "GatherShards" >> beam.combiners.ToList()),
            AsSingleton(verdicts.skipped | "GatherSkipped" >> beam.combiners.ToList()),
            AsSingleton(assigned.plan, default_value=no_photos_plan), source_fingerprint,
        )
    )
