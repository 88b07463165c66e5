"""Helpers more than one test file uses: the installed ``tlp`` console script, a free loopback
port, stopping a child process, comparing model weights, photos of the sample's kind and the
same photos through a much worse camera."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys


def tlp_script() -> str:
    """The installed ``tlp`` console script of this venv (what a user runs), not ``python -m``."""
    found = shutil.which("tlp", path=os.path.dirname(sys.executable))
    assert found, f"no tlp console script beside {sys.executable}; run make install"
    return found


def run_tlp(*args: str, cwd=None, env=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs ``tlp ARGS...`` through the console script; returns the finished process (text)."""
    return subprocess.run([tlp_script(), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, **(env or {})})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen, timeout: float = 20) -> None:
    """Terminates ``process``; kills it if it has not ended after ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def weights(model_dir: str) -> list:
    """Every weight of a saved Keras model, as NumPy arrays."""
    from tlp.components.lib import model as model_lib

    return [w.numpy() for w in model_lib.load_keras(model_dir).weights]


def max_difference(a: list, b: list) -> float:
    import numpy as np

    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


# Two trainings that compute the same thing by different routes (cached activations vs images,
# 2 replicas vs 1) agree to float32 rounding, not bit for bit: oneDNN picks its kernels by CPU
# (an AMD EPYC rounds a loss differently in the 8th digit from the machines these were written on).
LOSS_RELATIVE_TOLERANCE = 1e-5


def assert_same_history(got: dict, expected: dict) -> None:
    """The same epochs and accuracies (counts of right answers) exactly, the same losses to
    float32 rounding."""
    import pytest

    assert set(got) == set(expected), (sorted(got), sorted(expected))
    for key, values in expected.items():
        if "loss" in key:
            assert got[key] == pytest.approx(values, rel=LOSS_RELATIVE_TOLERANCE), key
        else:
            assert got[key] == values, key


def worse_camera(pixels, rng):
    """What a much worse camera makes of a photo: strong blur, washed-out colour and contrast,
    heavy sensor noise."""
    import numpy as np
    from PIL import Image, ImageEnhance, ImageFilter

    image = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(4))
    image = ImageEnhance.Contrast(ImageEnhance.Color(image).enhance(0.3)).enhance(0.5)
    noisy = np.asarray(image).astype(np.float32) * 0.6 + 100 + rng.normal(0, 40, pixels.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def new_and_worse_photos(root, per_class: int = 40) -> tuple[list[str], list[str]]:
    """New photos of the sample data's kind (other seeds than any training photo) in ``root/same``,
    and the same photos through ``worse_camera`` in ``root/worse``: (same paths, worse paths)."""
    import numpy as np
    from PIL import Image

    from tlp.components.lib.dataprep.sources import sample_pixels

    rng = np.random.default_rng(3)
    paths: dict[str, list[str]] = {"same": [], "worse": []}
    for kind in paths:
        os.makedirs(os.path.join(root, kind), exist_ok=True)
    for index in range(per_class):
        for label in range(2):  # interleaved, so any prefix holds both classes
            pixels = sample_pixels(label, (99, label, index))
            for kind, image in (("same", pixels), ("worse", worse_camera(pixels, rng))):
                path = os.path.join(root, kind, f"{label}-{index}.png")
                Image.fromarray(image).save(path)
                paths[kind].append(path)
    return paths["same"], paths["worse"]


class ChampionRegistry:
    """A registry whose champion, version 1 of "pets", was trained on the content split, seed 42."""

    def champion_version(self, name):
        return "1"

    def version(self, name, version):
        from tlp.components.lib.dataprep import split as content_split
        from tlp.components.lib.registry.base import ModelVersion

        return ModelVersion(name, "1", "", ["champion"], {}, {
            "class_names": '["cat", "dog"]', "split_method": content_split.SPLIT_METHOD, "split_seed": "42"})

    def model_dir(self, reference):
        return "champion-model"
