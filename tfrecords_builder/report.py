"""The build report: ``build_report.json``, ``label_distribution.png`` and the summary table."""

import os
from collections import Counter

from tfrecords_builder.splits import SPLIT_NAMES


def plot_label_distribution(report, path):
    """Grouped horizontal bar chart: examples per class, one bar per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    classes = report["classes"]
    counts = report["counts"]
    n = max(1, len(classes))
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.45 * n))
    y = np.arange(len(classes))
    h = 0.8 / len(SPLIT_NAMES)
    colors = {"train": "#4C72B0", "validation": "#DD8452", "test": "#55A868"}
    for i, split in enumerate(SPLIT_NAMES):
        vals = [counts.get(split, {}).get(c, 0) for c in classes]
        bars = ax.barh(y + (i - 1) * h, vals, height=h, label=f"{split} ({sum(vals)})", color=colors[split])
        for b, v in zip(bars, vals):
            if v:
                ax.text(b.get_width(), b.get_y() + b.get_height() / 2, f" {v}", va="center", fontsize=7)
    ax.set_yticks(y)
    ax.set_yticklabels(classes)
    ax.invert_yaxis()
    ax.set_xlabel("examples")
    ax.set_title(f"Examples per class and split ({report['totals'].get('all', 0)} in all)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def summary_table(report):
    """A readable text table of the report (what the CLI prints)."""
    classes = report["classes"]
    counts = report["counts"]
    w = max([len("class")] + [len(c) for c in classes] + [len("total")])
    lines = [f"Dataset {report['data_dir']}  ({len(classes)} classes, image size {report['image_size']})"]
    if report.get("category_level"):
        lines.append(
            f"classes: the most frequent categories at level {report['category_level']} of the category "
            "paths (level 1 = the top level)"
        )
    lines.append("")
    head = f"{'class':<{w}}  " + "  ".join(f"{s:>10}" for s in SPLIT_NAMES) + f"  {'all':>8}"
    lines += [head, "-" * len(head)]
    for c in classes:
        vals = [counts.get(s, {}).get(c, 0) for s in SPLIT_NAMES]
        lines.append(f"{c:<{w}}  " + "  ".join(f"{v:>10}" for v in vals) + f"  {sum(vals):>8}")
    lines.append("-" * len(head))
    tot = [report["totals"].get(s, 0) for s in SPLIT_NAMES]
    lines.append(f"{'total':<{w}}  " + "  ".join(f"{v:>10}" for v in tot) + f"  {sum(tot):>8}")
    lines.append("")
    drops = {k: v for k, v in report["drops"].items() if v}
    if drops:
        lines.append("dropped: " + ", ".join(f"{k} {v}" for k, v in drops.items()))
    reasons = report.get("failure_reasons", {})
    if reasons:
        lines.append("failures: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])))
    lines += _extra_lines(report)
    for msg in report.get("warnings", []):
        lines.append(f"warning: {msg}")
    t = report["timings"]
    lines.append(
        f"time: {t['total_s']:.1f} s (metadata {t['metadata_s']:.1f} s, download {t['download_s']:.1f} s, "
        f"build {t['build_s']:.1f} s, {t['images_per_s']:.1f} images/s)"
    )
    lines.append(f"report: {os.path.join(report['data_dir'], 'build_report.json')}")
    return "\n".join(lines)


def _extra_lines(report):
    """The summary's lines on the image cache, the product attributes and the review decisions."""
    lines = []
    src = report.get("image_source", {})
    if src.get("download"):
        lines.append(
            f"images: {src.get('cached', 0)} reused from the cache, {src.get('downloaded', 0)} downloaded, "
            f"{src.get('refreshed', 0)} downloaded again (the product's photo URL changed), "
            f"{src.get('failed', 0)} failed"
        )
    attrs = report.get("attributes")
    if attrs:
        lines.append(
            "attributes: " + ", ".join(f"{k} {v['count']} ({100 * v['share']:.1f}%)" for k, v in attrs.items())
        )
    dec = report.get("decisions") or {}
    if dec.get("exclude_file"):
        lines.append(
            f"excluded: {dec['excluded']} products of {dec['exclude_listed']} listed in {dec['exclude_file']}"
            f" ({dec['exclude_not_found']} not in the metadata)"
        )
    if dec.get("relabel_file"):
        lines.append(
            f"relabelled: {dec['relabelled']} products of {dec['relabel_listed']} listed in "
            f"{dec['relabel_file']} ({dec['relabel_unchanged']} already in their suggested class, "
            f"{dec['relabel_not_found']} not in the metadata)"
        )
    return lines


MAX_FAILURES_LISTED = 100_000


class FailureLog:
    """Every failure counted (by reason); the first ``MAX_FAILURES_LISTED`` kept for the report."""

    def __init__(self):
        self.listed, self.reasons, self.count = [], Counter(), 0

    def append(self, record):
        self.count += 1
        self.reasons[record["reason"]] += 1
        if len(self.listed) < MAX_FAILURES_LISTED:
            self.listed.append(record)
