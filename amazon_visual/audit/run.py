"""``amazon-visual audit INDEX_DIR --out AUDIT_DIR``: the three findings, written to AUDIT_DIR.

AUDIT_DIR holds ``audit.json`` (counts, the thresholds used, timings), ``duplicates.csv``
(``group,asin,split,similarity,representative,kind``), ``misfiled.csv``
(``asin,filed,suggested,confidence``), ``leaks.csv`` (``group,asin,split``), each with a header
row, and ``audit.html``. Every file is written atomically; ``build-data --exclude-file`` and
``--relabel-file`` read the CSVs back, and ``serve --audit AUDIT_DIR`` collapses the groups.
"""

import csv
import io
import os
import sys
import time

import numpy as np

from amazon_visual.atomic import write_json, write_text
from amazon_visual.audit import duplicates, inputs, leaks, misfiled
from amazon_visual.errors import UserError

DUPLICATES_CSV = "duplicates.csv"
MISFILED_CSV = "misfiled.csv"
LEAKS_CSV = "leaks.csv"
AUDIT_JSON = "audit.json"
AUDIT_HTML = "audit.html"
COLUMNS = {
    DUPLICATES_CSV: ["group", "asin", "split", "similarity", "representative", "kind"],
    MISFILED_CSV: ["asin", "filed", "suggested", "confidence"],
    LEAKS_CSV: ["group", "asin", "split"],
}


def _say(progress, text):
    if progress:
        print(f"audit: {text}", file=sys.stderr, flush=True)


def write_csv(path, columns, rows):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def _prepare_out(out_dir):
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out {out_dir} is a file: choose a folder for the audit")
    os.makedirs(out_dir, exist_ok=True)
    return out_dir


def find_duplicates(index, data_dir, settings, timings, progress):
    """``(rows of duplicates.csv, group count, pair counts, {id: Look})``."""
    from amazon_visual.audit.photos import look

    t0 = time.perf_counter()
    pairs = duplicates.candidate_pairs(index, **settings)
    timings["candidates"] = round(time.perf_counter() - t0, 3)
    ids = np.unique(np.concatenate([pairs["i"], pairs["j"]]))
    _say(
        progress,
        f"{len(pairs['i'])} candidate pairs over {len(ids)} items (ANN k={settings['k']}); "
        "a second look at their photos",
    )
    t0 = time.perf_counter()
    if data_dir is None and len(ids) and not index.manifest.get("thumbnails", True):
        raise UserError(
            f"{index.index_dir} has no thumbnails: pass --data DATA_DIR so the audit can look at the photos"
        )
    looks = {i: look(img) for i, img in inputs.photos(index, ids, data_dir).items()}
    timings["photos"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    pairs = duplicates.second_look(pairs, looks, colour_min=settings["colour"])
    accepted, exact = duplicates.decide(pairs, **settings)
    rows, n_groups = duplicates.groups(index, pairs, accepted, exact, {i: lk.size for i, lk in looks.items()})
    timings["second_look"] = round(time.perf_counter() - t0, 3)
    counts = {
        "candidate_pairs": int(len(pairs["i"])),
        "accepted_pairs": int(accepted.sum()),
        "exact_pairs": int(exact.sum()),
        "mutual_candidate_pairs": int(pairs["mutual"].sum()),
    }
    return rows, n_groups, counts, pairs


def audit(index_dir, out_dir, data_dir=None, run_dir=None, folds=5, cut="confidence", progress=True, **thresholds):
    """Audit INDEX_DIR into AUDIT_DIR = ``out_dir``; returns the summary written to ``audit.json``.

    ``thresholds``: any of :data:`amazon_visual.audit.duplicates.DEFAULTS` (None = the default)."""
    settings = dict(duplicates.DEFAULTS)
    settings.update({k: v for k, v in thresholds.items() if v is not None})
    unknown = set(settings) - set(duplicates.DEFAULTS)
    if unknown:
        raise UserError(f"unknown audit settings: {', '.join(sorted(unknown))}")
    if int(settings["k"]) < 1:
        raise UserError(f"-k {settings['k']} must be at least 1")
    t_start = time.perf_counter()
    index = inputs.open_index(index_dir)
    if data_dir is not None:
        inputs.check_data(index, data_dir)
    run = None
    if run_dir is not None:
        run_data = data_dir or index.manifest.get("data_dir")
        if not run_data or not os.path.isdir(run_data):
            raise UserError(f"--run {run_dir} needs the dataset's test photos: pass --data DATA_DIR")
        if data_dir is None:
            inputs.check_data(index, run_data)
        run = (inputs.check_run(run_dir, index, run_data), run_data)
    out_dir = _prepare_out(out_dir)
    timings = {}
    _say(progress, f"{index.n_items} items in {index_dir}")
    dup_rows, n_groups, pair_counts, _ = find_duplicates(index, data_dir, settings, timings, progress)
    _say(
        progress,
        f"{n_groups} duplicate groups ({len(dup_rows)} products); misfiled products by {folds}-fold "
        "logistic regression and cleanlab",
    )
    t0 = time.perf_counter()
    group_of = np.arange(index.n_items) + len(dup_rows) + 1
    for r in dup_rows:
        group_of[r["id"]] = r["group"]
    mis_rows, mis_summary = misfiled.audit(index, group_of, folds=folds, cut=cut)
    timings["misfiled"] = round(time.perf_counter() - t0, 3)
    leak_rows, leak_summary, leaked_test = leaks.find(dup_rows)
    if run is not None:
        (model, config, _), run_data = run
        _say(progress, f"test accuracy of {run_dir} with and without {len(leaked_test)} leaked test items")
        t0 = time.perf_counter()
        leak_summary["run"] = leaks.run_accuracy(run_dir, model, config, run_data, leaked_test)
        timings["run"] = round(time.perf_counter() - t0, 3)
    timings["total"] = round(time.perf_counter() - t_start, 3)
    summary = {
        "index_dir": os.path.abspath(os.fspath(index_dir)),
        "data_dir": os.path.abspath(os.fspath(data_dir)) if data_dir else None,
        "photos": "dataset" if data_dir else "thumbnails",
        "n_items": index.n_items,
        "duplicates": {
            "groups": n_groups,
            "products": len(dup_rows),
            "exact_products": sum(r["kind"] == "exact" for r in dup_rows),
            "to_exclude": sum(r["representative"] == "false" for r in dup_rows),
            **pair_counts,
        },
        "misfiled": mis_summary,
        "leaks": leak_summary,
        "thresholds": settings,
        "timings": timings,
        "files": {name: name for name in (AUDIT_JSON, DUPLICATES_CSV, MISFILED_CSV, LEAKS_CSV, AUDIT_HTML)},
    }
    write_csv(os.path.join(out_dir, DUPLICATES_CSV), COLUMNS[DUPLICATES_CSV], dup_rows)
    write_csv(os.path.join(out_dir, MISFILED_CSV), COLUMNS[MISFILED_CSV], mis_rows)
    write_csv(os.path.join(out_dir, LEAKS_CSV), COLUMNS[LEAKS_CSV], leak_rows)
    from amazon_visual.audit.page import write_page

    write_page(os.path.join(out_dir, AUDIT_HTML), index, summary, dup_rows, mis_rows, leak_rows)
    write_json(os.path.join(out_dir, AUDIT_JSON), summary)
    summary["out_dir"] = os.path.abspath(out_dir)
    index.close()
    return summary


def format_summary(s):
    """The few lines the CLI prints."""
    d, m, lk = s["duplicates"], s["misfiled"], s["leaks"]
    lines = [
        f"{s['n_items']} items audited in {s['timings']['total']:.1f} s",
        f"duplicates: {d['groups']} groups, {d['products']} products ({d['exact_products']} exact), "
        f"{d['to_exclude']} to exclude",
        f"misfiled: {m.get('flagged', 0)} products" + (f" ({m['skipped']})" if m.get("skipped") else ""),
        f"leaks: {lk['groups']} groups across splits, {lk['test_items']} test items",
    ]
    run = lk.get("run")
    if run:
        lines.append(
            f"test accuracy {run['accuracy']} on all {run['test_items']} test items, "
            f"{run['accuracy_without_leaks']} without the {run['leaked_test_items']} leaked ones"
        )
    lines.append(f"written to {s['out_dir']} (audit.html, audit.json, duplicates.csv, misfiled.csv, leaks.csv)")
    return "\n".join(lines)
