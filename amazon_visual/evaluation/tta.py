"""Test-time augmentation (TTA): a classifier's softmax averaged over a few views of each photo.

``flip``: the photo and its mirror image (2 views). ``flip-crop``: those two, plus a centre
crop of :data:`CROP_FRACTION` of each side resized back to the input size, and its mirror
image (4 views). The average keeps the shape ``[n, classes]`` and the class order of the
plain prediction; view 0 is always the photo as it is, so the plain figures come out of the
same pass (:class:`Predictor` times view 0 apart from the others: the cost of TTA in the same run).
"""

import time

from amazon_visual.errors import UserError

TTA_MODES = ("none", "flip", "flip-crop")
CROP_FRACTION = 0.875


def check_mode(mode):
    """``None`` / ``"none"`` -> ``"none"``; a mode of :data:`TTA_MODES`; else a UserError."""
    mode = "none" if mode in (None, "", False) else str(mode).strip().lower()
    if mode not in TTA_MODES:
        raise UserError(f"--tta {mode!r} is not a test-time augmentation: use one of {', '.join(TTA_MODES)}")
    return mode


def _centre_crop(x, fraction=CROP_FRACTION):
    from keras import ops

    h, w = int(x.shape[1]), int(x.shape[2])
    ch, cw = max(1, int(round(h * fraction))), max(1, int(round(w * fraction)))
    top, left = (h - ch) // 2, (w - cw) // 2
    return ops.image.resize(x[:, top : top + ch, left : left + cw, :], (h, w), interpolation="bilinear")


def views(x, mode):
    """The views of a batch of images ``[b, h, w, 3]``: view 0 is ``x`` itself."""
    from keras import ops

    mode = check_mode(mode)
    out = [x]
    if mode in ("flip", "flip-crop"):
        out.append(ops.flip(x, axis=2))
    if mode == "flip-crop":
        crop = _centre_crop(x)
        out += [crop, ops.flip(crop, axis=2)]
    return out


def n_views(mode):
    return {"none": 1, "flip": 2, "flip-crop": 4}[check_mode(mode)]


class Predictor:
    """Calls a model on every view of a batch and averages the softmax; keeps the model's
    seconds on view 0 (``plain_seconds``) and on all views (``seconds``)."""

    def __init__(self, model, mode="none"):
        self.model, self.mode = model, check_mode(mode)
        self.seconds = 0.0
        self.plain_seconds = 0.0

    def __call__(self, x):
        """(TTA probabilities, plain probabilities) as float32 numpy arrays ``[b, classes]``."""
        import numpy as np

        total, plain = None, None
        for i, v in enumerate(views(x, self.mode)):
            t0 = time.perf_counter()
            p = np.asarray(self.model(v, training=False), dtype=np.float32)
            dt = time.perf_counter() - t0
            self.seconds += dt
            if i == 0:
                self.plain_seconds += dt
                plain, total = p, p.copy()
            else:
                total += p
        return total / float(n_views(self.mode)), plain

    def report(self, n, accuracy, plain_accuracy):
        """The ``tta`` block of an evaluation: mode, views, accuracy without TTA, model seconds with
        and without, their ratio (the cost), per-image milliseconds."""
        return {
            "mode": self.mode,
            "views": n_views(self.mode),
            "accuracy": float(accuracy),
            "accuracy_without_tta": float(plain_accuracy),
            "gain": round(float(accuracy) - float(plain_accuracy), 6),
            "model_seconds": round(self.seconds, 3),
            "model_seconds_without_tta": round(self.plain_seconds, 3),
            "time_ratio": round(self.seconds / self.plain_seconds, 2) if self.plain_seconds > 0 else None,
            "ms_per_image": round(1000 * self.seconds / max(1, n), 3),
            "ms_per_image_without_tta": round(1000 * self.plain_seconds / max(1, n), 3),
        }
