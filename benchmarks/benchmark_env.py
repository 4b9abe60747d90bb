"""Shared set-up of the benchmarks: where ../shared is, a KERAS_HOME seeded with its weights."""

import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "shared"))


def seed_keras_home(work):
    """Seeds ``work/keras-home`` from ../shared/weights and points KERAS_HOME at it (before Keras loads)."""
    home = os.path.join(work, "keras-home")
    subprocess.run([os.path.join(SHARED, "weights", "seed-keras-cache"), home], check=True, stdout=subprocess.DEVNULL)
    os.environ["KERAS_HOME"] = home
    return home
