"""One self-contained HTML page that shows a whole experiment.

``write_report(path)`` takes a RUN_DIR (from ``amazon-visual train``), a folder of
several runs, or a demo folder (from ``amazon-visual demo``) and writes one HTML page:
the dataset's label distribution, the compare table, and for each run its learning
curves, the per-class classification report and the confusion matrix of each
evaluated split, then the recommendation galleries (a query image, then the top-k
look-alikes with their scores). Every image is embedded as a base64 ``data:`` URI and
the styling is inline, so the page works opened from ``file://`` with no network.

It only reads the stage folders (see the contracts): it imports neither TensorFlow
nor Keras, so it is quick and works on any machine that holds the folders.
"""
import base64
import csv
import datetime
import html
import json
import mimetypes
import os

from amazon_visual.errors import UserError

#: where ``amazon-visual demo`` puts each stage's folder inside its output folder
DEMO_LAYOUT = {"data": "data", "run": "run", "compare": "compare", "index": "index",
               "recommendations": "recommendations"}
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
    found = {"root": root, "kind": None, "runs": [], "data_dir": None, "compare_dir": None,
             "index_dir": None, "recommendations": None, "demo": _read_json(os.path.join(root, DEMO_MARKER))}

    if is_run_dir(root):
        found["kind"] = "run"
        found["runs"] = [root]
    else:
        subdirs = sorted(os.path.join(root, d) for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        found["runs"] = [d for d in subdirs if is_run_dir(d)]
        if not found["runs"]:  # one level deeper (e.g. demo/runs/<name>)
            for d in subdirs:
                found["runs"] += sorted(os.path.join(d, e) for e in os.listdir(d)
                                        if is_run_dir(os.path.join(d, e)))
        found["kind"] = "demo" if found["demo"] is not None else "runs"
    if not found["runs"]:
        raise UserError(f"{path}: holds no training run (config.json + labels.json): "
                        "give a RUN_DIR from 'amazon-visual train' or a folder from 'amazon-visual demo'")

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
            raise UserError(f"--index {index_dir} is not an index folder (no manifest.json): "
                            "give a folder written by 'amazon-visual index'")
    for cand in cands:
        if os.path.isfile(os.path.join(cand, "manifest.json")):
            found["index_dir"] = os.path.abspath(cand)
            break

    for cand in (os.path.join(root, DEMO_LAYOUT["recommendations"], RECOMMENDATIONS_FILE),
                 os.path.join(root, RECOMMENDATIONS_FILE)):
        if os.path.isfile(cand):
            found["recommendations"] = cand
            break
    return found


# ---------------------------------------------------------------------------
# HTML pieces
# ---------------------------------------------------------------------------
def esc(x):
    return html.escape("" if x is None else str(x), quote=True)


def data_uri(path, mime=None):
    """The file's bytes as a ``data:`` URI (so the page needs no other file)."""
    mime = mime or mimetypes.guess_type(path)[0] or "application/octet-stream"
    with open(path, "rb") as f:
        return f"data:{mime};base64,{base64.b64encode(f.read()).decode('ascii')}"


def img_tag(path, alt, cls="figure"):
    if not path or not os.path.isfile(path):
        return ""
    return f'<img class="{cls}" src="{data_uri(path)}" alt="{esc(alt)}">'


def figure(path, caption):
    tag = img_tag(path, caption)
    if not tag:
        return ""
    return f'<figure>{tag}<figcaption>{esc(caption)}</figcaption></figure>'


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


def table(headers, rows, cls="data", numeric_from=1):
    """A plain HTML table; cells from column ``numeric_from`` on are right-aligned."""
    head = "".join(f"<th{' class=num' if i >= numeric_from else ''}>{esc(h)}</th>" for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            cells.append(f"<td{' class=num' if i >= numeric_from else ''}>{esc(c)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


CSS = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --bg:#f5f7fa; --card:#fff; --accent:#2563eb; }
* { box-sizing: border-box; }
body { margin:0; font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color:var(--ink); background:var(--bg); }
header.top { background:#102a43; color:#fff; padding:28px 40px 22px; }
header.top h1 { margin:0 0 4px; font-size:26px; font-weight:600; }
header.top p { margin:0; color:#bcccdc; }
nav { background:#243b53; padding:8px 40px; position:sticky; top:0; z-index:2; }
nav a { color:#d9e2ec; text-decoration:none; margin-right:18px; font-size:14px; }
nav a:hover { color:#fff; }
main { max-width:1240px; margin:0 auto; padding:24px 40px 60px; }
section { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:20px 26px;
          margin:0 0 22px; box-shadow:0 1px 2px rgba(16,42,67,.05); }
h2 { margin:0 0 14px; font-size:20px; font-weight:600; }
h3 { margin:22px 0 10px; font-size:16px; font-weight:600; color:#243b53; }
p.note { color:var(--muted); margin:4px 0 12px; font-size:14px; }
.cards { display:flex; flex-wrap:wrap; gap:14px; margin:0 0 22px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:14px 18px; min-width:150px; flex:1; }
.card .k { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.05em; }
.card .v { font-size:22px; font-weight:600; margin-top:2px; }
.card .s { color:var(--muted); font-size:12px; }
table.data { border-collapse:collapse; font-size:14px; margin:6px 0 10px; }
table.data th, table.data td { padding:6px 12px; border-bottom:1px solid var(--line); text-align:left; }
table.data th { background:#f0f4f8; font-weight:600; color:#334e68; }
table.data td.num, table.data th.num { text-align:right; font-variant-numeric: tabular-nums; }
table.data tbody tr:hover { background:#f8fafc; }
table.data tr.avg td { color:var(--muted); }
table.cm { border-collapse:collapse; font-size:13px; font-variant-numeric: tabular-nums; }
table.cm th, table.cm td { padding:5px 8px; text-align:center; border:1px solid #fff; }
table.cm th { color:#334e68; font-weight:600; background:#f0f4f8; }
table.cm th.rot { height:92px; vertical-align:bottom; }
table.cm th.rot span { writing-mode: vertical-rl; transform: rotate(180deg); white-space:nowrap; }
table.cm td.diag { outline:2px solid #102a43; outline-offset:-2px; }
.figs { display:flex; flex-wrap:wrap; gap:18px; align-items:flex-start; }
figure { margin:0; }
figure img.figure { max-width:100%; border:1px solid var(--line); border-radius:6px; background:#fff; }
figcaption { color:var(--muted); font-size:13px; margin-top:4px; }
.scroll { overflow-x:auto; }
.kv { display:grid; grid-template-columns: max-content 1fr; gap:2px 16px; font-size:14px; margin:0 0 10px; }
.kv dt { color:var(--muted); } .kv dd { margin:0; }
.missing { color:#9b2c2c; font-size:14px; }
details { margin:10px 0; } summary { cursor:pointer; color:var(--accent); font-size:14px; }
#recommendations section.av-gallery { margin:0 0 14px; padding:12px 16px; box-shadow:none; background:#fbfcfe; }
#recommendations .av-gallery h2 { font-size:16px; font-weight:600; font-family:inherit; }
#recommendations .av-gallery figure { width:142px; }
#recommendations .av-gallery .av-img { height:140px; }
#recommendations .av-gallery figure.av-query { width:170px; }
#recommendations .av-gallery .av-query .av-img { height:170px; }
footer { color:var(--muted); font-size:12px; text-align:center; padding:0 0 30px; }
"""


def _page(title, subtitle, nav, body):
    links = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in nav)
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    from amazon_visual import __version__
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{CSS}</style></head>
<body>
<header class="top"><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>
<nav>{links}</nav>
<main>
{body}
</main>
<footer>written by amazon-visual {esc(__version__)} on {esc(when)}; every image is embedded in this file</footer>
</body></html>
"""


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
        return ('<section id="data"><h2>Dataset</h2><p class="missing">No dataset folder found '
                "(the run's config.json names none that exists here).</p></section>")
    counts = _split_counts(data_dir)
    names = _class_names_from_features(data_dir)
    build = _read_json(os.path.join(data_dir, "build_report.json"), {}) or {}
    parts = ['<section id="data"><h2>Dataset: label distribution</h2>',
             f'<p class="note">{esc(data_dir)}</p>']
    kv = [("classes", f"{len(names)}: " + ", ".join(names) if names else "")]
    for split in ("train", "validation", "test"):
        if split in counts:
            kv.append((f"{split} examples", _fmt(counts[split])))
    for key, v in build.items():
        if isinstance(v, (str, int, float)) and not isinstance(v, bool) and len(str(v)) < 120 \
                and key not in ("classes",):
            kv.append((key.replace("_", " "), _fmt(v) if not isinstance(v, str) else v))
    parts.append('<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in kv if v != "")
                 + "</dl>")
    fig = figure(os.path.join(data_dir, "label_distribution.png"), "examples per class and split")
    if fig:
        parts.append(f'<div class="figs">{fig}</div>')
    else:
        parts.append('<p class="missing">label_distribution.png not found in the dataset folder.</p>')
    per_class = _per_class_counts(build)
    if per_class:
        splits = [s for s in ("train", "validation", "test") if any(s in d for d in per_class.values())]
        rows = [[c] + [_fmt(per_class[c].get(s, 0)) for s in splits] +
                [_fmt(sum(per_class[c].get(s, 0) for s in splits))] for c in per_class]
        parts.append(table(["class"] + splits + ["total"], rows))
    parts.append("</section>")
    return "".join(parts)


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
    s = {"run": os.path.basename(os.path.normpath(run_dir)), "model": cfg.get("model"),
         "weights": cfg.get("weights"), "image size": cfg.get("image_size"),
         "epochs": len(hist), "best val accuracy": max(val) if val else None}
    for split, m, _ in _eval_dirs(run_dir):
        s[f"{split} accuracy"] = m.get("accuracy")
    return s


def section_compare(found):
    parts = ['<section id="compare"><h2>Compare</h2>']
    rows_csv = _read_csv(os.path.join(found["compare_dir"], "compare.csv")) if found["compare_dir"] else []
    if rows_csv:
        headers = list(rows_csv[0].keys())
        parts.append(f'<p class="note">from {esc(os.path.join(found["compare_dir"], "compare.csv"))}</p>')
        rows = [[r.get(h, "") if i == 0 else _fmt(r.get(h, "")) for i, h in enumerate(headers)] for r in rows_csv]
        parts.append('<div class="scroll">' + table(headers, rows) + "</div>")
        fig = figure(os.path.join(found["compare_dir"], "learning_curves.png"), "learning curves of the compared runs")
        if fig and len(rows_csv) > 1:  # one run: its own section shows the same curves
            parts.append(f'<div class="figs">{fig}</div>')
    else:
        summaries = [run_summary(r) for r in found["runs"]]
        headers = []
        for s in summaries:
            headers += [k for k in s if k not in headers]
        rows = [[s.get(h) if i == 0 else (_fmt(s.get(h)) if s.get(h) is not None else "")
                 for i, h in enumerate(headers)] for s in summaries]
        parts.append('<div class="scroll">' + table(headers, rows) + "</div>")
    parts.append("</section>")
    return "".join(parts)


def classification_table(report):
    """sklearn's ``classification_report(output_dict=True)`` as an HTML table."""
    headers = ["class", "precision", "recall", "f1-score", "support"]
    rows, avg = [], []
    for name, v in report.items():
        if name == "accuracy":
            continue
        if not isinstance(v, dict):
            continue
        row = [name] + [_fmt(v.get(h)) if h != "support" else _fmt(int(v.get(h, 0))) for h in headers[1:]]
        (avg if name.endswith(" avg") else rows).append(row)
    html_rows = [f"<tr>{''.join(f'<td{cls}>{esc(c)}</td>' for c, cls in zip(r, [''] + [' class=num'] * 4))}</tr>"
                 for r in rows]
    if "accuracy" in report:
        total = sum(int(report[n].get("support", 0)) for n in report if isinstance(report[n], dict)
                    and not n.endswith(" avg"))
        html_rows.append(f'<tr class="avg"><td>accuracy</td><td class=num></td><td class=num></td>'
                         f'<td class=num>{_fmt(report["accuracy"])}</td><td class=num>{_fmt(total)}</td></tr>')
    html_rows += [f"<tr class=\"avg\">{''.join(f'<td{cls}>{esc(c)}</td>' for c, cls in zip(r, [''] + [' class=num'] * 4))}</tr>"
                  for r in avg]
    head = "".join(f"<th{' class=num' if i else ''}>{h}</th>" for i, h in enumerate(headers))
    return f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{"".join(html_rows)}</tbody></table>'


def confusion_table(matrix, labels):
    """The confusion matrix as a heat-map table: rows true class, columns predicted class."""
    if not matrix:
        return ""
    head = "<th>true \\ predicted</th>" + "".join(f'<th class="rot"><span>{esc(l)}</span></th>' for l in labels)
    body = []
    for i, row in enumerate(matrix):
        total = sum(row) or 1
        cells = []
        for j, n in enumerate(row):
            a = n / total
            color = f"rgba(37,99,235,{0.08 + 0.85 * a:.2f})" if n else "#f8fafc"
            ink = "#fff" if a > 0.5 else "#1f2933"
            cls = ' class="diag"' if i == j else ""
            cells.append(f'<td{cls} style="background:{color};color:{ink}" title="{esc(labels[i])} as '
                         f'{esc(labels[j])}: {n}">{n}</td>')
        body.append(f"<tr><th>{esc(labels[i] if i < len(labels) else i)}</th>{''.join(cells)}</tr>")
    return f'<table class="cm"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


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
        ax.grid(alpha=.3)
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
    parts = [f'<section id="{esc(anchor)}"><h2>Training run: {esc(cfg.get("model", "?"))}'
             + (f' ({esc(name)})' if name not in ("run", cfg.get("model")) else "") + "</h2>",
             f'<p class="note">{esc(run_dir)}</p>']
    keys = ["model", "weights", "image_size", "preprocessing", "embedding_dim", "num_classes", "epochs",
            "batch_size", "learning_rate", "optimizer", "strategy", "fine_tune", "seed"]
    kv = [(k.replace("_", " "), cfg[k]) for k in keys if k in cfg and not isinstance(cfg[k], (dict, list))]
    kv = [(k, "none (trained from scratch)" if k == "weights" and v in (None, "none") else v) for k, v in kv]
    kv = [(k, v) for k, v in kv if v is not None]
    if kv:
        parts.append('<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in kv) + "</dl>")

    parts.append("<h3>Learning curves</h3>")
    lc = _learning_curves_png(run_dir)
    tmp_lc = lc if lc and not lc.startswith(run_dir) else None
    fig = figure(lc, "loss and accuracy per epoch (train and validation)")
    if tmp_lc:
        os.remove(tmp_lc)
    parts.append(f'<div class="figs">{fig}</div>' if fig else '<p class="missing">no history.csv in the run.</p>')

    evals = _eval_dirs(run_dir)
    if not evals:
        parts.append('<p class="missing">No evaluation yet: run <code>amazon-visual evaluate</code> on this run.</p>')
    for split, m, folder in evals:
        lab = m.get("labels") or labels
        n = len(lab) or 1
        parts.append(f'<h3>Evaluation on the {esc(split)} split: accuracy {_fmt(m.get("accuracy"))} '
                     f'<span class="note">(chance {1 / n:.3f})</span></h3>')
        rep = m.get("classification_report")
        figs = []
        if isinstance(rep, dict):
            figs.append(f'<div><div class="note">per-class classification report</div>{classification_table(rep)}</div>')
        cm = m.get("confusion_matrix")
        if cm:
            figs.append(f'<div class="scroll"><div class="note">confusion matrix (rows: true class)</div>'
                        f'{confusion_table(cm, lab)}</div>')
        parts.append(f'<div class="figs">{"".join(figs)}</div>')
        mis = figure(os.path.join(folder, "misclassified.png"), f"misclassified examples ({split})")
        if mis:
            parts.append(f'<div class="figs">{mis}</div>')
        cm_png = figure(os.path.join(folder, "confusion_matrix.png"), f"confusion matrix ({split})")
        if cm_png:
            parts.append(f'<details><summary>the confusion matrix as a figure</summary><div class="figs">{cm_png}'
                         "</div></details>")
    parts.append("</section>")
    return "".join(parts)


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
    parts = ['<section id="recommendations"><h2>Recommendations</h2>']
    saved = load_recommendations(found["recommendations"]) if found["recommendations"] else []
    if saved:
        saved = resolve_paths(saved, os.path.dirname(found["recommendations"]))
        source = f"saved in {found['recommendations']}"
    elif found["index_dir"]:
        saved = live_recommendations(found["index_dir"], queries, k)
        source = f"from the index {found['index_dir']}"
    queries = saved
    if not queries:
        parts.append('<p class="missing">No saved recommendations: <code>amazon-visual demo</code> saves some; '
                     "for a run, use <code>amazon-visual index</code> and <code>amazon-visual recommend</code>."
                     "</p></section>")
        return "".join(parts)
    from amazon_visual.web.gallery import gallery_fragment

    parts.append('<p class="note">For each query product (framed), the indexed products that look most alike, '
                 "best first, with their cosine similarity to the query in embedding space "
                 f"({esc(source)}).</p>")
    for i, q in enumerate(queries, 1):
        parts.append(gallery_fragment(q["query"], q["results"], title=gallery_title(i, q["query"])))
    parts.append("</section>")
    return "".join(parts)


def _summary_cards(found):
    cards = []
    if found["data_dir"]:
        counts = _split_counts(found["data_dir"])
        names = _class_names_from_features(found["data_dir"])
        cards.append(("products", _fmt(sum(counts.values())) if counts else "?",
                      " / ".join(f"{_fmt(v)} {k}" for k, v in counts.items())))
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
    if found["index_dir"]:
        man = _read_json(os.path.join(found["index_dir"], "manifest.json"), {}) or {}
        cards.append(("indexed items", _fmt(man.get("n_items", "?")), f"{man.get('embedding_dim', man.get('dim', '?'))}-d embeddings"))
    if not cards:
        return ""
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{esc(v)}</div><div class="s">{esc(s)}</div></div>'
        for k, v, s in cards) + "</div>"


def render(found, title=None, queries=4, k=5):
    """The report's HTML for the artifacts ``find_artifacts`` found."""
    demo = found.get("demo") or {}
    title = title or ("amazon-visual demo" if found["kind"] == "demo" else
                      f"amazon-visual report: {os.path.basename(found['root'])}")
    subtitle = found["root"]
    if demo.get("trained_from_scratch") is True:
        subtitle += " \u2014 model trained from scratch on the embedded sample catalog"
    elif demo:
        subtitle += f" \u2014 model started from {demo.get('weights')} weights"
    nav = [("data", "Dataset"), ("compare", "Compare")]
    body = [_summary_cards(found), section_dataset(found["data_dir"]), section_compare(found)]
    for i, run in enumerate(found["runs"]):
        anchor = f"run-{i + 1}"
        nav.append((anchor, "Run" if len(found["runs"]) == 1 else f"Run {i + 1}"))
        body.append(section_run(run, anchor))
    nav.append(("recommendations", "Recommendations"))
    body.append(section_recommendations(found, queries, k))
    return _page(title, subtitle, nav, "\n".join(b for b in body if b))


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
