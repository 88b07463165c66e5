"""Pooled features on local disk, written batch by batch and read back by rows.

Feature extraction runs the frozen base once over every photo; at millions of photos their
pooled features (1,280 float32 a photo for MobileNetV2 at alpha 1.0: 5 KB) do not fit in memory,
so each batch is appended to a ``.npy`` file as it comes and nothing keeps them all. The head
then trains from the file: its batches are gathered by row (``os.pread``, never ``mmap``: mapped
pages would count as the process's memory) in exactly the order Keras' own ``fit`` on in-memory
arrays would use (``head_dataset``), so the trained head is the same, bit for bit.

A file is written under a temporary name and renamed when its last row is in, so a file with
the final name is always complete (a restarted step reuses it).
"""

from __future__ import annotations

import os
import typing

import numpy as np

from tlp.components.lib.specs import ServiceError

READ_ROWS = 256  # rows per sequential read (statistics): 1.3 MB at 1,280 floats, a fixed small buffer


class FeatureWriter:
    """Appends float32 rows [n, dim] to ``path`` (a ``.npy`` of ``total`` rows) and labels to a
    sidecar list; ``finish`` checks that exactly ``total`` rows came and renames into place."""

    def __init__(self, path: str, total: int):
        self.path, self.total, self.count = path, total, 0
        self.labels: list[np.ndarray] = []
        self._partial = path + ".partial"
        self._handle: typing.IO[bytes] | None = None
        self.dim: int | None = None

    def add(self, features: np.ndarray, labels: np.ndarray) -> None:
        features = np.ascontiguousarray(features, np.float32)
        if self._handle is None:
            self.dim = int(np.prod(features.shape[1:]))
            self._handle = open(self._partial, "wb")  # noqa: SIM115 (closed in finish/close)
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                      "shape": (self.total, self.dim)}
            np.lib.format.write_array_header_1_0(self._handle, header)
        self._handle.write(features.reshape(len(features), -1).tobytes())
        self.labels.append(np.asarray(labels, np.int64))
        self.count += len(features)

    def finish(self, dim: int) -> None:
        """Closes the file (``dim`` shapes it when no row came) and renames it into place."""
        if self._handle is None:
            self.dim = dim
            self._handle = open(self._partial, "wb")  # noqa: SIM115
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                      "shape": (self.total, dim)}
            np.lib.format.write_array_header_1_0(self._handle, header)
        self._handle.close()
        self._handle = None
        if self.count != self.total:
            os.remove(self._partial)
            raise ServiceError(f"feature extraction wrote {self.count} rows where the split has {self.total}; "
                               "the data set changed while it ran: run the step again.")
        labels = np.concatenate(self.labels) if self.labels else np.zeros(0, np.int64)
        np.save(labels_path(self.path), labels)
        os.replace(self._partial, self.path)  # atomic: the final name only ever holds a complete file

    def close(self) -> None:
        """Drops an unfinished file (after an error)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if os.path.exists(self._partial):
            os.remove(self._partial)


def labels_path(path: str) -> str:
    return path[: -len(".npy")] + ".labels.npy"


class FeatureFile:
    """A finished features file, read by rows; holds only an open file descriptor."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as handle:
            if np.lib.format.read_magic(handle) != (1, 0):
                raise ServiceError(f"{path} is not a features file this version wrote; delete it and run the step "
                                   "again.")
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            self.offset = handle.tell()
        if fortran or dtype != np.float32 or len(shape) != 2:
            raise ServiceError(f"{path} is not a float32 [rows, dim] features file; delete it and run the step again.")
        self.rows, self.dim = shape
        expected = self.offset + 4 * self.rows * self.dim
        if os.path.getsize(path) != expected:
            raise ServiceError(f"{path} has {os.path.getsize(path)} bytes where {expected} were written; delete it "
                               "and run the step again.")
        self.labels = np.load(labels_path(path))
        self._fd = os.open(path, os.O_RDONLY)

    @property
    def row_bytes(self) -> int:
        return 4 * self.dim

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start`` to ``stop`` (one sequential read)."""
        return self._pread(self.offset + start * self.row_bytes, (stop - start) * self.row_bytes).reshape(-1, self.dim)

    def gather(self, indices) -> np.ndarray:
        """Rows ``indices``, in that order."""
        indices = np.asarray(indices, np.int64)
        out = np.empty((len(indices), self.dim), np.float32)
        for position, row in enumerate(indices):
            out[position] = self._pread(self.offset + int(row) * self.row_bytes, self.row_bytes)
        return out

    def chunks(self) -> typing.Iterator[np.ndarray]:
        for start in range(0, self.rows, READ_ROWS):
            yield self.read(start, min(self.rows, start + READ_ROWS))

    def mean_and_var(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature mean and variance, equal bit for bit to ``x.mean(axis=0)`` and ``x.var(axis=0)``
        of the whole float32 array (numpy adds the rows of an axis-0 reduction one after the other,
        so carrying the running sum from chunk to chunk keeps its order)."""
        total = np.zeros(self.dim, np.float32)
        for chunk in self.chunks():
            total = np.add.reduce(np.concatenate([total[None], chunk]), axis=0)
        mean = (total / np.float32(self.rows)).astype(np.float32)
        squares = np.zeros(self.dim, np.float32)
        for chunk in self.chunks():
            deviation = chunk - mean
            squares = np.add.reduce(np.concatenate([squares[None], deviation * deviation]), axis=0)
        return mean, (squares / np.float32(self.rows)).astype(np.float32)

    def _pread(self, offset: int, size: int) -> np.ndarray:
        buffer = np.empty(size // 4, np.float32)
        view, done = buffer.data.cast("B"), 0
        while done < size:  # pread may return short counts
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got <= 0:
                raise ServiceError(f"the features file {self.path} ended early; keep other processes from deleting "
                                   "or truncating it while the head trains, and run the step again.")
            done += got
        return buffer

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None  # type: ignore[assignment]


def head_dataset(features: FeatureFile, batch_size: int, *, epochs: int, shuffle: bool):
    """(features batch, labels batch) for ``epochs`` epochs: the batches Keras' ``fit(x, y,
    batch_size, shuffle)`` on the in-memory arrays would make (its own ``TensorLikeDataAdapter``
    makes the row order, over row numbers instead of rows), each gathered from the file. Returns
    (dataset, steps per epoch)."""
    import tensorflow as tf
    from tf_keras.src.engine import data_adapter

    adapter = data_adapter.TensorLikeDataAdapter(
        np.arange(features.rows, dtype=np.int64), features.labels, batch_size=batch_size, epochs=epochs,
        shuffle=shuffle,
    )

    def gather(rows, labels):
        values = tf.numpy_function(features.gather, [rows], tf.float32)
        values.set_shape((None, features.dim))
        return values, labels

    dataset = adapter.get_dataset().map(gather, num_parallel_calls=2, deterministic=True).prefetch(2)
    return dataset, adapter.get_size()
