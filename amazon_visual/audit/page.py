"""``audit.html``: the findings on one self-contained page (thumbnails inlined as data URIs).

Duplicate groups side by side (the representative first, each member with its split, cosine and
kind), misfiled products with their filed and suggested category, and the split leaks. Rendered
from ``web/templates/audit.html`` (it extends ``base.html`` and inlines the shared stylesheet).
At most :data:`MAX_GROUPS` groups and :data:`MAX_MISFILED` products are shown; the CSVs hold all.
"""

import base64
import os

from amazon_visual.atomic import write_text

MAX_GROUPS = 200
MAX_MISFILED = 300


def _uri(index, item_id):
    path = index.thumb_path(item_id)
    if path is None:
        return None
    with open(path, "rb") as f:
        return "data:image/jpeg;base64," + base64.b64encode(f.read()).decode("ascii")


def _member(index, row, extra):
    item = index.items.iloc[row["id"]]
    return {
        "asin": row["asin"],
        "split": row.get("split", item["split"]),
        "label": item["label"],
        "title": str(item["title"])[:80],
        "uri": _uri(index, row["id"]),
        **extra,
    }


def context(index, summary, dup_rows, mis_rows, leak_rows):
    groups = {}
    for r in dup_rows:
        if r["group"] <= MAX_GROUPS:
            groups.setdefault(r["group"], []).append(
                _member(
                    index,
                    r,
                    {"similarity": r["similarity"], "kind": r["kind"], "representative": r["representative"] == "true"},
                )
            )
    for members in groups.values():
        members.sort(key=lambda m: not m["representative"])
    leaked = {r["group"] for r in leak_rows}
    shown_groups = [
        {"id": g, "members": m, "leak": g in leaked, "splits": sorted({x["split"] for x in m})}
        for g, m in sorted(groups.items())
    ]
    misfiled = [
        _member(index, r, {"rank": n, "filed": r["filed"], "suggested": r["suggested"], "confidence": r["confidence"]})
        for n, r in enumerate(mis_rows[:MAX_MISFILED], start=1)
    ]
    return {
        "title": f"Catalog audit of {os.path.basename(summary['index_dir'].rstrip(os.sep))}",
        "s": summary,
        "groups": shown_groups,
        "n_groups": summary["duplicates"]["groups"],
        "misfiled": misfiled,
        "n_misfiled": len(mis_rows),
        "leak_rows": leak_rows[:500],
        "n_leak_rows": len(leak_rows),
    }


def write_page(path, index, summary, dup_rows, mis_rows, leak_rows):
    from amazon_visual.web.templating import render

    write_text(path, render("audit.html", **context(index, summary, dup_rows, mis_rows, leak_rows)))
    return path
