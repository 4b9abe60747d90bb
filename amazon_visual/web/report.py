"""One self-contained HTML page that shows a whole experiment.

``write_report(path)`` takes a RUN_DIR (from ``amazon-visual train``), a folder of
several runs, or a demo folder (from ``amazon-visual demo``) and writes one HTML page:
the dataset's label distribution, the compare table, and for each run its learning
curves, the per-class classification report and the confusion matrix of each
evaluated split, then the recommendation galleries (a query image, then the top-k
look-alikes with their scores). Every image is embedded as a base64 ``data:`` URI and
the shared stylesheet is inlined, so the page works opened from ``file://`` with no network.

The Python here only gathers what to show (dicts and lists); the HTML is the Jinja2
template ``templates/report.html`` (autoescaped), with the pieces of ``macros.html``
and the gallery macro of ``gallery.html``.

It only reads the stage folders (see the contracts): it imports neither TensorFlow
nor Keras, so it is quick and works on any machine that holds the folders.
"""

import base64
import csv
import datetime
import json
import mimetypes
import os

from amazon_visual.errors import UserError

#: where ``amazon-visual demo`` puts each stage's folder inside its output folder
DEMO_LAYOUT = {
    "data": "data",
    "run": "run",
    "compare": "compare",
    "index": "index",
    "recommendations": "recommendations",
}
DEMO_MARKER = "demo.json"
RECOMMENDATIONS_FILE = "recommendations.json"


# ---------------------------------------------------------------------------
# finding the artifacts
# ---------------------------------------------------------------------------
def is_run_dir(path):
    return os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(os.path.join(path, "labels.json"))


def is_data_dir(path):
    return bool(path) and os.path.isfile(os.path.join(path, "dataset_info.json"))


def _read_json(path, default=None):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def _read_csv(path):
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def _resolve(base, p):
    """``p`` as written in a config: absolute, relative to the cwd, or relative to ``base``."""
    if not p:
        return None
    p = os.fspath(p)
    for cand in (p, os.path.join(base, p), os.path.join(os.path.dirname(base), p)):
        if os.path.exists(cand):
            return os.path.abspath(cand)
    return None


def find_artifacts(path, index_dir=None):
    """Locate what a report can show under ``path`` (a run, a folder of runs, a demo folder).

    Returns a dict: ``root``, ``kind`` ("demo", "run" or "runs"), ``runs`` (RUN_DIRs),
    ``data_dir``, ``compare_dir``, ``index_dir``, ``recommendations`` (path of a
    recommendations.json or None) and ``demo`` (the demo's summary or None).
    ``index_dir``: the INDEX_DIR to recommend from when none is found beside the runs.
    """
    root = os.path.abspath(os.fspath(path))
    if not os.path.isdir(root):
        raise UserError(f"{path}: no such folder: give a RUN_DIR from 'amazon-visual train' or a demo folder")
    found = {
        "root": root,
        "kind": None,
        "runs": [],
        "data_dir": None,
        "compare_dir": None,
        "index_dir": None,
        "recommendations": None,
        "demo": _read_json(os.path.join(root, DEMO_MARKER)),
    }

    if is_run_dir(root):
        found["kind"] = "run"
        found["runs"] = [root]
    else:
        subdirs = sorted(os.path.join(root, d) for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        found["runs"] = [d for d in subdirs if is_run_dir(d)]
        if not found["runs"]:  # one level deeper (e.g. demo/runs/<name>)
            for d in subdirs:
                found["runs"] += sorted(os.path.join(d, e) for e in os.listdir(d) if is_run_dir(os.path.join(d, e)))
        found["kind"] = "demo" if found["demo"] is not None else "runs"
    if not found["runs"]:
        raise UserError(
            f"{path}: holds no training run (config.json + labels.json): "
            "give a RUN_DIR from 'amazon-visual train' or a folder from 'amazon-visual demo'"
        )

    # the dataset: next to the runs (demo layout) or named in the first run's config
    for cand in (os.path.join(root, DEMO_LAYOUT["data"]),):
        if is_data_dir(cand):
            found["data_dir"] = cand
    if found["data_dir"] is None:
        for run in found["runs"]:
            cfg = _read_json(os.path.join(run, "config.json"), {}) or {}
            d = _resolve(run, cfg.get("data_dir"))
            if is_data_dir(d):
                found["data_dir"] = d
                break

    for cand in (os.path.join(root, DEMO_LAYOUT["compare"]), root, os.path.join(root, "..", "compare")):
        if os.path.isfile(os.path.join(cand, "compare.csv")):
            found["compare_dir"] = os.path.abspath(cand)
            break

    cands = [os.path.join(root, DEMO_LAYOUT["index"]), os.path.join(root, "index"), os.path.join(root, "..", "index")]
    if index_dir:
        cands = [os.fspath(index_dir)]
        if not os.path.isfile(os.path.join(cands[0], "manifest.json")):
            raise UserError(
                f"--index {index_dir} is not an index folder (no manifest.json): "
                "give a folder written by 'amazon-visual index'"
            )
    for cand in cands:
        if os.path.isfile(os.path.join(cand, "manifest.json")):
            found["index_dir"] = os.path.abspath(cand)
            break

    for cand in (
        os.path.join(root, DEMO_LAYOUT["recommendations"], RECOMMENDATIONS_FILE),
        os.path.join(root, RECOMMENDATIONS_FILE),
    ):
        if os.path.isfile(cand):
            found["recommendations"] = cand
            break
    return found


# ---------------------------------------------------------------------------
# pieces the template shows
# ---------------------------------------------------------------------------
def data_uri(path, mime=None):
    """The file's bytes as a ``data:`` URI (so the page needs no other file)."""
    mime = mime or mimetypes.guess_type(path)[0] or "application/octet-stream"
    with open(path, "rb") as f:
        return f"data:{mime};base64,{base64.b64encode(f.read()).decode('ascii')}"


def figure(path, caption):
    """``{"uri", "caption"}`` of an image file, or None when there is no such file."""
    if not path or not os.path.isfile(path):
        return None
    return {"uri": data_uri(path), "caption": caption}


def _fmt(v, digits=3):
    if v is None or v == "":
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if f.is_integer() and "." not in str(v):
        return f"{int(f):,}"
    return f"{f:.{digits}f}"


def table(headers, rows, numeric_from=1, row_classes=None):
    """A table for the ``table`` macro; cells from column ``numeric_from`` on are right-aligned."""
    row_classes = row_classes or [""] * len(rows)
    return {
        "headers": list(headers),
        "numeric_from": numeric_from,
        "rows": [{"cells": ["" if c is None else c for c in row], "cls": cls} for row, cls in zip(rows, row_classes)],
    }


# ---------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------
def _split_counts(data_dir):
    info = _read_json(os.path.join(data_dir, "dataset_info.json"), {}) or {}
    counts = {}
    for s in info.get("splits", []) or []:
        n = s.get("numExamples")
        if n is None:
            n = sum(int(x) for x in s.get("shardLengths", []) or [])
        counts[s.get("name")] = int(n)
    return counts


def _class_names_from_features(data_dir):
    feats = _read_json(os.path.join(data_dir, "features.json"), {}) or {}
    try:
        return list(feats["featuresDict"]["features"]["label"]["classLabel"]["names"])
    except (KeyError, TypeError):
        pass
    p = os.path.join(data_dir, "label.labels.txt")
    if os.path.isfile(p):
        with open(p, encoding="utf-8") as f:
            return [ln.strip() for ln in f if ln.strip()]
    return []


def _per_class_counts(build_report):
    """``{class: {split: n}}`` from a build report, when it has one in a known shape."""
    if not isinstance(build_report, dict):
        return {}
    for key in ("class_counts", "label_counts", "counts", "per_class", "classes"):
        v = build_report.get(key)
        if isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
            first = next(iter(v.values()))
            if all(isinstance(n, (int, float)) for n in first.values()):
                # either {class: {split: n}} or {split: {class: n}}
                if set(v) & {"train", "validation", "test"}:
                    out = {}
                    for split, per in v.items():
                        for c, n in per.items():
                            out.setdefault(c, {})[split] = n
                    return out
                return v
    return {}


def section_dataset(data_dir):
    if not data_dir:
        return None
    counts = _split_counts(data_dir)
    names = _class_names_from_features(data_dir)
    build = _read_json(os.path.join(data_dir, "build_report.json"), {}) or {}
    kv = [("classes", f"{len(names)}: " + ", ".join(names) if names else "")]
    for split in ("train", "validation", "test"):
        if split in counts:
            kv.append((f"{split} examples", _fmt(counts[split])))
    for key, v in build.items():
        if (
            isinstance(v, (str, int, float))
            and not isinstance(v, bool)
            and len(str(v)) < 120
            and key not in ("classes",)
        ):
            kv.append((key.replace("_", " "), _fmt(v) if not isinstance(v, str) else v))
    out = {
        "data_dir": data_dir,
        "kv": [(k, v) for k, v in kv if v != ""],
        "per_class": None,
        "figure": figure(os.path.join(data_dir, "label_distribution.png"), "examples per class and split"),
    }
    per_class = _per_class_counts(build)
    if per_class:
        splits = [s for s in ("train", "validation", "test") if any(s in d for d in per_class.values())]
        rows = [
            [c] + [_fmt(per_class[c].get(s, 0)) for s in splits] + [_fmt(sum(per_class[c].get(s, 0) for s in splits))]
            for c in per_class
        ]
        out["per_class"] = table(["class"] + splits + ["total"], rows)
    return out


def _history(run_dir):
    rows = _read_csv(os.path.join(run_dir, "history.csv"))
    out = []
    for r in rows:
        d = {}
        for k, v in r.items():
            try:
                d[k] = float(v)
            except (TypeError, ValueError):
                d[k] = v
        out.append(d)
    return out


def _eval_dirs(run_dir):
    """``[(split, metrics dict, folder)]`` for each evaluated split: test first."""
    found = []
    for d in sorted(os.listdir(run_dir)):
        p = os.path.join(run_dir, d)
        if d.startswith("eval_") and os.path.isdir(p):
            m = _read_json(os.path.join(p, "metrics.json"))
            if m:
                found.append((m.get("split") or d[5:], m, p))
    order = {"test": 0, "validation": 1, "train": 2}
    return sorted(found, key=lambda t: (order.get(t[0], 3), t[0]))


def run_summary(run_dir):
    """The facts of one run that the compare table shows."""
    cfg = _read_json(os.path.join(run_dir, "config.json"), {}) or {}
    hist = _history(run_dir)
    val = [h.get("val_accuracy") for h in hist if isinstance(h.get("val_accuracy"), float)]
    s = {
        "run": os.path.basename(os.path.normpath(run_dir)),
        "model": cfg.get("model"),
        "weights": cfg.get("weights"),
        "image size": cfg.get("image_size"),
        "epochs": len(hist),
        "best val accuracy": max(val) if val else None,
    }
    for split, m, _ in _eval_dirs(run_dir):
        s[f"{split} accuracy"] = m.get("accuracy")
    return s


def section_compare(found):
    rows_csv = _read_csv(os.path.join(found["compare_dir"], "compare.csv")) if found["compare_dir"] else []
    if rows_csv:
        headers = list(rows_csv[0].keys())
        rows = [[r.get(h, "") if i == 0 else _fmt(r.get(h, "")) for i, h in enumerate(headers)] for r in rows_csv]
        fig = figure(os.path.join(found["compare_dir"], "learning_curves.png"), "learning curves of the compared runs")
        return {
            "note": f"from {os.path.join(found['compare_dir'], 'compare.csv')}",
            "table": table(headers, rows),
            "figure": fig if len(rows_csv) > 1 else None,
        }  # one run: its own section shows the same curves
    summaries = [run_summary(r) for r in found["runs"]]
    headers = []
    for s in summaries:
        headers += [k for k in s if k not in headers]
    rows = [
        [s.get(h) if i == 0 else (_fmt(s.get(h)) if s.get(h) is not None else "") for i, h in enumerate(headers)]
        for s in summaries
    ]
    return {"note": "", "table": table(headers, rows), "figure": None}


def classification_table(report):
    """sklearn's ``classification_report(output_dict=True)`` as a table: classes, accuracy, then the averages."""
    headers = ["class", "precision", "recall", "f1-score", "support"]
    rows, avg = [], []
    for name, v in report.items():
        if name == "accuracy" or not isinstance(v, dict):
            continue
        row = [name] + [_fmt(v.get(h)) if h != "support" else _fmt(int(v.get(h, 0))) for h in headers[1:]]
        (avg if name.endswith(" avg") else rows).append(row)
    if "accuracy" in report:
        total = sum(
            int(report[n].get("support", 0)) for n in report if isinstance(report[n], dict) and not n.endswith(" avg")
        )
        avg.insert(0, ["accuracy", "", "", _fmt(report["accuracy"]), _fmt(total)])
    return table(headers, rows + avg, row_classes=[""] * len(rows) + ["avg"] * len(avg))


def confusion_table(matrix, labels):
    """The confusion matrix as heat-map cells: rows true class, columns predicted class."""
    if not matrix:
        return None
    rows = []
    for i, row in enumerate(matrix):
        total = sum(row) or 1
        cells = []
        for j, n in enumerate(row):
            a = n / total
            cells.append(
                {
                    "n": n,
                    "diag": i == j,
                    "color": f"rgba(37,99,235,{0.08 + 0.85 * a:.2f})" if n else "#f8fafc",
                    "ink": "#fff" if a > 0.5 else "#1f2933",
                    "title": f"{labels[i]} as {labels[j]}: {n}",
                }
            )
        rows.append({"label": labels[i] if i < len(labels) else i, "cells": cells})
    return {"labels": list(labels), "rows": rows}


def _learning_curves_png(run_dir):
    """The run's learning_curves.png; drawn from history.csv when the run has none."""
    p = os.path.join(run_dir, "learning_curves.png")
    if os.path.isfile(p):
        return p
    hist = _history(run_dir)
    if not hist:
        return None
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    epochs = [int(h.get("epoch", i)) + 1 if isinstance(h.get("epoch"), float) else i + 1 for i, h in enumerate(hist)]
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, style in ((metric, "-o"), ("val_" + metric, "--o")):
            ys = [h.get(key) for h in hist]
            if all(isinstance(y, float) for y in ys):
                ax.plot(epochs, ys, style, label=key, markersize=3)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return tmp


def section_run(run_dir, anchor):
    cfg = _read_json(os.path.join(run_dir, "config.json"), {}) or {}
    labels = _read_json(os.path.join(run_dir, "labels.json"), []) or []
    name = os.path.basename(os.path.normpath(run_dir))
    keys = [
        "model",
        "weights",
        "image_size",
        "preprocessing",
        "embedding_dim",
        "num_classes",
        "epochs",
        "batch_size",
        "learning_rate",
        "optimizer",
        "strategy",
        "fine_tune",
        "seed",
    ]
    kv = [(k.replace("_", " "), cfg[k]) for k in keys if k in cfg and not isinstance(cfg[k], (dict, list))]
    kv = [(k, "none (trained from scratch)" if k == "weights" and v in (None, "none") else v) for k, v in kv]
    lc = _learning_curves_png(run_dir)
    curves = figure(lc, "loss and accuracy per epoch (train and validation)")
    if lc and not lc.startswith(run_dir):
        os.remove(lc)  # drawn into a temporary file
    evals = []
    for split, m, folder in _eval_dirs(run_dir):
        lab = m.get("labels") or labels
        rep = m.get("classification_report")
        evals.append(
            {
                "split": split,
                "accuracy": _fmt(m.get("accuracy")),
                "chance": f"{1 / (len(lab) or 1):.3f}",
                "report": classification_table(rep) if isinstance(rep, dict) else None,
                "cm": confusion_table(m.get("confusion_matrix"), lab),
                "misclassified": figure(os.path.join(folder, "misclassified.png"), f"misclassified examples ({split})"),
                "cm_png": figure(os.path.join(folder, "confusion_matrix.png"), f"confusion matrix ({split})"),
            }
        )
    title = f"Training run: {cfg.get('model', '?')}" + (f" ({name})" if name not in ("run", cfg.get("model")) else "")
    return {
        "anchor": anchor,
        "title": title,
        "run_dir": run_dir,
        "kv": [(k, v) for k, v in kv if v is not None],
        "curves": curves,
        "evals": evals,
    }


def load_recommendations(path):
    """The saved recommendations: a list of ``{"query": {...}, "results": [{...}, ...]}``
    (the dicts :meth:`amazon_visual.retrieval.recommend.Recommender.recommend` returns)."""
    data = _read_json(path)
    if isinstance(data, dict):
        data = data.get("queries") or data.get("recommendations") or []
    return [q for q in data if isinstance(q, dict)] if isinstance(data, list) else []


def _abs_file(p, base):
    """``p`` (absolute, or relative to ``base``) when that file exists, else None."""
    if not p or not isinstance(p, (str, os.PathLike)):
        return None
    p = os.fspath(p)
    for cand in (os.path.join(base, p), p):
        if os.path.isfile(cand):
            return os.path.abspath(cand)
    return None


def resolve_paths(queries, base):
    """Copies of the saved queries whose ``thumb`` / ``image`` paths are absolute (relative to ``base``)."""
    out = []
    for q in queries:
        query = dict(q.get("query") or {})
        for key in ("thumb", "image"):
            if key in query:
                query[key] = _abs_file(query[key], base) or (None if key == "thumb" else query[key])
        results = [dict(r, thumb=_abs_file(r.get("thumb"), base)) for r in q.get("results") or []]
        out.append({"query": query, "results": results})
    return out


def gallery_title(i, query):
    what = query.get("label") or query.get("predicted_label") or ""
    name = query.get("title") or query.get("asin") or os.path.basename(str(query.get("image", "")))
    return f"Query {i}: {name}" + (f" ({what})" if what and what not in str(name) else "")


def choose_queries(items, n, split="test"):
    """ASINs of ``n`` query products: the first (by ASIN) test product of classes spread over all classes."""
    rows = items[items["split"] == split] if "split" in items and (items["split"] == split).any() else items
    by_label = {}
    for asin, label in sorted(zip(rows["asin"].astype(str), rows["label"].astype(str))):
        by_label.setdefault(label, asin)
    labels = list(by_label)
    if not labels or n < 1:
        return []
    m = min(n, len(labels))
    return [by_label[labels[i * len(labels) // m]] for i in range(m)]


def live_recommendations(index_dir, queries=4, k=5):
    """Recommendations for ``queries`` indexed test products, by ASIN (no TensorFlow needed)."""
    from amazon_visual.retrieval.recommend import Recommender

    out = []
    with Recommender.load(index_dir) as rec:
        for asin in choose_queries(rec.index.items, queries):
            res = rec.recommend(asin=asin, k=k)
            out.append({"query": res["query"], "results": res["results"]})
    return out


def section_recommendations(found, queries=4, k=5):
    """``{"source", "galleries"}`` (gallery contexts of :mod:`.gallery`), or None when there is nothing to show."""
    saved = load_recommendations(found["recommendations"]) if found["recommendations"] else []
    if saved:
        saved = resolve_paths(saved, os.path.dirname(found["recommendations"]))
        source = f"saved in {found['recommendations']}"
    elif found["index_dir"]:
        saved = live_recommendations(found["index_dir"], queries, k)
        source = f"from the index {found['index_dir']}"
    if not saved:
        return None
    from amazon_visual.web.gallery import gallery_context

    per_query = [query_precision(q) for q in saved]
    known = [p for p in per_query if p is not None]
    galleries = []
    for i, (q, p) in enumerate(zip(saved, per_query), 1):
        title = gallery_title(i, q["query"])
        if p is not None:
            title += f" — precision@{len(q['results'])} {p:.2f}"
        galleries.append(gallery_context(q["query"], q["results"], title=title))
    return {
        "source": source,
        "galleries": galleries,
        "precision": sum(known) / len(known) if known else None,
        "k": max((len(q["results"]) for q in saved), default=k),
        "n_queries": len(known),
    }


def query_precision(saved_query):
    """Share of a query's look-alikes in the query's own class (None when the query has no class)."""
    label = (saved_query.get("query") or {}).get("label")
    results = saved_query.get("results") or []
    if not label or not results:
        return None
    return sum(r.get("label") == label for r in results) / len(results)


def _summary_cards(found):
    cards = []
    if found["data_dir"]:
        counts = _split_counts(found["data_dir"])
        names = _class_names_from_features(found["data_dir"])
        cards.append(
            (
                "products",
                _fmt(sum(counts.values())) if counts else "?",
                " / ".join(f"{_fmt(v)} {k}" for k, v in counts.items()),
            )
        )
        if names:
            cards.append(("classes", str(len(names)), f"chance accuracy {1 / len(names):.3f}"))
    best = None
    for r in found["runs"]:
        for split, m, _ in _eval_dirs(r):
            if split == "test" and (best is None or m.get("accuracy", 0) > best[1]):
                best = (r, m.get("accuracy", 0))
    if best:
        cfg = _read_json(os.path.join(best[0], "config.json"), {}) or {}
        cards.append(("test accuracy", _fmt(best[1]), f"{cfg.get('model', '')}, {cfg.get('image_size', '')} px"))
    recs = load_recommendations(found["recommendations"]) if found["recommendations"] else []
    known = [p for p in (query_precision(q) for q in recs) if p is not None]
    if known:
        k = max(len(q.get("results") or []) for q in recs)
        cards.append(
            (f"precision@{k}", _fmt(sum(known) / len(known)), f"look-alikes in the query's class, {len(known)} queries")
        )
    if found["index_dir"]:
        man = _read_json(os.path.join(found["index_dir"], "manifest.json"), {}) or {}
        cards.append(
            (
                "indexed items",
                _fmt(man.get("n_items", "?")),
                f"{man.get('embedding_dim', man.get('dim', '?'))}-d embeddings",
            )
        )
    return [{"k": k, "v": v, "s": s} for k, v, s in cards]


def render(found, title=None, queries=4, k=5):
    """The report's HTML for the artifacts ``find_artifacts`` found."""
    from amazon_visual.web.templating import render as render_template

    demo = found.get("demo") or {}
    title = title or (
        "amazon-visual demo" if found["kind"] == "demo" else f"amazon-visual report: {os.path.basename(found['root'])}"
    )
    subtitle = found["root"]
    if demo.get("trained_from_scratch") is True:
        subtitle += " \u2014 model trained from scratch on the embedded sample catalog"
    elif demo:
        subtitle += f" \u2014 model started from {demo.get('weights')} weights"
    runs = [section_run(run, f"run-{i + 1}") for i, run in enumerate(found["runs"])]
    nav = [("data", "Dataset"), ("compare", "Compare")]
    nav += [(r["anchor"], "Run" if len(runs) == 1 else f"Run {i + 1}") for i, r in enumerate(runs)]
    nav.append(("recommendations", "Recommendations"))
    return render_template(
        "report.html",
        title=title,
        subtitle=subtitle,
        nav=nav,
        cards=_summary_cards(found),
        dataset=section_dataset(found["data_dir"]),
        compare=section_compare(found),
        runs=runs,
        recommendations=section_recommendations(found, queries, k),
        when=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
    )


def write_report(path, out=None, title=None, index_dir=None, queries=4, k=5):
    """Write the HTML report for a RUN_DIR, a folder of runs, or a demo folder.

    ``out`` defaults to ``<path>/report.html``. The galleries show the recommendations
    saved by ``amazon-visual demo``; otherwise, when an INDEX_DIR is beside the runs (or
    given as ``index_dir``), the ``k`` look-alikes of ``queries`` indexed test products.
    Returns the path written.
    """
    found = find_artifacts(path, index_dir=index_dir)
    out = os.path.abspath(os.fspath(out)) if out else os.path.join(found["root"], "report.html")
    folder = os.path.dirname(out)
    if not os.path.isdir(folder):
        raise UserError(f"--out {out}: the folder {folder} does not exist: create it or choose another path")
    page = render(found, title, queries, k)
    tmp = f"{out}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, out)
    return out
