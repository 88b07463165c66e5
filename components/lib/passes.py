"""One model pass over a split's photos, divided over the run's replicas.

Feature extraction's forward pass, evaluation and the champion's re-measurement at registration
each run a model once over every photo of a split. With one replica (the default: a laptop or
one CPU machine) the pass is a plain loop over the split's batches in this process. Under a
tf.distribute strategy with more than one replica (``strategy.make_strategy``: the GPUs of a
machine under MirroredStrategy, several machines under MultiWorkerMirroredStrategy with
``TF_CONFIG``) the photos are divided instead:

- worker w of W (a machine) reads the records at positions w, w + W, w + 2W, ... of the split
  (``records.read_split(every=(w, W))``, before decoding), in record order;
- each of its batches (``batch_size`` per replica) is cut into one contiguous slice per local
  replica, and the slices run at once (``strategy.run``);
- the per-photo outputs are gathered across workers with their record positions
  (``strategy.gather``) and put back in record order.

Every photo is scored once: nothing is padded, nothing dropped (Keras' distributed ``predict``
pads or drops the last partial batch; this pass has no fixed batch count to keep in step,
because the forward pass needs no collective until the one gather at the end). The metrics
are then computed once from the gathered outputs, so they are those of one device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from tlp.components.lib.dataprep import records
from tlp.components.lib.specs import ServiceError


@dataclass
class PassOutput:
    """A pass's per-photo results in record order: ``outputs`` [N, ...] float32, ``labels`` [N]
    and ``positions`` [N], each photo's record position within the split (photos left out by
    ``exclude_source_ids`` leave gaps)."""

    outputs: np.ndarray
    labels: np.ndarray
    positions: np.ndarray


def layout(strategy) -> tuple[int, int, int]:
    """(workers, this worker's index, replicas on this worker) of ``strategy`` (None: one of each)."""
    if strategy is None or strategy.num_replicas_in_sync <= 1:
        return 1, 0, 1
    local = len(strategy.extended.worker_devices)
    workers = max(1, strategy.num_replicas_in_sync // local)
    if workers == 1:
        return 1, 0, local
    resolver = strategy.cluster_resolver
    # MultiWorkerMirroredStrategy numbers the chief first, then the workers.
    has_chief = bool(resolver.cluster_spec().as_dict().get("chief"))
    index = 0 if resolver.task_type == "chief" else resolver.task_id + (1 if has_chief else 0)
    return workers, index, local


def is_divided(strategy) -> bool:
    """Whether ``strategy`` divides a pass over more than one replica."""
    return strategy is not None and strategy.num_replicas_in_sync > 1


def run_pass(
    compute, dataset_dir: str, split: str, batch_size: int, *, strategy=None,
    exclude_source_ids: set[str] | frozenset[str] = frozenset(), label: str = "", what: str = "scored",
    jit_compile: bool | None = None, positions: np.ndarray | None = None, sink=None,
) -> PassOutput:
    """Runs ``compute`` (uint8 images [B, S, S, 3] -> float32 [B, ...]; its model built under
    ``strategy.scope()`` when one is given) once over ``split``, divided over ``strategy``'s
    replicas (see the module docstring). ``batch_size`` is per replica. Photos whose source id is
    in ``exclude_source_ids`` are not scored; with ``positions`` (sorted record positions, e.g. the
    gap's sample) only those are. ``jit_compile``: XLA for ``compute``. Every worker returns every
    photo's result. With ``sink`` (called with each batch's outputs and labels, in record order),
    the outputs go there as they come and the result's ``outputs`` is empty: a pass over millions
    of photos never holds them all (with several workers each one holds its own until the gather
    puts them in order)."""
    import tensorflow as tf

    workers, worker, local = layout(strategy)
    divided = is_divided(strategy)
    metadata = records.read_metadata(dataset_dir)
    total, size = metadata["num_examples"][split], metadata["image_size"]
    run = tf.function(compute, input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)],
                      jit_compile=jit_compile)
    # Under a strategy, one compiled call runs every replica's slice (a step's shapes change only
    # at the end of the split).
    # (strategy.run takes the plain function: given a tf.function, it binds its signature to the
    # per-replica values.)
    step = tf.function(lambda values: strategy.run(compute, args=(values,)), reduce_retracing=True,
                       jit_compile=jit_compile) if divided else None
    dataset = records.read_split(dataset_dir, split, batch_size * local, with_source_ids=bool(exclude_source_ids),
                                 positions=positions, every=(worker, workers))
    chosen = None if positions is None else np.asarray(positions, np.int64)
    streamed = sink is not None and workers == 1
    outputs: list[np.ndarray] = []
    labels, found, seen, started = [], [], 0, time.monotonic()
    batches = 0
    for batch in dataset:
        images, batch_labels = batch[0], batch[1].numpy()
        count = len(batch_labels)
        batch_positions = (seen + np.arange(count)) * workers + worker  # among the records read
        if chosen is not None:
            batch_positions = chosen[batch_positions]
        seen += count
        if exclude_source_ids:
            keep = np.array([s.decode("utf-8", "replace") not in exclude_source_ids for s in batch[2].numpy()])
            if not keep.all():
                images = tf.boolean_mask(images, keep)
                batch_labels, batch_positions = batch_labels[keep], batch_positions[keep]
        if len(batch_labels) == 0:
            continue
        scored = _on_replicas(step, images, strategy, local) if divided else run(images).numpy()
        if streamed:
            sink(scored, batch_labels)
            if not outputs:  # the first batch's shape, for the result
                outputs.append(scored[:0])
        else:
            outputs.append(scored)
        labels.append(batch_labels)
        found.append(batch_positions)
        batches += 1
        if batches % 20 == 0:
            rate = seen / max(time.monotonic() - started, 1e-9)
            print(f"  {label}{what} {split}: {seen}/{total} images on this worker ({rate:.0f} img/s)", flush=True)
    if not outputs:  # (convolutions refuse an empty batch) the output's shape, for the gather
        outputs.append(run(tf.zeros([1, size, size, 3], tf.uint8)).numpy()[:0])
    result = PassOutput(
        np.concatenate(outputs),
        np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64),
        np.concatenate(found).astype(np.int64) if found else np.zeros(0, np.int64),
    )
    if workers > 1:
        result = _gathered(strategy, local, result)
    _check_complete(result, total, split, exclude_source_ids, None if chosen is None else len(chosen))
    if sink is not None and not streamed:
        for start in range(0, len(result.labels), batch_size * local):
            stop = start + batch_size * local
            sink(result.outputs[start:stop], result.labels[start:stop])
        result = PassOutput(result.outputs[:0], result.labels, result.positions)
    print(f"  {label}{what} {split}: {len(result.labels)}/{total} images"
          + (f" over {workers} worker(s) x {local} replica(s)" if divided else ""), flush=True)
    return result


def _on_replicas(step, images, strategy, local: int) -> np.ndarray:
    """One batch cut into ``local`` contiguous slices (the last ones shorter, or empty), each run
    on its replica; the outputs in batch order."""
    import tensorflow as tf

    count = int(images.shape[0])
    sizes = [count // local + (1 if replica < count % local else 0) for replica in range(local)]
    # A replica left without photos (fewer photos than replicas) scores the first one again and its
    # result is thrown away: convolutions refuse an empty batch.
    slices = [part if size else images[:1] for part, size in zip(tf.split(images, sizes), sizes, strict=True)]
    values = strategy.experimental_distribute_values_from_function(
        lambda context: slices[context.replica_id_in_sync_group % local]
    )
    results = strategy.experimental_local_results(step(values))
    return np.concatenate([result.numpy() for result, size in zip(results, sizes, strict=True) if size])


def _gathered(strategy, local: int, mine: PassOutput) -> PassOutput:
    """Every worker's results on every worker, in record order (one all-gather per array)."""
    import tensorflow as tf

    def all_workers(array: np.ndarray) -> np.ndarray:
        nothing = np.zeros((0, *array.shape[1:]), array.dtype)
        values = strategy.experimental_distribute_values_from_function(
            # The worker's first replica carries its results; the others carry none.
            lambda context: tf.constant(array if context.replica_id_in_sync_group % local == 0 else nothing)
        )
        return strategy.gather(values, axis=0).numpy()

    outputs, labels, positions = (all_workers(a) for a in (mine.outputs, mine.labels, mine.positions))
    order = np.argsort(positions, kind="stable")
    return PassOutput(outputs[order], labels[order], positions[order])


def _check_complete(result: PassOutput, total: int, split: str, exclude_source_ids, chosen: int | None) -> None:
    """Every photo (of ``chosen`` many, if given) scored once: a lost or doubled photo would change
    the metrics silently."""
    positions = result.positions
    doubled = len(positions) - len(np.unique(positions))
    expected = None if exclude_source_ids else total if chosen is None else chosen
    if doubled or (expected is not None and len(positions) != expected) or (len(positions) and positions[-1] >= total):
        wanted = f"{expected} of the split's {total}" if expected is not None else f"at most the split's {total}"
        raise ServiceError(
            f"the {split} pass scored {len(positions)} photos ({doubled} twice) where it should have scored {wanted}; "
            "the workers read different data (check that every worker of the job sees the same dataset path) and "
            "run the step again."
        )
