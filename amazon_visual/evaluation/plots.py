"""PNG figures of training and evaluation (matplotlib, Agg backend): learning curves,
confusion matrix, grid of misclassified examples. Files are written atomically."""

import os


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    plt = _plt()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def learning_curves(runs, path):
    """``runs``: {name: history rows (dicts with epoch, accuracy, val_accuracy, loss, val_loss)}.
    Two panels: accuracy (recall@1 for retrieval runs, which have no accuracy) and loss per
    epoch, training solid and validation dashed."""
    plt = _plt()
    every_row = [r for rows in runs.values() for r in rows]
    has_accuracy = any(r.get("accuracy") is not None or r.get("val_accuracy") is not None for r in every_row)
    quality = "accuracy" if has_accuracy or not every_row else "recall_at_1"
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, rows) in enumerate(runs.items()):
        c = colors[i % len(colors)]
        epochs = [r["epoch"] + 1 for r in rows]
        for ax, key in ((ax_acc, quality), (ax_loss, "loss")):
            tr = [r.get(key) for r in rows]
            va = [r.get("val_" + key) for r in rows]
            if any(v is not None for v in tr):
                ax.plot(
                    epochs, [float("nan") if v is None else v for v in tr], "-o", ms=3, color=c, label=f"{name} train"
                )
            if any(v is not None for v in va):
                ax.plot(
                    epochs,
                    [float("nan") if v is None else v for v in va],
                    "--s",
                    ms=3,
                    color=c,
                    label=f"{name} validation",
                )
    for ax, title in ((ax_acc, quality.replace("_at_", "@")), (ax_loss, "loss")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8, loc="best")
    return _save(fig, path)


def confusion_matrix(cm, labels, path, title="confusion matrix"):
    """Row-normalised colours, raw counts as text; rows true class, columns predicted."""
    import numpy as np

    plt = _plt()
    cm = np.asarray(cm)
    k = len(labels)
    size = max(5, 0.55 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(k), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    str(int(cm[i, j])),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    return _save(fig, path)


def misclassified_grid(images, true, pred, labels, path, confidences=None, cols=6, title="misclassified"):
    """A grid of images (uint8 or float [0, 255]) titled ``true -> predicted (p)``."""
    import numpy as np

    plt = _plt()
    n = len(images)
    if n == 0:
        fig, ax = plt.subplots(figsize=(4, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no misclassified examples", ha="center", va="center")
        return _save(fig, path)
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        ax = axes[i // cols][i % cols]
        ax.imshow(np.clip(np.asarray(images[i]), 0, 255).astype("uint8"))
        text = f"{labels[true[i]]}\n-> {labels[pred[i]]}"
        if confidences is not None:
            text += f" ({confidences[i]:.2f})"
        ax.set_title(text, fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)
