"""The measured work. Each workload runs alone in a child process of its own, either forked
from the fork server (``python -m bench.workloads --serve``, the default: TensorFlow is imported
once, before any TensorFlow runtime starts) or as a fresh interpreter:

    python -m bench.workloads NAME ARGS_JSON RESULT_JSON

A workload times only its own work (``time.perf_counter``) and returns a JSON-able dict; ``main``
adds the process's peak RSS (VmHWM) and writes the result file. Whoever started the child also
reads its peak RSS from ``wait4`` and its wall time, so nothing the parent holds beyond the
preloaded modules (which every component process imports too) counts in a measurement.

Instrumentation of the code under test is kept to two harness-only patches, applied in the
child and never to files: a timing callback appended to every ``tf_keras`` ``Model.fit`` call
(the library builds its own callback list; in benchmark 3's lockstep pair it also waits for its
turn between epochs, outside the timed epochs), and, where only epochs are measured, a no-op in
place of the SavedModel export at the end of ``fine_tune``.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time
import traceback

WORKLOADS = {}


def workload(func):
    WORKLOADS[func.__name__] = func
    return func


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (VmHWM), in MB (10^6 bytes)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) * 1024 / 1e6, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6, 1)


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 3)


def _cpu_since(start: float) -> float:
    """CPU seconds this process (all its threads) used since ``start`` (a ``time.process_time``).
    Unlike wall time it barely moves when other processes load the machine."""
    return round(time.process_time() - start, 3)


# --- timing Keras epochs ----------------------------------------------------------------------


def machine_cpu() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far, from /proc/stat."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def others_share(machine_before: tuple, machine_after: tuple, own_cpu_seconds: float) -> float | None:
    """The share of all CPUs that processes other than this one used between two ``machine_cpu``
    readings, given this process's CPU seconds over the same interval."""
    busy, total = (after - before for after, before in zip(machine_after, machine_before, strict=True))
    if total <= 0:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return round(max(0.0, busy / ticks - own_cpu_seconds) / (total / ticks), 3)


class Lockstep:
    """Takes turns with one other process, an epoch each: the two sides of benchmark 3 train
    alternately (ours epoch 1, plain epoch 1, ours epoch 2, ...), so both see the same machine
    load at nearly the same time, and neither runs while the other's epoch is timed.

    ``spec``: {"wait": FIFO this side reads its turn from, "pass": FIFO of the other side,
    "first": whether this side trains first}. Both sides open both FIFOs read-write (never blocks,
    never fails for want of a reader). Protocol: before its first epoch the second side says it is
    ready (a token to the first) and waits; the first waits for that token, so no epoch overlaps
    the other side's setup. After each epoch a side passes the turn and waits for it back, except
    the second side after its last epoch (the first side waits for that last epoch too, so
    neither side's teardown overlaps a timed epoch)."""

    def __init__(self, spec: dict, timeout: float = 600.0):
        self.first, self.timeout = bool(spec["first"]), timeout
        self._wait = os.open(spec["wait"], os.O_RDWR | os.O_NONBLOCK)
        self._pass = os.open(spec["pass"], os.O_RDWR | os.O_NONBLOCK)
        self.waited = 0.0

    def start(self) -> None:
        if not self.first:
            self._give()
        self._take()

    def after_epoch(self, last: bool) -> None:
        self._give()
        if self.first or not last:
            self._take()

    def _give(self) -> None:
        os.write(self._pass, b".")

    def _take(self) -> None:
        import select

        start = time.perf_counter()
        ready, _, _ = select.select([self._wait], [], [], self.timeout)
        if not ready:
            raise TimeoutError(f"the other side of the lockstep gave no turn in {self.timeout:.0f} s")
        os.read(self._wait, 1)
        self.waited += time.perf_counter() - start


def make_epoch_timer(batches: bool = False, lockstep=None):
    """A tf_keras callback that records, per epoch: wall seconds, the training part, the
    validation part, this process's CPU seconds, the share of the CPUs other processes used
    meanwhile (``others_cpu_share``, from /proc/stat) and (with ``batches``) every batch's wall
    and CPU seconds. Epoch seconds run from ``on_epoch_begin`` to ``on_epoch_end`` of this
    callback, which is appended last, so they include the other callbacks' end-of-epoch work
    (e.g. checkpoints).

    With ``lockstep`` (a ``Lockstep``), the process waits for its turn before its first epoch
    and hands the turn over after each epoch (after the epoch is recorded; it waits before the
    next epoch starts), so two processes train one epoch at a time, alternately."""
    import tf_keras as keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self._supports_tf_logs = True  # never forces a tensor -> numpy copy of the logs
            self.epochs: list[dict] = []
            self._current: dict | None = None
            self._last_epoch = None

        def on_train_begin(self, logs=None):
            self._last_epoch = (self.params or {}).get("epochs")
            if lockstep is not None:
                lockstep.start()

        def on_epoch_begin(self, epoch, logs=None):
            now = time.perf_counter()
            self._current = {"epoch": epoch + 1, "begin": now, "last": now, "last_cpu": time.process_time(),
                             "train_batches": [], "val_batches": [], "train_batches_cpu": [],
                             "cpu_begin": time.process_time(), "machine_begin": machine_cpu()}

        def on_test_begin(self, logs=None):
            if self._current is not None:  # validation inside fit (not a separate evaluate)
                now = time.perf_counter()
                self._current["train_end"] = self._current["last"] = now
                self._current["train_cpu_end"] = self._current["last_cpu"] = time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            now, cpu, current = time.perf_counter(), time.process_time(), self._current
            if current is None:
                return
            train_end = current.get("train_end", now)
            self.epochs.append({
                "epoch": current["epoch"],
                "seconds": round(now - current["begin"], 4),
                "train_seconds": round(train_end - current["begin"], 4),
                "val_seconds": round(now - train_end, 4),
                "cpu_seconds": round(cpu - current["cpu_begin"], 4),
                "train_cpu_seconds": round(current.get("train_cpu_end", cpu) - current["cpu_begin"], 4),
                "others_cpu_share": others_share(current["machine_begin"], machine_cpu(), cpu - current["cpu_begin"]),
                "train_batches": [round(b, 4) for b in current["train_batches"]],
                "train_batches_cpu": [round(b, 4) for b in current["train_batches_cpu"]],
                "val_batches": [round(b, 4) for b in current["val_batches"]],
                "logs": {key: float(value) for key, value in (logs or {}).items()},
            })
            self._current = None
            if lockstep is not None:
                lockstep.after_epoch(last=self._last_epoch is not None and epoch + 1 >= self._last_epoch)

        def _tick(self, key):
            if self._current is not None:
                now, cpu = time.perf_counter(), time.process_time()
                self._current[key].append(now - self._current["last"])
                if key == "train_batches":
                    self._current["train_batches_cpu"].append(cpu - self._current["last_cpu"])
                self._current["last"], self._current["last_cpu"] = now, cpu

    class BatchTimer(EpochTimer):
        def on_train_batch_end(self, batch, logs=None):
            self._tick("train_batches")

        def on_test_batch_end(self, batch, logs=None):
            self._tick("val_batches")

    return BatchTimer() if batches else EpochTimer()


def first_epoch_adjusted(epoch: dict) -> float:
    """An epoch's seconds without the one-off cost of its first training and first validation
    batch (tf.function tracing in epoch 1): each first batch is counted at the median batch time."""
    seconds = epoch["seconds"]
    for key in ("train_batches", "val_batches"):
        seconds -= _first_batch_excess(epoch[key])
    return round(seconds, 4)


def training_part_adjusted(epoch: dict) -> float:
    """The training part of an epoch (no validation, no end-of-epoch callbacks) without the
    one-off cost of its first batch: what a single (first) epoch tells about steady throughput."""
    return round(epoch["train_seconds"] - _first_batch_excess(epoch["train_batches"]), 4)


def _first_batch_excess(times: list) -> float:
    return max(0.0, times[0] - statistics.median(times[1:])) if len(times) >= 2 else 0.0


def _append_callback_to_every_fit(*callbacks) -> None:
    import tf_keras as keras

    original = keras.Model.fit

    def fit(self, *args, **kwargs):
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), *callbacks]
        return original(self, *args, **kwargs)

    keras.Model.fit = fit


def _timed_export(skip: bool) -> list:
    """Replaces the SavedModel export used by ``fine_tune`` with a timed (or skipped) one."""
    from tlp.components.lib import model as model_lib

    seconds: list = []
    original = model_lib.export_servable

    def export(*args, **kwargs):
        start = time.perf_counter()
        if not skip:
            original(*args, **kwargs)
        seconds.append(_since(start))

    model_lib.export_servable = export
    return seconds


# --- data -------------------------------------------------------------------------------------


@workload
def make_datasets(root: str, sets: dict, image_size: int, seed: int) -> dict:
    """Writes prepared data sets with exact split sizes (``sets``: name -> {train, val, test}),
    all drawn from one pool of the project's generated sample images, so a smaller set is a
    subset of a bigger one."""
    from tlp.components.lib.dataprep import encode, records, sources
    from tlp.components.lib.dataprep import split as content_split

    start = time.perf_counter()
    need = {split: max(counts[split] for counts in sets.values()) for split in records.SPLITS}
    pool = sources.list_sample(sum(need.values()) // 2 + 3, seed)
    items = [(source_id, label, index) for unit in pool.units for source_id, label, index in unit[2]]
    examples = [content_split.Example(source_id, label) for source_id, label, _ in items]
    numbers = {source_id: index for source_id, _, index in items}
    splits, _ = content_split.split_by_content(examples, seed)
    by_class: dict[int, list] = {}
    for members in splits.values():
        for example in members:
            by_class.setdefault(example.label, []).append(example)
    chosen, taken = {}, dict.fromkeys(by_class, 0)
    for split in records.SPLITS:
        picked = []
        for label in sorted(by_class):
            count = need[split] // 2 + (need[split] % 2 if label == 0 else 0)
            picked += by_class[label][taken[label] : taken[label] + count]
            taken[label] += count
        random.Random(f"{seed}-{split}").shuffle(picked)
        chosen[split] = [
            (encode.encode_pixels(sources.sample_pixels(e.label, (seed, e.label, numbers[e.source_id])), image_size),
             e.label, e.source_id)
            for e in picked
        ]
    generated = _since(start)
    written = {}
    for name, counts in sets.items():
        metadata = records.write_splits(
            os.path.join(root, name), pool.class_names,
            {split: chosen[split][: counts[split]] for split in records.SPLITS}, image_size, f"bench:{name}",
        )
        written[name] = metadata["num_examples"]
    return {"generate_seconds": generated, "seconds": _since(start), "sets": written}


@workload
def make_folder(root: str, count: int, size: int, seed: int) -> dict:
    """``count`` JPEG files in two class folders, like the sample data (tinted noisy background,
    circle or square), generated quickly with PIL (no TensorFlow)."""
    import numpy as np
    from PIL import Image, ImageDraw

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    noise = [rng.normal(0, 18, (size, size, 3)).astype(np.float32) for _ in range(16)]
    tints = (np.array([215.0, 115.0, 45.0]), np.array([45.0, 115.0, 215.0]))
    for name in ("circles", "squares"):
        os.makedirs(os.path.join(root, name), exist_ok=True)
    for index in range(count):
        label = index % 2
        background = 0.45 * tints[label] + rng.normal(70, 25, 3)
        pixels = np.clip(noise[index % 16] + background.astype(np.float32), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        radius = rng.uniform(size * 0.15, size * 0.35)
        cy, cx = rng.uniform(radius, size - radius, 2)
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        fill = tuple(int(v) for v in np.clip(tints[label] + rng.normal(0, 20, 3), 0, 255))
        draw = ImageDraw.Draw(image)
        (draw.ellipse if label == 0 else draw.rectangle)(box, fill=fill)
        image.save(os.path.join(root, ("circles", "squares")[label], f"{index:06d}.jpg"), quality=90)
    return {"seconds": _since(start), "files": count}


@workload
def prep(data: str, output_dir: str, image_size: int, seed: int, processes: int | None = None,
         one_core: bool = False) -> dict:
    """The data-prep step's function, ``prepare_dataset`` (``processes``: its Beam worker
    processes, 0 this process only; default every core for 1,000 images or more). ``one_core``:
    this process and its workers pinned to one core (what taskset -c 0 does). CPU seconds include
    the worker processes'."""
    import resource

    if one_core:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    from tlp.components.lib.dataprep.prepare import prepare_dataset

    start, cpu = time.perf_counter(), time.process_time()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    metadata = prepare_dataset(data, output_dir, image_size=image_size, seed=seed, processes=processes)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the pool's processes have ended and were reaped
    workers_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    return {"seconds": _since(start), "cpu_seconds": round(_cpu_since(cpu) + workers_cpu, 3),
            "workers_cpu_seconds": round(workers_cpu, 3), "workers_peak_rss_mb": round(after.ru_maxrss * 1024 / 1e6, 1),
            "num_examples": metadata["num_examples"], "files": {k: len(v) for k, v in metadata["files"].items()},
            "fingerprint": metadata["fingerprint"], "peak_rss_mb": peak_rss_mb()}


# Mixed photo sizes (width, height, share): phone and camera photos from 0.3 to 5 megapixels.
PHOTO_SIZES = ((640, 480, 0.30), (1024, 768, 0.30), (1280, 960, 0.15), (1200, 1600, 0.08), (1600, 1200, 0.08),
               (2048, 1536, 0.05), (2592, 1944, 0.04))
_PHOTO_PARTS: dict = {}  # per process: a smooth colour field and a noise tile, cropped and reused per photo


def _photo(index: int, root: str, seed: int) -> tuple[int, int]:
    return photo(index, root, seed, PHOTO_SIZES)


def photo(index: int, root: str, seed: int, photo_sizes: tuple = PHOTO_SIZES) -> tuple[int, int]:
    """One photo-like JPEG of a size drawn from ``photo_sizes`` (width, height, share): a window
    of a smooth random colour field, a warm circle or a cool square, and sensor noise; the same
    (seed, index) always gives the same photo, different indexes different ones. Returns
    (pixels, bytes)."""
    import numpy as np
    from PIL import Image, ImageChops, ImageDraw

    if not _PHOTO_PARTS:
        parts_rng = np.random.default_rng(seed)
        coarse = parts_rng.integers(40, 200, (40, 54, 3)).astype(np.uint8)
        _PHOTO_PARTS["field"] = Image.fromarray(coarse).resize((5184, 3888), Image.BILINEAR)
        _PHOTO_PARTS["noise"] = Image.effect_noise((256, 256), 5).convert("RGB")
    rng = np.random.default_rng((seed, index))
    sizes = [(w, h) for w, h, _ in photo_sizes]
    width, height = sizes[rng.choice(len(sizes), p=[share for _, _, share in photo_sizes])]
    left, top = int(rng.integers(0, 5184 - width)), int(rng.integers(0, 3888 - height))
    image = _PHOTO_PARTS["field"].crop((left, top, left + width, top + height))
    label = index % 2
    radius = rng.uniform(0.15, 0.35) * min(width, height)
    cy, cx = rng.uniform(radius, height - radius), rng.uniform(radius, width - radius)
    fill = (215, 115, 45) if label == 0 else (45, 115, 215)
    draw = ImageDraw.Draw(image)
    (draw.ellipse if label == 0 else draw.rectangle)((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    noise = Image.new("RGB", (width, height))
    for y in range(0, height, 256):
        for x in range(0, width, 256):
            noise.paste(_PHOTO_PARTS["noise"], (x, y))
    image = ImageChops.add(image, noise, 1.0, -128)  # the noise is centred on 128
    path = os.path.join(root, ("circles", "squares")[label], f"IMG_{index:05d}.jpg")
    image.save(path, quality=90)
    return width * height, os.path.getsize(path)


@workload
def make_photos(root: str, count: int, seed: int) -> dict:
    """``count`` JPEG photos of mixed sizes (PHOTO_SIZES, 0.3 to 5 megapixels) in two class
    folders, made on every core. Not timed by any benchmark."""
    import functools
    from concurrent.futures import ProcessPoolExecutor

    start = time.perf_counter()
    for name in ("circles", "squares"):
        os.makedirs(os.path.join(root, name), exist_ok=True)
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        made = list(pool.map(functools.partial(_photo, root=root, seed=seed), range(count), chunksize=16))
    pixels = [p for p, _ in made]
    return {"seconds": _since(start), "files": count, "megapixels_mean": round(sum(pixels) / len(pixels) / 1e6, 2),
            "megapixels_max": round(max(pixels) / 1e6, 2), "mb_total": round(sum(b for _, b in made) / 1e6, 1)}


@workload
def reader(dataset_dir: str, split: str, batch_size: int, passes: int, seed: int) -> dict:
    """Iterates the prepared split exactly as fine-tuning reads it (parse, decode, shuffle, batch,
    prefetch), ``passes`` times."""
    from tlp.components.lib.dataprep import records

    dataset = records.read_split(dataset_dir, split, batch_size, shuffle_seed=seed)
    runs = []
    for _ in range(passes):
        start, count = time.perf_counter(), 0
        for _batch_images, labels in dataset:
            count += int(labels.shape[0])
        runs.append({"images": count, "seconds": _since(start)})
    return {"passes": runs}


# --- calibrated random weights ----------------------------------------------------------------

CALIBRATIONS = ("gain", "channels")


@workload
def calibrate_weights(dataset_dir: str, output: str, alpha: float, image_size: int, seed: int,
                      method: str = "gain", images_count: int = 64) -> dict:
    """Calibrated random weights for the suite: MobileNetV2 without its top, random weights from
    ``seed`` (``weights=None``), then BatchNormalization moving statistics set from the first
    ``images_count`` training images of ``dataset_dir``, layer by layer in network order (each
    layer calibrated on the output of the already calibrated layers before it: a data-dependent
    initialisation, as in LSUV). Saved with ``save_weights`` to ``output`` (.h5), the format
    ``--weights FILE`` takes. The suite runs this in a child of its own; no timing includes it.

    Uncalibrated, every BatchNorm has moving mean 0 and variance 1, the random convolutions
    shrink activations block after block and the pooled features come out near 1e-12.

    ``gain`` (the default): every BatchNorm outside a residual branch gets moving mean 0 and one
    moving variance for all its channels, the mean square of its input, so its output has unit
    root-mean-square; the BatchNorms inside residual branches keep 0 / 1. Each gain is one scalar
    per layer and the branches keep their ratio to the skip connections, so the network computes
    almost the same function as uncalibrated, only rescaled: pooled features of order 1 (as with
    trained weights) that keep the class signal the uncalibrated ones have.

    ``channels``: every BatchNorm's moving mean and variance set to its input's per-channel mean
    and variance (zero mean, unit variance per channel everywhere). Also order-1 features, but
    with every residual branch as strong as its skip the random network mixes its input so much
    that little class signal survives: on the sample images neither head gets far above chance
    in 10 epochs (see bench/README.md)."""
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    from tlp.components.lib.dataprep import records

    if method not in CALIBRATIONS:
        raise ValueError(f"unknown calibration {method!r}; use one of {CALIBRATIONS}")
    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    base = keras.applications.MobileNetV2(
        input_shape=(image_size, image_size, 3), include_top=False, weights=None, alpha=alpha
    )
    batches, count = [], 0
    for batch_images, _labels in records.read_split(dataset_dir, "train", 32):
        batches.append(batch_images)
        count += int(batch_images.shape[0])
        if count >= images_count:
            break
    pixels = tf.cast(tf.concat(batches, axis=0)[:images_count], tf.float32) / 127.5 - 1.0  # as the model scales
    layers = [layer for layer in base.layers if not isinstance(layer, keras.layers.InputLayer)]
    names = {layer.name for layer in layers}
    # One forward pass in network order, each tensor kept until its last consumer has run.
    values, uses = {id(base.inputs[0]): pixels}, {}
    for layer in layers:
        for tensor in tf.nest.flatten(layer.input):
            uses[id(tensor)] = uses.get(id(tensor), 0) + 1
    calibrated = 0
    for layer in layers:
        inputs = [values[id(tensor)] for tensor in tf.nest.flatten(layer.input)]
        for tensor in tf.nest.flatten(layer.input):
            uses[id(tensor)] -= 1
            if not uses[id(tensor)]:
                del values[id(tensor)]
        if isinstance(layer, keras.layers.BatchNormalization):
            mean, variance = tf.nn.moments(inputs[0], axes=[0, 1, 2])
            block = "_".join(layer.name.split("_")[:2])  # block_N; residual blocks have a block_N_add
            if method == "channels":
                layer.moving_mean.assign(mean)
                layer.moving_variance.assign(variance)
                calibrated += 1
            elif not (block.startswith("block_") and f"{block}_add" in names):
                mean_square = tf.reduce_mean(variance + tf.square(mean))
                layer.moving_mean.assign(tf.zeros_like(mean))
                layer.moving_variance.assign(tf.fill(mean.shape, mean_square))
                calibrated += 1
        values[id(layer.output)] = layer(inputs if isinstance(layer.input, list) else inputs[0], training=False)
    pooled = tf.reduce_mean(base(pixels, training=False), axis=[1, 2]).numpy()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    base.save_weights(output)
    return {
        "seconds": _since(start), "path": output, "method": method, "seed": seed, "images": int(pixels.shape[0]),
        "batchnorm_layers": sum(isinstance(layer, keras.layers.BatchNormalization) for layer in layers),
        "batchnorm_layers_calibrated": calibrated,
        "pooled_feature_mean": round(float(np.mean(pooled)), 4),
        "pooled_feature_std_across_images": round(float(np.mean(np.std(pooled, axis=0))), 4),
    }


# --- training ---------------------------------------------------------------------------------


def _settings(**values):
    """The project's settings with these options (names as declared in settings.py)."""
    from tlp.components.lib.settings import Settings

    return Settings.from_values(values)


@workload
def train_head(dataset_dir: str, run_dir: str, alpha: float, weights: str, epochs: int, batch_size: int,
               seed: int, dropout: float | None = None) -> dict:
    """Ours: ``training.train_head`` as the feature-extraction component calls it (with a backup
    directory beside the model), end to end: build, extract features once, fit the head, save.
    ``dropout``: the head's, when not the default."""
    from tlp.components.lib import training

    start, cpu = time.perf_counter(), time.process_time()
    extra = {} if dropout is None else {"dropout": dropout}
    history = training.train_head(
        dataset_dir, os.path.join(run_dir, "model"),
        _settings(alpha=alpha, weights=weights, epochs=epochs, batch_size=batch_size, seed=seed, **extra),
        backup_dir=os.path.join(run_dir, "backup"),
    )
    return {
        "seconds": _since(start),
        "cpu_seconds": _cpu_since(cpu),
        "val_accuracy": history["val_accuracy"][-1],
        "history": history,
        "peak_rss_mb": peak_rss_mb(),
    }


@workload
def tutorial(dataset_dir: str, image_size: int, epochs: int, batch_size: int, learning_rate: float,
             dropout: float, seed: int, weights: str = "none") -> dict:
    """The tutorial's way: the frozen base inside the model, ``model.fit`` on images every epoch,
    validation every epoch. Same reader and images as ours; end to end = build + fit."""
    import tf_keras as keras

    from tlp.components.lib.dataprep import records

    start, cpu = time.perf_counter(), time.process_time()
    keras.utils.set_random_seed(seed)
    shape = (image_size, image_size, 3)
    base = keras.applications.MobileNetV2(
        input_shape=shape, include_top=False, weights="imagenet" if weights == "imagenet" else None
    )
    if weights not in ("imagenet", "none"):
        base.load_weights(weights)  # a .h5 file of the base without its top
    base.trainable = False
    inputs = keras.Input(shape=shape)
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(dropout)(x)
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=learning_rate),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")],
    )
    train = records.read_split(dataset_dir, "train", batch_size, shuffle_seed=seed)
    val = records.read_split(dataset_dir, "val", batch_size)
    timer = make_epoch_timer()
    history = model.fit(train, validation_data=val, epochs=epochs, verbose=2, callbacks=[timer])
    return {
        "seconds": _since(start),
        "cpu_seconds": _cpu_since(cpu),
        "val_accuracy": float(history.history["val_accuracy"][-1]),
        "history": {key: [float(v) for v in values] for key, values in history.history.items()},
        "epochs": [{k: v for k, v in e.items() if not k.endswith("_batches")} for e in timer.epochs],
        "peak_rss_mb": peak_rss_mb(),
    }


@workload
def fine_tune_plain(dataset_dir: str, model_in: str, epochs: int, batch_size: int, seed: int, fine_tune_at: int,
                    learning_rate: float, lockstep: dict | None = None) -> dict:
    """Baseline: the same model (the same feature-extraction output, unfrozen from the same layer,
    same optimizer) trained by a plain ``model.fit`` on in-memory tensors of the same images
    (epochs taken in turn with ``fine_tune_ours`` when given a ``lockstep``)."""
    import numpy as np
    import tf_keras as keras

    from tlp.components.lib import model as model_lib
    from tlp.components.lib.dataprep import records

    def load(split):
        xs, ys = [], []
        for batch_images, labels in records.read_split(dataset_dir, split, 256):
            xs.append(batch_images.numpy())
            ys.append(labels.numpy())
        return np.concatenate(xs), np.concatenate(ys)

    train_x, train_y = load("train")
    val_x, val_y = load("val")
    keras.utils.set_random_seed(seed)
    model = model_lib.load_keras(model_in)
    num_classes = len(model_lib.read_info(model_in)["class_names"])
    model_lib.unfreeze(model, fine_tune_at, learning_rate / 10, num_classes)
    timer, callbacks, result = _paired_epoch_timing(lockstep)
    model.fit(
        train_x, train_y, batch_size=batch_size, epochs=epochs, validation_data=(val_x, val_y), shuffle=True,
        verbose=2, callbacks=callbacks,
    )
    return result()


def _paired_epoch_timing(lockstep):
    """The epoch timer of one side of a paired run, its callbacks, and a ``result()`` that reports
    it; in lockstep the process also ends as soon as training ends."""
    turns = Lockstep(lockstep) if lockstep else None
    timer = make_epoch_timer(batches=True, lockstep=turns)
    start = time.perf_counter()

    def result():
        return {"seconds": _since(start), "waited_seconds": round(turns.waited, 3) if turns else 0.0,
                "epochs": timer.epochs, "peak_rss_mb": peak_rss_mb()}

    return timer, ([timer, _end_process_callback(result)] if turns else [timer]), result


def _end_process_callback(result):
    """A callback whose ``on_train_end`` finishes the workload with ``result()`` and ends the
    process at once (``end_process``). For the lockstep pair: once its epochs are recorded a side
    has nothing left to measure, and after the idle turns tf.data's teardown at the end of
    ``fit`` sometimes stalls for several seconds (no CPU used), which only lengthens the run."""
    import tf_keras as keras

    class EndProcess(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            end_process(result())

    return EndProcess()


@workload
def fine_tune_ours(dataset_dir: str, model_in: str, run_dir: str, epochs: int, batch_size: int, seed: int,
                   fine_tune_at: int, learning_rate: float, lockstep: dict | None = None) -> dict:
    """Ours: ``training.fine_tune`` as the fine-tuning component calls it (backup directory:
    per-epoch BackupAndRestore checkpoints, NaN guard, CSV history; streaming reader) from the
    feature-extraction model ``model_in``, with an epoch timer appended to its ``fit``
    (epochs taken in turn with ``fine_tune_plain`` when given a ``lockstep``). What follows the
    last epoch is not measured: the SavedModel export is skipped, and in lockstep the process
    ends as soon as training ends (before ``fine_tune`` reads its history and removes its backup)."""
    from tlp.components.lib import training

    timer, callbacks, result = _paired_epoch_timing(lockstep)
    _append_callback_to_every_fit(*callbacks)
    _timed_export(skip=True)
    training.fine_tune(
        dataset_dir, model_in, os.path.join(run_dir, "tuned"),
        _settings(fine_tune_at=fine_tune_at, fine_tune_epochs=epochs, learning_rate=learning_rate,
                  batch_size=batch_size, seed=seed, no_cut_cache=True),  # this benchmark is about the path on images
        backup_dir=os.path.join(run_dir, "backup"),
    )
    return result()


@workload
def head_then_tune(dataset_dir: str, run_dir: str, alpha: float, weights: str, head_epochs: int, tune_epochs: int,
                   batch_size: int, seed: int, fine_tune_at: int, learning_rate: float, export: bool = False) -> dict:
    """``train_head`` as the feature-extraction component calls it (timed; peak RSS read when it
    returns), then optionally ``fine_tune`` as the fine-tuning component calls it (backup
    directory: per-epoch checkpoints, NaN guard, CSV history) for ``tune_epochs``, with an epoch
    timer; its SavedModel export is timed, or skipped when not ``export`` (it is in no epoch)."""
    from tlp.components.lib import training

    start, cpu = time.perf_counter(), time.process_time()
    training.train_head(
        dataset_dir, os.path.join(run_dir, "head"),
        _settings(alpha=alpha, weights=weights, epochs=head_epochs, batch_size=batch_size, seed=seed),
        backup_dir=os.path.join(run_dir, "head-backup"),
    )
    result = {"head_seconds": _since(start), "head_cpu_seconds": _cpu_since(cpu), "head_peak_rss_mb": peak_rss_mb()}
    if tune_epochs:
        timer = make_epoch_timer(batches=True)
        _append_callback_to_every_fit(timer)
        export_seconds = _timed_export(skip=not export)
        start = time.perf_counter()
        training.fine_tune(
            dataset_dir, os.path.join(run_dir, "head"), os.path.join(run_dir, "tuned"),
            _settings(fine_tune_at=fine_tune_at, fine_tune_epochs=tune_epochs, learning_rate=learning_rate,
                      batch_size=batch_size, seed=seed, no_cut_cache=True),  # the path on images
            backup_dir=os.path.join(run_dir, "tune-backup"),
        )
        result["tune_seconds"] = _since(start)
        result["tune_epochs"] = timer.epochs
        result["exported"] = export
        result["export_seconds"] = export_seconds[0] if export_seconds else None
    return result


@workload
def fine_tune_phase(dataset_dir: str, model_in: str, run_dir: str, epochs: int, batch_size: int, seed: int,
                    fine_tune_at: int, learning_rate: float, cut_cache: bool, weights_out: str | None = None,
                    devices: str = "auto", tf_config: dict | None = None, count_records: bool = False) -> dict:
    """The whole fine-tuning phase as the component runs it (``training.fine_tune``: load the
    feature-extraction model, unfreeze, build the cut cache when ``cut_cache``, ``epochs``
    epochs with per-epoch checkpoints), timed from the call to the end of the last epoch. The
    SavedModel export that follows is replaced by saving the trained weights to ``weights_out``
    (.npz, untimed) for the equivalence check.

    ``tf_config``: this process is one worker of a MultiWorkerMirroredStrategy cluster (the
    ``TF_CONFIG`` Vertex AI sets). ``count_records``: also return a digest of every TFRecord
    record this process read (the distribution tests' counter)."""
    import numpy as np
    import tf_keras as keras

    from tlp.components.lib import model as model_lib
    from tlp.components.lib import training

    if tf_config is not None:
        os.environ["TF_CONFIG"] = json.dumps(tf_config)
    records: list = []
    if count_records:
        from tests.faults.cut_cache_worker import count_records as note_every_record

        note_every_record(records)
    marks: dict = {}

    class Marks(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            marks["train_begin"] = time.perf_counter()

        def on_train_end(self, logs=None):
            marks["train_end"], marks["train_end_cpu"] = time.perf_counter(), time.process_time()

    timer = make_epoch_timer()
    _append_callback_to_every_fit(timer, Marks())

    def save_weights(model, *args, **kwargs):
        # Every worker reads the weights: under MultiWorkerMirroredStrategy reading a synced
        # variable is a collective op that all workers join.
        weights = {f"{i:04d} {w.name}": w.numpy() for i, w in enumerate(model.weights)}
        if weights_out:
            os.makedirs(os.path.dirname(weights_out), exist_ok=True)
            np.savez(weights_out, **weights)

    model_lib.export_servable = save_weights
    start, cpu = time.perf_counter(), time.process_time()
    history, replicas = training.fine_tune(
        dataset_dir, model_in, os.path.join(run_dir, "tuned"),
        _settings(fine_tune_at=fine_tune_at, fine_tune_epochs=epochs, learning_rate=learning_rate,
                  batch_size=batch_size, seed=seed, no_cut_cache=not cut_cache, devices=devices),
        backup_dir=os.path.join(run_dir, "backup"),
    )
    return {
        "records": records,
        "seconds": round(marks["train_end"] - start, 3), "cpu_seconds": round(marks["train_end_cpu"] - cpu, 3),
        "setup_seconds": round(marks["train_begin"] - start, 3),
        "epochs": [{k: v for k, v in e.items() if not k.endswith("_batches")} for e in timer.epochs],
        "history": history, "val_accuracy": history["val_accuracy"][-1], "replicas": replicas,
        "peak_rss_mb": peak_rss_mb(),
    }


@workload
def weights_difference(first: str, second: str, model_in: str) -> dict:
    """How far apart two trained weight sets (.npz from ``fine_tune_phase``) are, and how far
    training moved them from the starting model ``model_in``."""
    import numpy as np

    from tlp.components.lib import model as model_lib

    a, b = np.load(first), np.load(second)
    start = [w.numpy() for w in model_lib.load_keras(model_in).weights]
    keys = sorted(a.files)
    difference = max(float(np.max(np.abs(a[k] - b[k]))) for k in keys)
    moved = max(float(np.max(np.abs(a[k] - w))) for k, w in zip(keys, start, strict=True))
    relative = max(float(np.linalg.norm(a[k] - b[k]) / max(np.linalg.norm(a[k] - w), 1e-30))
                   for k, w in zip(keys, start, strict=True) if np.any(a[k] != w))
    return {"max_abs_difference": difference, "max_abs_moved": moved, "max_relative_difference": relative,
            "tensors": len(keys)}


# --- the pipeline's functions in one process -------------------------------------------------


@workload
def direct_pipeline(work_dir: str, steps: list, data: str, alpha: float, weights: str, image_size: int,
                    epochs: int, fine_tune_epochs: int, max_gap: float, min_accuracy: float, seed: int) -> dict:
    """The component core functions called directly, in one process, on the settings ``tlp run``
    gets; each step timed (imports happen lazily, inside the first step that needs them)."""
    seconds = {}

    def task(name):
        return os.path.join(work_dir, name)

    dataset = os.path.join(task("data-prep"), "dataset")
    start = time.perf_counter()
    from tlp.components.lib.dataprep import prepare

    prepare.prepare_dataset(data, dataset, image_size=image_size, seed=seed)
    seconds["data-prep"] = _since(start)
    if "feature-extraction" in steps:
        start = time.perf_counter()
        from tlp.components.lib import training

        history = training.train_head(
            dataset, os.path.join(task("feature-extraction"), "model"),
            _settings(alpha=alpha, weights=weights, epochs=epochs, seed=seed),
            backup_dir=os.path.join(task("feature-extraction"), "backup"),
        )
        training.save_history(history, os.path.join(task("feature-extraction"), "history"))
        seconds["feature-extraction"] = _since(start)
    if "fine-tuning" in steps:
        start = time.perf_counter()
        from tlp.components.lib import training

        history, _replicas = training.fine_tune(
            dataset, os.path.join(task("feature-extraction"), "model"), os.path.join(task("fine-tuning"), "model"),
            _settings(fine_tune_epochs=fine_tune_epochs, seed=seed),
            backup_dir=os.path.join(task("fine-tuning"), "backup"),
        )
        training.save_history(history, os.path.join(task("fine-tuning"), "history"))
        seconds["fine-tuning"] = _since(start)
    if "evaluation" in steps:
        start = time.perf_counter()
        from tlp.components.lib.evaluation import evaluate_and_report

        outcome = evaluate_and_report(
            os.path.join(task("fine-tuning"), "model"), dataset, os.path.join(task("feature-extraction"), "history"),
            os.path.join(task("fine-tuning"), "history"), os.path.join(work_dir, "report.html"),
            _settings(max_gap=max_gap, min_accuracy=min_accuracy),
        )
        seconds["evaluation"] = _since(start)
    if "registration" in steps and outcome["passed"]:
        start = time.perf_counter()
        from tlp.components.lib.registration import register_model

        register_model(
            os.path.join(task("fine-tuning"), "model"), dataset, outcome["flat_metrics"],
            "sqlite:///" + os.path.join(work_dir, "registry.db"),
        )
        seconds["registration"] = _since(start)
    return {"steps": seconds, "peak_rss_mb": peak_rss_mb()}


# --- child entry points -----------------------------------------------------------------------

PRELOAD = ("numpy", "PIL.Image", "tensorflow", "tf_keras", "tlp.components.lib.dataprep.prepare",
           "tlp.components.lib.model", "tlp.components.lib.training")


_RUNNING: dict = {}  # the workload this process runs: its result file and start time


def main(argv: list[str] | None = None) -> int:
    """Runs one workload: ``NAME ARGS_JSON RESULT_JSON``; ``--serve`` starts the fork server."""
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--serve"]:
        return serve()
    name, args_json, result_path = argv
    _RUNNING.update(result_path=result_path, start=time.perf_counter())
    if name != "direct_pipeline":  # import as the fork server does, so no workload times an import
        _preload()
    try:
        payload = {"ok": True, "result": WORKLOADS[name](**json.loads(args_json))}
    except BaseException as error:  # report any failure to the parent, with its traceback
        payload = {"ok": False, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    _write_result(payload)
    return 0 if payload["ok"] else 1


def end_process(result: dict) -> None:
    """Finishes the running workload with ``result`` (written as ``main`` writes it) and ends
    the process immediately, skipping whatever the workload had left to do."""
    _write_result({"ok": True, "result": result, "ended_early": True})
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _write_result(payload: dict) -> None:
    payload["child_seconds"] = round(time.perf_counter() - _RUNNING["start"], 3)
    payload["vm_hwm_mb"] = peak_rss_mb()
    with open(_RUNNING["result_path"], "w") as handle:
        json.dump(payload, handle, default=str)


def serve() -> int:
    """The fork server: imports TensorFlow, tf_keras and the project's libraries once (no
    TensorFlow runtime is started), then for each request read from stdin (one JSON line:
    workload, args, result, log, timeout) forks a child that runs the workload with its output
    sent to the log, waits for it with ``wait4`` and answers one JSON line (exit code, wall
    seconds, the child's own peak RSS). Each workload still runs in a process of its own,
    without paying the ~6 s import of TensorFlow again. A request with ``jobs`` (a list of such
    workload/args/result/log) forks one child per job, all running at once, and answers
    ``{"runs": [...]}`` when all have ended."""
    start = time.monotonic()
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything a library prints goes to the log, not into the replies
    _preload()
    ready = {"ready": True, "preload_seconds": round(time.monotonic() - start, 2), "rss_mb": _rss_mb()}
    replies.write(json.dumps(ready) + "\n")
    replies.flush()
    for line in sys.stdin:
        request = json.loads(line)
        runs = _fork_and_wait(request.get("jobs") or [request], request["timeout"])
        reply = {"runs": runs} if "jobs" in request else runs[0]
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
    return 0


def _fork_and_wait(jobs: list, timeout: float) -> list:
    """Forks one child per job (each runs ``main`` on its workload, output to its log), waits for
    all with ``wait4``; returns each child's exit code, wall seconds, peak RSS and CPU seconds."""
    import signal

    start = time.monotonic()
    sys.stdout.flush()
    sys.stderr.flush()
    pids = []
    for job in jobs:
        pid = os.fork()
        if pid == 0:  # the child: never returns into the server's loop
            code = 1
            try:
                log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.close(log)
                code = main([job["workload"], json.dumps(job["args"]), job["result"]])
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    runs: dict[int, dict] = {}
    killed = False
    while len(runs) < len(pids):
        for pid in pids:
            if pid in runs:
                continue
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                runs[pid] = {
                    "exit_code": os.waitstatus_to_exitcode(status),
                    "wall_seconds": round(time.monotonic() - start, 2),
                    "peak_rss_mb": round(usage.ru_maxrss * 1024 / 1e6, 1), "timed_out": killed,
                    "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
                }
        if not killed and time.monotonic() - start > timeout:
            for pid in pids:
                if pid not in runs:
                    os.kill(pid, signal.SIGKILL)  # a child this server forked
            killed = True
        time.sleep(0.05)
    return [runs[pid] for pid in pids]


def _preload() -> None:
    import importlib

    for module in PRELOAD:
        importlib.import_module(module)


def _rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) * 1024 / 1e6, 1)
    return 0.0


if __name__ == "__main__":
    sys.exit(main())
