"""Data prep as one Apache Beam pipeline of named stages.

``List`` (the listing's units of work) -> ``Distribute`` -> ``ReadDigestEncode`` (read each photo
once: its SHA-256, then decode, resize, encode) -> ``Deduplicate`` (one record per prepared image:
the first in listing order is kept, the others are skipped as duplicates; a picture filed under two
classes is a labelling conflict and all its copies are skipped) -> ``SplitByContent`` (the
gathered (class, digest) list through ``split.split_by_content``, the very function tlp 0.1.0
split with) -> ``AssignShard`` ->
``WriteShards`` (TFRecord files per split) -> ``WriteMetadata`` (counts, skipped files with their
reasons, fingerprints: ``metadata.json``).

Photos are decoded in the same pass that digests them, before deduplication, so each photo is read
once (reading twice would double the bytes read from Cloud Storage); only the small resized JPEGs
travel on. Every stage is deterministic: the shards hold the same records in the same order
whatever the runner and however many workers it has.
"""

from __future__ import annotations

from collections import Counter

from tlp.components.lib.dataprep import encode, progress, records, split
from tlp.components.lib.dataprep.sources import Listing, Photo


def _read(numbered_unit: tuple, image_size: int, progress_folder: str | None) -> list[Photo]:
    index, unit = numbered_unit
    photos = encode.read_unit(unit, index, image_size)
    progress.count(progress_folder, len(photos))
    return photos


def _key_by_content(photo: Photo) -> tuple:
    # The prepared image's digest (its resized pixels): identical bytes give identical prepared
    # images, and so does the same picture saved again with other bytes. Photos without a file digest (generated, TFDS)
    # and unreadable files are never duplicates: each keys alone.
    if photo.digest is None or photo.prepared_digest is None:
        return ("unique", photo.order), photo
    return photo.prepared_digest, photo


def _skip(photo: Photo, kind: str, reason: str, **extra) -> object:
    import apache_beam as beam

    return beam.pvalue.TaggedOutput("skipped", (photo.order, {"path": photo.source_id, "reason": reason,
                                                              "kind": kind, **extra}))


def _keep_first(keyed: tuple):
    """Of the photos that prepare to one image, the first in listing order is kept and the others
    are skipped as duplicates of it (``duplicate_of``), so the picture lands in one split. Filed
    under two or more classes, the picture is a labelling conflict: every copy is left out and
    listed with the paths of the others (``conflicts_with``). Unreadable files key alone."""
    _, members = keyed
    members = sorted(members, key=lambda photo: photo.order)
    if members[0].error is not None:
        for photo in members:
            yield _skip(photo, "unreadable", photo.error)
        return
    if len({photo.label for photo in members}) > 1:
        for photo in members:
            others = [other.source_id for other in members if other is not photo]
            yield _skip(photo, "conflict", f"the same picture as {', '.join(others)} in another class folder: a "
                        "labelling conflict, left out of training; keep it in the one right class folder",
                        conflicts_with=others)
        return
    kept = members[0]
    yield kept
    for photo in members[1:]:
        if photo.digest == kept.digest:
            reason = f"exact duplicate of {kept.source_id} (kept once, in one split)"
        else:
            reason = (f"the same picture as {kept.source_id} saved again (other bytes, the same pixels once prepared); "
                      "kept once, in one split")
        yield _skip(photo, "duplicate", reason, duplicate_of=kept.source_id)


def _identify(photo: Photo) -> tuple:
    return photo.order, photo.source_id, photo.label, photo.digest, photo.split


def plan_splits(identities: list[tuple], seed: int, fixed: bool, image_size: int, max_workers: int,
                min_shard_records: int, split_record: dict | None = None) -> dict:
    """Each kept photo's place: order -> (split, shard, rank in its shard's split), from the
    gathered (order, source_id, label, digest, fixed split) list. ``fixed`` (TFDS): each photo
    stays in the slice it was read from, in read order; else ``split.split_by_content``."""
    if fixed:
        ordered = {name: sorted(item[0] for item in identities if item[4] == name) for name in split.SPLITS}
        record = dict(split_record or {})
    else:
        examples = {}
        for order, source_id, label, digest, _ in identities:
            examples[order] = split.Example(source_id, label, digest)
        back = {id(example): order for order, example in examples.items()}
        splits, record = split.split_by_content(list(examples.values()), seed)
        ordered = {name: [back[id(example)] for example in splits[name]] for name in split.SPLITS}
    place, per_shard = {}, {}
    for name in split.SPLITS:
        per_shard[name] = records.records_per_shard(len(ordered[name]), image_size, max_workers, min_shard_records)
        for rank, order in enumerate(ordered[name]):
            place[order] = (name, rank // per_shard[name], rank)
    return {"place": place, "record": record, "per_shard": per_shard}


def _assign(photo: Photo, plan: dict) -> tuple:
    name, shard, rank = plan["place"][photo.order]
    return (name, shard), (rank, photo.encoded, photo.label, photo.source_id)


def _write_shard(keyed: tuple, output_dir: str) -> dict:
    (name, shard), members = keyed
    members = sorted(members, key=lambda member: member[0])
    file_name = records.shard_name(name, shard)
    digest = records.write_shard(records.join(output_dir, file_name), [member[1:] for member in members])
    return {"split": name, "shard": shard, "name": file_name, "digest": digest,
            "labels": dict(Counter(member[2] for member in members))}


def metadata_of(listing: Listing, image_size: int, shards: list[dict], skipped: list[tuple], plan: dict,
                source_fingerprint: str) -> dict:
    """metadata.json: per-split per-class counts, shard files, skipped files (found while listing,
    then in listing order), the fingerprint of the images written and the split's record."""
    shards = sorted(shards, key=lambda s: (split.SPLITS.index(s["split"]), s["shard"]))
    counts, files = {}, {}
    for name in split.SPLITS:
        mine = [s for s in shards if s["split"] == name]
        files[name] = [s["name"] for s in mine]
        per_label: Counter[int] = Counter()
        for s in mine:
            per_label.update({int(label): n for label, n in s["labels"].items()})
        counts[name] = {class_name: per_label.get(label, 0) for label, class_name in enumerate(listing.class_names)}
    skip_list = list(listing.skipped) + [entry for _, entry in sorted(skipped, key=lambda item: item[0])]
    return records.metadata_record(listing.spec, listing.class_names, image_size, counts, files, skip_list,
                                   records.fingerprint([s["digest"] for s in shards]), plan["record"],
                                   source_fingerprint)


def _write_metadata(_, listing: Listing, output_dir: str, image_size: int, shards: list, skipped: list, plan: dict,
                    source_fingerprint: str) -> None:
    records.write_metadata(output_dir, metadata_of(listing, image_size, shards, skipped, plan, source_fingerprint))


def build(pipeline, listing: Listing, output_dir: str, *, image_size: int, seed: int, max_workers: int,
          min_shard_records: int, source_fingerprint: str = "", progress_folder: str | None = None) -> None:
    """Adds data prep's stages to ``pipeline`` (a ``beam.Pipeline``); running it writes the data set.
    ``progress_folder``: where the workers keep their counts of photos read (``progress.Reporter``)."""
    import apache_beam as beam
    from apache_beam.pvalue import AsSingleton

    photos = (
        pipeline
        | "List" >> beam.Create(list(enumerate(listing.units)), reshuffle=False)
        | "Distribute" >> beam.Reshuffle()  # units spread over the workers
        | "ReadDigestEncode" >> beam.FlatMap(_read, image_size, progress_folder)
    )
    verdicts = (
        photos
        | "KeyByContent" >> beam.Map(_key_by_content)
        | "GroupByContent" >> beam.GroupByKey()
        | "Deduplicate" >> beam.FlatMap(_keep_first).with_outputs("skipped", main="kept")
    )
    kept = verdicts.kept
    plan = (
        kept
        | "Identify" >> beam.Map(_identify)
        | "GatherIdentities" >> beam.combiners.ToList()
        | "SplitByContent" >> beam.Map(plan_splits, seed, listing.split is not None, image_size, max_workers,
                                       min_shard_records, listing.split)
    )
    shards = (
        kept
        | "AssignShard" >> beam.Map(_assign, AsSingleton(plan))
        | "GroupByShard" >> beam.GroupByKey()
        | "WriteShards" >> beam.Map(_write_shard, output_dir)
    )
    _ = (
        pipeline
        | "Once" >> beam.Create([None])
        | "WriteMetadata" >> beam.Map(
            _write_metadata, listing, output_dir, image_size,
            AsSingleton(shards | "GatherShards" >> beam.combiners.ToList()),
            AsSingleton(verdicts.skipped | "GatherSkipped" >> beam.combiners.ToList()),
            AsSingleton(plan), source_fingerprint,
        )
    )
