"""Fine-tuning from cached activations at the cut.

When the base is unfrozen from layer ``fine_tune_at`` and no augmentation runs, everything below
the cut is frozen (its BatchNorm layers in inference mode) and always sees the same images: its
outputs are fixed for the whole fine-tuning phase, like the pooled features of phase 1. So we
run the lower part once per image, keep the tensors that cross the cut, and train only the upper
part on them. The upper part is built from the same layer objects, so training it trains the
full model, which is then exported as usual.

Which tensors cross the cut is read from the Keras functional graph: every output of a layer
below ``fine_tune_at`` that a layer at or above it consumes, residual branches included (at
``fine_tune_at=100`` in MobileNetV2 these are ``block_11_expand_BN`` and the skip branch
``block_10_project_BN``).

The training stream is the plain path's, index for index: record positions go through the same
shuffle (buffer, seed, reshuffle each epoch), repeat and batch as ``records.read_split`` applies
to the records, and each batch of positions is then replaced by those records' cached tensors.
The same batches therefore arrive in the same order; under a tf.distribute strategy they are
split across replicas and workers the same way too.

Cached tensors are float32, streamed to a file on local disk and read back by row with ``pread``
(the OS page cache keeps a file that fits in RAM, outside the process's memory, so fine-tuning's
peak memory does not grow with the photos: issue 29.5); a memory budget (default none) can keep
the first rows in the process; the files are deleted when training
ends (also on an error). The cache is built completely before the first step and rebuilt by a
restarted (preempted) process, so it is never half-read; a killed process's leftover spill files
are removed by the next run. Under MultiWorkerMirroredStrategy with ``AutoShardPolicy.FILE``
each worker caches only its own files; with ``DATA`` each worker caches the whole split (as the
plain path reads it whole).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import typing
from dataclasses import dataclass

import numpy as np

from tlp.components.lib import model as model_lib
from tlp.components.lib.dataprep import records
from tlp.components.lib.specs import ServiceError

# Cached tensors held in the process; the rest is spilled to local disk. None by default: with 1 GiB,
# fine-tuning's peak grew 9.5 KB a photo at 64 px until the budget was full (issue 29.5).
DEFAULT_BUDGET_BYTES = 0
SPILL_PREFIX = "tlp-cut-cache-"
DISK_HEADROOM = 0.9  # spill at most this share of the spill directory's free space
BUILD_BATCH_CPU = 16


class CutNotApplicable(Exception):
    """The model cannot be trained from the cut (the message says why); train it on images.

    Internal on purpose: ``fine_tune_from_cut`` catches it and falls back to training on images,
    so it never reaches a user (tests/unit/test_errors.py lists it as internal)."""


@dataclass
class CutModels:
    """The model split at the cut. ``lower(images)`` returns the tensors that cross the cut (in
    ``names`` order, float32); ``upper`` takes them (one input each) and returns the logits,
    sharing its layers and weights with the full model."""

    # Keras models: Keras is imported at run time (heavy), so a checker cannot see their class.
    lower: typing.Any
    upper: typing.Any
    names: list
    shapes: list

    @property
    def row_bytes(self) -> int:
        return 4 * sum(math.prod(shape) for shape in self.shapes)


# --- the graph ------------------------------------------------------------------------------


def _nodes_in(network, layer) -> list:
    """The calls of ``layer`` that belong to ``network``'s graph (a layer shared by several
    models has one inbound node per call)."""
    return [node for index, node in enumerate(layer._inbound_nodes)
            if f"{layer.name}_ib-{index}" in network._network_nodes]


def cut_tensors(base, fine_tune_at: int) -> list:
    """The tensors of ``base``'s graph that cross the cut before layer ``fine_tune_at``: each
    output of a layer below the cut (or of an input layer) that a layer at or above the cut
    consumes, or that is an output of ``base``. In first-use order, each once."""
    keras = model_lib.keras()
    below = {id(layer) for index, layer in enumerate(base.layers)
             if index < fine_tune_at or isinstance(layer, keras.layers.InputLayer)}
    crossing: list = []

    def add(tensor):
        if id(tensor._keras_history.layer) in below and all(tensor is not seen for seen in crossing):
            crossing.append(tensor)

    for layer in base.layers[fine_tune_at:]:
        if id(layer) in below:
            continue
        for node in _nodes_in(base, layer):
            for tensor in node.keras_inputs:
                add(tensor)
    for tensor in base.outputs:
        add(tensor)
    return crossing


def split_at_cut(model, fine_tune_at: int) -> CutModels:
    """Splits the full model (``model_lib.build_model``'s layout: preprocessing, then the base
    called with ``training=False``, then the head) at base layer ``fine_tune_at``. Raises
    CutNotApplicable when the part below the cut could change during training."""
    keras = model_lib.keras()
    base = model.get_layer(model_lib.BASE_LAYER_NAME)
    if not 0 <= fine_tune_at < len(base.layers):
        raise CutNotApplicable(f"fine_tune_at {fine_tune_at} is outside the base's {len(base.layers)} layers")
    calls = _nodes_in(model, base)
    if len(calls) != 1:
        raise CutNotApplicable(f"the base is called {len(calls)} times in the model, not once")
    call = calls[0]
    if call.call_kwargs.get("training") is not False:
        raise CutNotApplicable("the base is not called with training=False, so its lower layers may be random")
    base_input, base_output = call.keras_inputs[0], call.outputs
    pre = None if base_input is model.inputs[0] else keras.Model(model.inputs, base_input, name="before_base")
    if pre is not None:
        random_layers = [layer.name for layer in pre.layers if _is_random(layer)]
        if random_layers:
            raise CutNotApplicable(f"layers before the base change their output at random ({random_layers}: "
                                   "augmentation)")
    crossing = cut_tensors(base, fine_tune_at)
    lower_base = keras.Model(base.inputs, crossing, name="below_cut")
    trainable = [w.name for w in lower_base.trainable_weights + (pre.trainable_weights if pre else [])]
    if trainable:
        raise CutNotApplicable(f"weights below the cut are trainable ({trainable[:3]}...)")
    upper_base = keras.Model(crossing, base.outputs, name="above_cut")
    post = keras.Model(base_output, model.outputs, name="after_base")

    with model_lib.precision_policy(model.dtype_policy.name):  # the loss-scale wrapping follows it
        inputs = [keras.Input(shape=tensor.shape[1:], dtype="float32", name=f"cut_{i}")
                  for i, tensor in enumerate(crossing)]
        features = upper_base(inputs if len(inputs) > 1 else inputs[0], training=False)
        upper = keras.Model(inputs, post(features), name="trained_from_cut")

    def lower(batch):
        import tensorflow as tf

        x = pre(batch, training=False) if pre is not None else batch
        outputs = lower_base(x, training=False)
        return [tf.cast(t, tf.float32) for t in tf.nest.flatten(outputs)]

    return CutModels(
        lower=lower, upper=upper, names=[t._keras_history.layer.name for t in crossing],
        shapes=[tuple(int(d) for d in t.shape[1:]) for t in crossing],
    )


def _is_random(layer) -> bool:
    """Whether a layer draws random numbers when training (augmentation, dropout, noise)."""
    return isinstance(layer, model_lib.keras().__internal__.layers.BaseRandomLayer)


# --- the cache ------------------------------------------------------------------------------


class ActivationCache:
    """Rows of float32 tensors (one row per image, record order) and their labels: the first
    ``memory_rows`` in memory, the rest in a spill file on local disk, read back row by row.
    Filled once (``add``, then ``finish``); read only after ``finish``."""

    def __init__(self, shapes: list, capacity: int, memory_rows: int, spill_path: str):
        self.shapes = [tuple(s) for s in shapes]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.row_bytes = 4 * sum(self.sizes)
        self.memory_rows = min(memory_rows, capacity)
        # np.empty: pages not yet written cost no memory, so an over-estimated capacity is free.
        self.memory = [np.empty((self.memory_rows, *shape), np.float32) for shape in self.shapes]
        self.labels: typing.Any = []  # label batches while building; one int64 array after finish()
        self.count = 0
        self.spill_path = spill_path
        self._writer: typing.IO[bytes] | None = None
        self._reader: int | None = None
        self.finished = False

    @property
    def spilled_rows(self) -> int:
        return max(0, self.count - self.memory_rows)

    @property
    def memory_bytes(self) -> int:
        return min(self.count, self.memory_rows) * self.row_bytes

    def add(self, tensors: list, labels) -> None:
        if self.finished:
            raise ServiceError("the cut cache is already finished; build a new ActivationCache to add more rows.")
        n = len(labels)
        in_memory = max(0, min(n, self.memory_rows - self.count))
        for store, values in zip(self.memory, tensors, strict=True):
            store[self.count : self.count + in_memory] = values[:in_memory]
        if in_memory < n:
            if self._writer is None:
                self._writer = open(self.spill_path, "wb")  # noqa: SIM115 (closed in finish/close)
            rest = [np.asarray(v[in_memory:], np.float32).reshape(n - in_memory, -1) for v in tensors]
            self._writer.write(np.concatenate(rest, axis=1).tobytes())
        self.labels.append(np.asarray(labels, np.int64))
        self.count += n

    def finish(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._reader = os.open(self.spill_path, os.O_RDONLY)
        self.labels = np.concatenate(self.labels) if self.labels else np.zeros(0, np.int64)
        self.finished = True

    def gather(self, indices) -> list:
        """The cached tensors and labels of ``indices`` (record positions), in that order."""
        if not self.finished:
            raise ServiceError("the cut cache is read before it was completely built; "
                               "call finish() after the last add().")
        indices = np.asarray(indices, np.int64)
        out = [np.empty((len(indices), *shape), np.float32) for shape in self.shapes]
        in_memory = indices < self.memory_rows
        for store, target in zip(self.memory, out, strict=True):
            target[in_memory] = store[indices[in_memory]]
        if not in_memory.all():
            row = np.empty(self.row_bytes // 4, np.float32)
            view = row.data.cast("B")
            reader = self._reader
            assert reader is not None, "rows beyond memory were spilled, so finish() opened the spill file"
            for position in np.flatnonzero(~in_memory):
                offset, done = (int(indices[position]) - self.memory_rows) * self.row_bytes, 0
                while done < self.row_bytes:  # pread may return short counts
                    got = os.preadv(reader, [view[done:]], offset + done)
                    if got <= 0:
                        raise ServiceError(f"the cut cache file {self.spill_path} ended early; keep other processes "
                                           "from deleting or truncating it while training runs, and train again.")
                    done += got
                start = 0
                for target, size, shape in zip(out, self.sizes, self.shapes, strict=True):
                    target[position] = row[start : start + size].reshape(shape)
                    start += size
        return [*out, self.labels[indices]]

    def close(self) -> None:
        """Frees the memory and deletes the spill file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._reader is not None:
            os.close(self._reader)
            self._reader = None
        if os.path.exists(self.spill_path):
            os.remove(self.spill_path)
        self.memory = []


def build_cache(lower, dataset_dir: str, split: str, batch_size: int, shapes: list, *, memory_bytes: int,
                spill_path: str, worker: tuple[int, int] = (0, 1), label: str = "") -> ActivationCache:
    """Runs ``lower`` (images -> list of float32 tensors; best a tf.function) once over ``split``
    (this worker's files when ``worker`` is (index, count) with count > 1, record order) and
    caches its outputs. On any error the partial cache is deleted and the error raised: a cache
    is either complete or gone."""
    total = records.read_metadata(dataset_dir)["num_examples"][split]
    row_bytes = 4 * sum(math.prod(s) for s in shapes)
    cache = ActivationCache(shapes, total, max(0, memory_bytes) // row_bytes, spill_path)
    started, batches = time.monotonic(), 0
    try:
        for batch_images, batch_labels in records.read_split(dataset_dir, split, batch_size, worker=worker):
            cache.add([t.numpy() for t in lower(batch_images)], batch_labels.numpy())
            batches += 1
            if batches % 20 == 0:
                rate = cache.count / max(time.monotonic() - started, 1e-9)
                print(f"  cut cache {label}{split}: {cache.count}/{total} images ({rate:.0f} img/s)", flush=True)
        cache.finish()
    except BaseException:
        cache.close()
        raise
    return cache


def cache_dataset(cache: ActivationCache, batch_size: int, *, shuffle_seed: int | None = None, repeat: bool = False,
                  distributed: bool = False, every_epoch: bool = False):
    """(cached tensors, label) batches: record positions shuffled, repeated and batched exactly as
    ``records.read_split`` shuffles, repeats and batches the records, then gathered from ``cache``.

    ``every_epoch`` (one replica): the epochs' batches (each epoch's last one partial) follow one
    another endlessly, each epoch reshuffled as Keras' new iterator over the finite dataset would
    be; one iterator then serves every epoch (``steps_per_epoch``: ``math.ceil(cache.count /
    batch_size)``).

    ``distributed`` (more than one replica): tf.distribute splits each batch across replicas by
    the batch size it finds in the last batching step (and a map after it hides it), so the
    gathered rows are batched again: the same batches, split across replicas and workers as the
    records' batches are, with the same unknown length."""
    import tensorflow as tf

    dataset = tf.data.Dataset.range(cache.count)
    if shuffle_seed is not None:
        dataset = dataset.shuffle(records.SHUFFLE_BUFFER, seed=shuffle_seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.batch(batch_size)
    if every_epoch:
        # Keras makes two iterators before a finite dataset's first epoch and uses the second, so
        # training on images starts from the shuffle's second order: skip the first one here.
        dataset = dataset.repeat().skip(math.ceil(cache.count / batch_size))
    count = len(cache.shapes)

    def gather(indices):
        values = tf.numpy_function(cache.gather, [indices], [tf.float32] * count + [tf.int64])
        for value, shape in zip(values, cache.shapes, strict=False):
            value.set_shape((None, *shape))
        values[-1].set_shape((None,))
        return (tuple(values[:-1]) if count > 1 else values[0]), values[-1]

    # A fixed, small read-ahead: each batch is tens of MB, and memory must stay within the budget.
    dataset = dataset.map(gather, num_parallel_calls=2, deterministic=True)
    if distributed:
        dataset = dataset.unbatch().batch(batch_size)
    return dataset.prefetch(2)


# --- training -------------------------------------------------------------------------------


def input_pipeline(strategy) -> tuple[int, int]:
    """(this worker's index, number of workers) as tf.distribute numbers the input pipelines:
    the chief first, then the workers by index (``multi_worker_util.id_in_cluster``)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    workers = len(spec.get("chief", [])) + len(spec.get("worker", []))
    if workers <= 1 or resolver is None:
        return 0, 1
    if resolver.task_type == "chief":
        return 0, workers
    return int(resolver.task_id) + len(spec.get("chief", [])), workers


def spill_directory(spill_dir: str | None) -> str:
    """A fresh directory for this process's spill files under ``spill_dir`` (default: the
    system's temporary directory), after removing the ones left by processes that no longer
    run (a killed run cannot delete its own)."""
    root = spill_dir or tempfile.gettempdir()
    os.makedirs(root, exist_ok=True)
    for name in os.listdir(root):
        owner = name[len(SPILL_PREFIX):].split("-")[0]
        if name.startswith(SPILL_PREFIX) and owner.isdigit() and not _running(int(owner)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-", dir=root)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fit_from_cut(
    model,
    *,
    fine_tune_at: int,
    dataset_dir: str,
    batch_size: int,
    seed: int,
    initial_epoch: int,
    epochs: int,
    callbacks: list,
    strategy,
    shard_policy=None,
    repeat: bool = False,
    steps_per_epoch: int | None = None,
    validation_steps: int | None = None,
    budget_bytes: int | None = None,
    spill_dir: str | None = None,
    verbose: int = 2,
) -> bool:
    """Fine-tunes ``model`` (already unfrozen from ``fine_tune_at`` and compiled) on cached
    activations at the cut instead of images: the same batches in the same order as
    ``model.fit`` on ``records.read_split(dataset_dir, "train", batch_size, shuffle_seed=seed,
    repeat=repeat)`` with ``read_split(..., "val", batch_size)`` for validation. ``batch_size``
    is the global batch. ``shard_policy`` is the ``AutoShardPolicy`` the image datasets would
    get. The model's weights are trained in place; nothing is returned but whether it ran.

    Returns False, after printing why and training nothing, when the model cannot be trained
    from the cut (then train it on images)."""
    import tensorflow as tf

    try:
        with strategy.scope():  # the upper model runs its steps under the strategy it is built in
            cut = split_at_cut(model, fine_tune_at)
    except CutNotApplicable as reason:
        print(f"  cut cache: not used ({reason}); training on images", flush=True)
        return False
    metadata = records.read_metadata(dataset_dir)
    worker, workers = input_pipeline(strategy)
    by_file = workers > 1 and shard_policy == tf.data.experimental.AutoShardPolicy.FILE
    rows = sum(metadata["num_examples"][split] for split in ("train", "val"))
    budget = DEFAULT_BUDGET_BYTES if budget_bytes is None else budget_bytes
    spill_root = spill_dir or tempfile.gettempdir()
    os.makedirs(spill_root, exist_ok=True)
    spill_bytes = max(0, rows * cut.row_bytes - budget)
    if spill_bytes > DISK_HEADROOM * shutil.disk_usage(spill_root).free:
        print(f"  cut cache: not used (it would spill {spill_bytes / 1e9:.1f} GB to {spill_root}, more than its free "
              "space); training on images", flush=True)
        return False
    directory = spill_directory(spill_dir)  # before anything is cached: a kill from here on leaves it to sweep
    caches: dict = {}
    try:
        crossing = ", ".join(f"{name} {'x'.join(map(str, shape))}"
                             for name, shape in zip(cut.names, cut.shapes, strict=True))
        print(f"  cut cache: below layer {fine_tune_at} runs once per image; {len(cut.names)} tensor(s) cross the "
              f"cut ({crossing}), {cut.row_bytes / 1e3:.0f} KB per image; budget {budget / 2**30:.2f} GiB in memory"
              + (f"; worker {worker + 1}/{workers} caches its own files" if by_file else ""), flush=True)
        started = time.monotonic()
        size = metadata["image_size"]  # one trace for every batch size, both splits
        lower = tf.function(cut.lower, input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)])
        # On CPU, smaller batches for the one pass below the cut: the same speed, and the memory its
        # activations take (TensorFlow keeps it for reuse) stays small beside the cache's budget.
        build_batch = batch_size if tf.config.list_logical_devices("GPU") else min(batch_size, BUILD_BATCH_CPU)
        for split in ("train", "val"):
            used = sum(cache.memory_bytes for cache in caches.values())
            caches[split] = build_cache(
                lower, dataset_dir, split, build_batch, cut.shapes, memory_bytes=budget - used,
                spill_path=os.path.join(directory, f"{split}.f32"), worker=(worker, workers) if by_file else (0, 1),
            )
        summary = "; ".join(
            f"{split} {cache.count} images ({cache.count - cache.spilled_rows} in memory, {cache.spilled_rows} "
            f"spilled to disk; {cache.memory_bytes / 1e6:,.0f} + {cache.spilled_rows * cache.row_bytes / 1e6:,.0f} MB)"
            for split, cache in caches.items())
        print(f"  cut cache: built in {time.monotonic() - started:.1f} s: {summary}", flush=True)
        options = tf.data.Options()
        # Each worker's cache already holds only its own files when sharding by file.
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF if by_file
            else shard_policy or tf.data.experimental.AutoShardPolicy.DATA
        )
        distributed = strategy.num_replicas_in_sync > 1
        # One iterator for all epochs: for a finite dataset Keras makes a new one every epoch, and
        # each change of iterator over this Python-fed pipeline cost ~3.5 s (measured: 2,000
        # images at 160 px, 7 s epochs). Not over several replicas: there the batches are made
        # again after the gather, and endless batches would run across the ends of epochs.
        every_epoch = not (repeat or steps_per_epoch or distributed)
        if every_epoch:
            steps_per_epoch = math.ceil(caches["train"].count / batch_size)
        train = cache_dataset(caches["train"], batch_size, shuffle_seed=seed, repeat=repeat, distributed=distributed,
                              every_epoch=every_epoch)
        val = cache_dataset(caches["val"], batch_size, distributed=distributed)
        train, val = train.with_options(options), val.with_options(options)
        with strategy.scope():
            cut.upper.compile_from_config(model.get_compile_config())
        steps = {key: value for key, value in
                 (("steps_per_epoch", steps_per_epoch), ("validation_steps", validation_steps)) if value}
        cut.upper.fit(train, validation_data=val, initial_epoch=initial_epoch, epochs=epochs, verbose=verbose,
                      callbacks=callbacks, **steps)
    finally:
        for cache in caches.values():
            cache.close()
        shutil.rmtree(directory, ignore_errors=True)
    return True
