"""The two training phases of the tutorial, as plain functions.

Phase 1, feature extraction: the base is frozen and runs in inference mode with no data
augmentation, so each image's pooled features never change. We compute them once and train
the head on the cached features: the same model and result as the tutorial's ``model.fit``
on images, at a fraction of the cost (the base runs once per image instead of once per image
per epoch). With ``--augment`` each epoch shows the base different images, so then the whole
model (base frozen) trains on the augmented images, as in the tutorial, at the tutorial's cost.

Phase 2, fine-tuning: the top of the base is unfrozen and the whole model trains on images,
under the strategy from ``strategy.make_strategy``, with a tenth of the learning rate.

Both phases write TensorBoard logs (per-epoch scalars; fine-tuning's epoch numbers continue
phase 1's) to the directory ``tensorboard_dir`` chooses.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import typing

import numpy as np

from tlp.components.lib import augment, drift, feature_store, passes, specs
from tlp.components.lib import cut_cache as cut_cache_lib
from tlp.components.lib import model as model_lib
from tlp.components.lib.dataprep import records
from tlp.components.lib.settings import Settings
from tlp.components.lib.strategy import cluster_spec, cluster_workers, is_chief, make_strategy

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
# Fine-tuning keeps decoded images in memory up to this size (20k images at 160 px: 1.5 GB).
DECODED_CACHE_BYTES = 1 << 30


class TrainingDivergedError(specs.ServiceError):
    """The loss became NaN or infinite."""


def extract_features(
    backbone, dataset_dir: str, split: str, batch_size: int, label: str = "", xla: bool = False, strategy=None,
):
    """Runs the frozen backbone over one split once, divided over ``strategy``'s replicas (built
    under its scope) when it has several (``passes.run_pass``). Returns (features [N, D] float32,
    labels [N]) in record order."""
    import tensorflow as tf

    scored = passes.run_pass(
        lambda batch: tf.cast(backbone(batch, training=False), tf.float32), dataset_dir, split, batch_size,
        strategy=strategy, label=label, what="features", jit_compile=xla or None,
    )
    return scored.outputs, scored.labels


def train_head(
    dataset_dir: str, model_dir: str, settings: Settings, *, backup_dir: str | None = None,
    tensorboard_dir: str | None = None, features_dir: str | None = None,
) -> dict:
    """Phase 1: frozen base, train the head. Saves the full model to ``model_dir``.

    ``runtime.mixed_precision`` and ``runtime.xla`` are GPU speed-ups; the feature extraction
    runs the base under the policy (XLA-compiled if asked).

    With ``backup_dir``, the extracted features and each finished epoch are kept there, so a
    restarted (preempted) run skips the extraction and resumes after the last finished epoch.
    With ``tensorboard_dir``, per-epoch scalars go there as TensorBoard logs. With
    ``features_dir``, the extracted features are kept there instead and outlive the call (a
    tuned run trains several heads on one extraction).
    Returns the training history (per epoch: loss, accuracy, val_loss, val_accuracy).
    """
    # First: logical devices (--devices cpu:N) must be set before TensorFlow starts.
    strategy = make_strategy(settings.runtime.devices)
    keras = model_lib.keras()
    metadata = records.read_metadata(dataset_dir)
    chosen, runtime = settings.model, settings.runtime
    weights = specs.parse_weights_spec(chosen.weights)
    specs.check_base(chosen.base, chosen.alpha, metadata["image_size"], weights)
    specs.check_precision(runtime.mixed_precision, weights)
    keras.utils.set_random_seed(settings.training.seed)
    chief = is_chief()
    # Other workers of a multi-machine job take part in the features' pass, then train the same
    # head from the same features and keep it apart: only the chief writes the model and backup.
    target = model_dir if chief else tempfile.mkdtemp(prefix="tlp-head-")
    with model_lib.precision_policy(runtime.mixed_precision):
        history = _train_head_under_policy(
            dataset_dir, target, metadata, settings, weights, backup_dir, tensorboard_dir, features_dir,
            strategy=strategy,
        )
    if not chief:
        shutil.rmtree(target, ignore_errors=True)
    _discard_backup(backup_dir)  # the saved model now holds everything the backup did
    return history


def _train_head_under_policy(
    dataset_dir, model_dir, metadata, settings: Settings, weights: str, backup_dir, tensorboard_dir,
    features_dir=None, strategy=None,
):
    chosen, training, runtime = settings.model, settings.training, settings.runtime
    class_names = metadata["class_names"]
    backbone = model_lib.build_backbone(chosen.base, chosen.alpha, metadata["image_size"], weights)
    scorer = backbone
    if passes.is_divided(strategy):
        # The pass runs a copy whose weights are mirrored on every replica; the head trains on the
        # plain backbone (no strategy), which gets the same weights.
        with strategy.scope():
            scorer = model_lib.build_backbone(chosen.base, chosen.alpha, metadata["image_size"], weights)
        scorer.set_weights(backbone.get_weights())
    # With augmentation the head trains on images; the features then only give the standardization.
    splits = ("train",) if training.augment else ("train", "val")
    # The features stream to files (feature_store.py), never all in memory: kept in features_dir or
    # backup_dir (written by the chief) for a restart or the next head, else in a directory of this call.
    kept = features_dir or backup_dir
    private = tempfile.mkdtemp(prefix="tlp-features-")
    features = _cached_features(
        scorer, dataset_dir, splits, training.batch_size, runtime.xla, kept,
        kept if kept and is_chief() else private, strategy=strategy,
    )
    try:
        model = model_lib.build_model(
            backbone, len(class_names), settings.head.dropout, *features["train"].mean_and_var()
        )
        _fit_head(model, features, dataset_dir, settings, backup_dir, tensorboard_dir)
    finally:
        for stored in features.values():
            stored.close()
        shutil.rmtree(private, ignore_errors=True)
    history = _history("head", phase="feature_extraction")
    info = {
        "image_size": metadata["image_size"],
        "class_names": class_names,
        "epochs_done": training.epochs,
        "phase": "feature_extraction",
        # What this step was given, for fine-tuning's checks and the registry's lineage.
        "options": {**settings.lineage(), "weights": weights},
    }
    model_lib.save_keras(model, model_dir, info)
    return history


def _fit_head(model, features: dict, dataset_dir: str, settings: Settings, backup_dir, tensorboard_dir) -> None:
    """Trains the head of ``model`` on the stored features (or, with augmentation, the whole model
    with its base frozen on the images)."""
    training, runtime = settings.training, settings.runtime
    class_count = len(records.read_metadata(dataset_dir)["class_names"])
    callbacks = _callbacks(backup_dir if is_chief() else None, "head", tensorboard_dir)
    compile_options: dict[str, typing.Any] = {
        "jit_compile": runtime.xla, "steps_per_execution": runtime.steps_per_execution,
    }
    if training.augment:
        print(f"  augmentation: {training.augment} on the training images; the frozen base runs on them every "
              "epoch (the tutorial's cost: no cached features)", flush=True)
        model_lib.compile_model(model, training.learning_rate, class_count, **compile_options)
        train = records.read_split(dataset_dir, "train", training.batch_size, shuffle_seed=training.seed)
        model.fit(
            augment.apply(train, training.augment, training.seed),
            validation_data=records.read_split(dataset_dir, "val", training.batch_size),
            epochs=training.epochs,
            verbose=2,
            callbacks=callbacks,
        )
        return
    head = model_lib.head(model)
    model_lib.compile_model(head, training.learning_rate, class_count, **compile_options)
    # The batches head.fit(train_x, train_y, shuffle=True) would make from in-memory arrays.
    train, steps = feature_store.head_dataset(features["train"], training.batch_size, epochs=training.epochs,
                                              shuffle=True)
    val, val_steps = feature_store.head_dataset(features["val"], training.batch_size, epochs=1, shuffle=False)
    head.fit(
        train,
        steps_per_epoch=steps,
        validation_data=val,
        validation_steps=val_steps,  # a file-backed dataset has no known size: steps_per_execution > 1 needs it
        epochs=training.epochs,
        verbose=2,
        callbacks=callbacks,
    )


def features_path(directory: str, split: str) -> str:
    return os.path.join(directory, f"{split}_features.npy")


def _cached_features(
    backbone, dataset_dir: str, splits: tuple, batch_size: int, xla: bool, kept: str | None, directory: str,
    strategy=None,
) -> dict:
    """split -> FeatureFile: the backbone's pooled features, run once (divided over ``strategy``'s
    replicas) and written batch by batch to ``directory`` (local disk). A finished file found in
    ``kept`` (a restarted step, or the next head of a tuned run) is reused; every worker of a job
    finds the same files there, so all skip the extraction or none does."""
    import tensorflow as tf

    os.makedirs(directory, exist_ok=True)
    found = {}
    for split in splits:
        reusable = features_path(kept, split) if kept else None
        if reusable and os.path.isfile(reusable):
            found[split] = feature_store.FeatureFile(reusable)
            print(f"  features: reused {found[split].rows} cached feature vectors from {reusable}", flush=True)
            continue
        path = features_path(directory, split)
        total = records.read_metadata(dataset_dir)["num_examples"][split]
        writer = feature_store.FeatureWriter(path, total)
        try:
            scored = passes.run_pass(
                lambda batch: tf.cast(backbone(batch, training=False), tf.float32), dataset_dir, split, batch_size,
                strategy=strategy, what="features", jit_compile=xla or None, sink=writer.add,
            )
            writer.finish(dim=int(np.prod(scored.outputs.shape[1:])))
        finally:
            writer.close()
        found[split] = feature_store.FeatureFile(path)
    return found


def fine_tune(
    dataset_dir: str, model_in_dir: str, model_out_dir: str, settings: Settings, *, backup_dir: str | None = None,
    tensorboard_dir: str | None = None,
) -> tuple[dict, int]:
    """Phase 2: unfreeze the base from ``fine_tune_at``, train at ``learning_rate / 10``.

    ``training.learning_rate`` is the base learning rate of phase 1, as in the tutorial.
    ``training.batch_size`` is per replica; the global batch is ``batch_size x replicas``. Epoch
    numbers continue from phase 1 (in the TensorBoard logs written to ``tensorboard_dir`` too).
    ``training.augment`` augments the training images. Writes a servable SavedModel to
    ``model_out_dir``. Returns (history, replicas). ``runtime.mixed_precision`` must be the one phase 1 used (the saved
    layers carry their policy).
    ``fine_tuning.no_cut_cache`` off (the default), the layers above the cut train on their cached
    inputs (cut_cache.py); on, the whole model runs on images every epoch.
    """
    import tensorflow as tf

    tuning, training, runtime = settings.fine_tuning, settings.training, settings.runtime
    strategy = make_strategy(runtime.devices)  # first: logical devices must be set before TF starts
    keras = model_lib.keras()
    metadata = records.read_metadata(dataset_dir)
    info = model_lib.read_info(model_in_dir)
    trained_with = info.get("options", {})
    specs.check_precision(runtime.mixed_precision, trained_with.get("weights", ""))
    if trained_with.get("mixed_precision", "float32") != runtime.mixed_precision:
        raise specs.ConfigError(
            f"--mixed-precision {runtime.mixed_precision} differs from the {trained_with.get('mixed_precision')} "
            "the feature-extraction phase used; use the same for both phases."
        )
    class_names = info["class_names"]
    replicas = strategy.num_replicas_in_sync
    keras.utils.set_random_seed(training.seed)
    fine_tune_lr = training.learning_rate / 10

    with strategy.scope(), model_lib.precision_policy(runtime.mixed_precision):
        model = model_lib.load_keras(model_in_dir)
        model_lib.unfreeze(
            model, tuning.fine_tune_at, fine_tune_lr, len(class_names),
            jit_compile=runtime.xla, steps_per_execution=runtime.steps_per_execution,
        )
    first_epoch = info["epochs_done"]
    history = {"epoch": [], "phase": "fine_tuning", **{key: [] for key in HISTORY_KEYS}}
    if tuning.fine_tune_epochs > 0:
        global_batch = training.batch_size * replicas
        print(
            f"  fine-tuning from layer {tuning.fine_tune_at}: {replicas} replica(s) in sync, "
            f"global batch {global_batch}, lr {fine_tune_lr:g}",
            flush=True,
        )
        # TFRecords have no known length; with several steps per execution Keras needs the
        # step counts, so the training stream repeats and each epoch is counted in batches.
        counted = runtime.steps_per_execution > 1
        steps = {
            "steps_per_epoch": math.ceil(metadata["num_examples"]["train"] / global_batch),
            "validation_steps": math.ceil(metadata["num_examples"]["val"] / global_batch),
        } if counted else {}
        size = metadata["image_size"]
        fits = (metadata["num_examples"]["train"] + metadata["num_examples"]["val"]) * size * size * 3
        cache = fits <= DECODED_CACHE_BYTES  # decoded uint8 images; beyond that, decode each epoch
        train = records.read_split(
            dataset_dir, "train", global_batch, shuffle_seed=training.seed, repeat=counted, cache_decoded=cache
        )
        val = records.read_split(dataset_dir, "val", global_batch, cache_decoded=cache)
        options = tf.data.Options()
        # FILE (each worker reads its own shard files) when there are enough shards, else DATA.
        options.experimental_distribute.auto_shard_policy = records.auto_shard_policy(
            metadata, cluster_workers(cluster_spec())
        )
        train = augment.apply(train, training.augment, training.seed)
        train, val = train.with_options(options), val.with_options(options)
        if replicas == 1 and tf.config.list_logical_devices("GPU"):
            # One GPU, no distribution: stage the next batches on the GPU while it computes.
            train = train.apply(tf.data.experimental.prefetch_to_device("/gpu:0"))
        # --- cut cache (issue 15), the one call site: trains the layers above the cut on their cached
        # inputs (same batches, same order, same weights as the model.fit below); False when the
        # model cannot be cut, and then nothing was trained.
        # Augmented images change every epoch: nothing below the cut can be cached then.
        trained_from_cut = not (tuning.no_cut_cache or training.augment) and cut_cache_lib.fit_from_cut(
            model, fine_tune_at=tuning.fine_tune_at, dataset_dir=dataset_dir, batch_size=global_batch,
            seed=training.seed, initial_epoch=first_epoch, epochs=first_epoch + tuning.fine_tune_epochs,
            callbacks=_callbacks(backup_dir, "fine_tune", tensorboard_dir), strategy=strategy,
            shard_policy=options.experimental_distribute.auto_shard_policy, repeat=counted, **steps,
        )
        if not trained_from_cut:
            model.fit(
                train,
                validation_data=val,
                initial_epoch=first_epoch,
                epochs=first_epoch + tuning.fine_tune_epochs,
                verbose=2,
                callbacks=_callbacks(backup_dir, "fine_tune", tensorboard_dir),
                **steps,
            )
        # --- end cut cache ---
        history = _history("fine_tune", phase="fine_tuning")
    info = {
        **info,
        "options": {**trained_with, **settings.lineage()},
        "fine_tune_learning_rate": fine_tune_lr,
        "epochs_done": first_epoch + tuning.fine_tune_epochs,
        "replicas": replicas,
        "phase": "fine_tuning",
        "data_fingerprint": metadata.get("fingerprint"),
    }
    target = model_out_dir if is_chief() else tempfile.mkdtemp()
    model_lib.export_servable(model, target, class_names, info["image_size"], info)
    write_drift_reference(model, dataset_dir, target, training.batch_size, training.seed)
    if target != model_out_dir:  # non-chief workers write a throwaway copy (collective ops)
        shutil.rmtree(target, ignore_errors=True)
    _discard_backup(backup_dir)
    return history, replicas


def write_drift_reference(model, dataset_dir: str, model_dir: str, batch_size: int, seed: int) -> int:
    """The fine-tuned network's pooled features of at most ``drift.MAX_REFERENCE`` training photos (a
    seeded sample), stored in ``model_dir`` so that they travel with the model into the registry: what
    ``tlp drift``, the data checks and the server compare new photos with. Returns the count."""
    import tensorflow as tf

    keras = model_lib.keras()
    features_model = keras.Model(model.input, model.get_layer("pooled_features").output)
    metadata = records.read_metadata(dataset_dir)
    size, total = metadata["image_size"], metadata["num_examples"]["train"]
    # One trace for every count of sampled photos in a batch: a trace per count (up to the batch size)
    # took 10-20 MB each and made the step's peak grow with the data set (issue 29.5).
    run = tf.function(lambda batch: tf.cast(features_model(batch, training=False), tf.float32),
                      input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)])
    wanted = drift.sample_indices(total, drift.MAX_REFERENCE, seed)
    keep = np.zeros(total, dtype=bool)
    keep[wanted] = True
    features, ids, position = [], [], 0
    # Each kept photo's content id: the hash of the JPEG the model's features were computed from.
    photos = [drift.content_id(image) for i, (image, _) in
              enumerate(records.read_stored_images(dataset_dir, "train")) if keep[i]]
    for batch_images, _labels, source_ids in records.read_split(dataset_dir, "train", batch_size, with_source_ids=True):
        rows = np.flatnonzero(keep[position:position + len(source_ids)])
        position += len(source_ids)
        if len(rows):
            features.append(run(tf.gather(batch_images, rows)).numpy())
            ids.extend(source_ids.numpy()[rows].astype(str).tolist())
    drift.save_reference(model_dir, np.concatenate(features), ids, photos)
    print(f"  drift reference: pooled features of {len(ids)} training photos -> {drift.REFERENCE_FILE}", flush=True)
    return len(ids)


def save_history(history: dict, path: str) -> None:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "w") as handle:
        json.dump(history, handle, indent=2)


def load_history(path: str) -> dict:
    import tensorflow as tf

    with tf.io.gfile.GFile(path) as handle:
        return json.load(handle)


def tensorboard_dir(default: str) -> str:
    """Where a training step writes its TensorBoard logs: the directory Vertex AI names in
    ``AIP_TENSORBOARD_LOG_DIR`` when the step runs as a custom job with a TensorBoard attached
    (Vertex AI uploads from there to the TensorBoard instance), else ``default``."""
    return os.environ.get("AIP_TENSORBOARD_LOG_DIR") or default


def _callbacks(backup_dir: str | None, phase: str, tensorboard_dir: str | None = None) -> list:
    """NaN guard, per-epoch history log, (with a backup dir) preemption recovery:
    BackupAndRestore checkpoints each finished epoch and a restart resumes after it, and (with a
    TensorBoard dir, on the chief) per-epoch TensorBoard scalars."""
    keras = model_lib.keras()
    chief = is_chief()
    if not chief:
        tensorboard_dir = None  # one writer: the chief
    # The history log sits beside the checkpoints so that a restart keeps the epochs before it;
    # other workers keep theirs apart (nobody reads them after the step).
    directory = backup_dir if backup_dir and chief else tempfile.mkdtemp(prefix="tlp-history-")
    os.makedirs(directory, exist_ok=True)
    _HISTORY_DIRS[phase] = directory
    callbacks = [_RaiseOnNaN(), keras.callbacks.CSVLogger(os.path.join(directory, f"{phase}.csv"), append=True)]
    if backup_dir:
        # The same directory on every worker: Keras has the chief write it and every worker
        # restore from it, so that all resume at the same epoch.
        callbacks.append(keras.callbacks.BackupAndRestore(os.path.join(backup_dir, phase)))
    if tensorboard_dir:
        # Scalars per epoch only: no graph of the whole base, no profiler.
        callbacks.append(keras.callbacks.TensorBoard(
            tensorboard_dir, histogram_freq=0, write_graph=False, update_freq="epoch", profile_batch=0
        ))
    return callbacks


_HISTORY_DIRS: dict[str, str] = {}


def _discard_backup(backup_dir: str | None) -> None:
    if backup_dir and is_chief():
        shutil.rmtree(backup_dir, ignore_errors=True)


def _history(phase_key: str, phase: str) -> dict:
    """The whole phase's history from the per-epoch CSV log, including epochs finished before
    a restart (Keras' own History object only knows the epochs of the last call)."""
    import csv

    path = os.path.join(_HISTORY_DIRS[phase_key], f"{phase_key}.csv")
    by_epoch: dict[int, dict] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            by_epoch[int(row["epoch"]) + 1] = row  # a re-run epoch replaces its earlier row
    epochs = sorted(by_epoch)
    return {
        "epoch": epochs,
        "phase": phase,
        **{key: [float(by_epoch[e][key]) for e in epochs if key in by_epoch[e]] for key in HISTORY_KEYS},
    }


class _RaiseOnNaN:
    """Stops training with an error (not silently, as TerminateOnNaN does) on a NaN/inf loss."""

    def __new__(cls):
        keras = model_lib.keras()

        class RaiseOnNaN(keras.callbacks.Callback):  # type: ignore[name-defined]  # keras is imported at run time (heavy), so a checker cannot see its classes
            def on_train_batch_end(self, batch, logs=None):
                loss = (logs or {}).get("loss")
                if loss is not None and not math.isfinite(float(loss)):
                    raise TrainingDivergedError(
                        f"the training loss became {loss} at batch {batch}; lower --learning-rate "
                        "or check the data (nothing was saved or registered)."
                    )

        return RaiseOnNaN()
