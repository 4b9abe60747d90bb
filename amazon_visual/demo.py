"""``amazon-visual demo``: the whole chain on the embedded sample catalog, in about two minutes.

    from amazon_visual.demo import run_demo
    summary = run_demo("amazon-visual-demo")      # -> summary["report"] is the HTML page

Stages, each writing its own folder inside ``out_dir`` (the same folders the separate
commands write):

1. ``data/``             build-data from the sample's 2023-format metadata and its photos
2. ``run/``              train: MobileNetV2 from ImageNet weights when Keras can get them
                         (its cache or a download), else a narrow VGG16-BN from scratch
3. ``run/eval_test/``    evaluate on the test split; ``compare/`` the compare table
4. ``index/``            embed every product with the trained model, Annoy index
5. ``recommendations/``  look-alikes of a few test products (JSON + one HTML gallery each)
6. ``report.html``       one page for the whole experiment

``demo.json`` marks the folder as a demo's and records the options and the stages
done: rerunning the same command skips finished stages; other options start over
(only the demo's own folders are replaced; a non-empty folder that is not a demo's is
refused).

The train stage does a fixed amount of work (the presets' epochs), not a time budget, so the
demo ends with the same model on a quiet or a busy machine; only the time differs. The
expected time is printed up front; ``minutes`` (``--minutes``) still sets a budget when asked.
"""

import contextlib
import json
import os
import shutil
import sys
import time

from amazon_visual.errors import UserError
from amazon_visual.web.report import DEMO_LAYOUT, DEMO_MARKER, RECOMMENDATIONS_FILE, choose_queries, write_report

DEFAULT_OUT = "amazon-visual-demo"
#: from scratch (offline, or --weights none): VGG16 with batch norm at 64 px, batch 32, and its recipe
#: (docs "Recipes"); 18 epochs: what the former 1.5-minute budget reached on a quiet 2-core CPU
SCRATCH = {"model": "vgg16_bn", "image_size": 64, "epochs": 18, "batch_size": 32, "model_kwargs": {}}
#: with ImageNet weights: MobileNetV2, 25 epochs of the head on cached features, then 3 of fine-tuning
#: (docs "Transfer learning")
PRETRAINED = {"model": "mobilenet_v2", "image_size": 224, "epochs": 28, "head_epochs": 25, "model_kwargs": {}}
#: seconds on a quiet 2-core CPU, for the expected time printed up front: the stages other than training
#: (with the head phase's feature cache), one head epoch on cached features, one training epoch; estimated
#: from the quiet runs of the 1.5-minute budget (BENCHMARKS.md "The demo", "The demo, a fixed amount of work")
EXPECTED = {
    "vgg16_bn": {"other": 20.0, "head_epoch": 0.0, "epoch": 5.0},
    "mobilenet_v2": {"other": 80.0, "head_epoch": 0.3, "epoch": 15.0},
}
#: train / validation / test fractions: enough test products (about 60) for a steady accuracy
SPLITS = (0.7, 0.15, 0.15)
STAGES = ("build-data", "train", "evaluate", "index", "recommend", "report")
_OWN = [DEMO_LAYOUT[k] for k in ("data", "run", "compare", "index", "recommendations")] + ["report.html"]


def _say(msg):
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


from amazon_visual.atomic import write_json as _write_json  # noqa: E402


def _check_out(out_dir):
    """UserError when ``out_dir`` cannot hold a demo; returns its absolute path."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out {out_dir} is a file: give a folder for the demo")
    parent = os.path.dirname(out_dir)
    if not os.path.isdir(parent):
        raise UserError(f"--out {out_dir}: its parent folder {parent} does not exist: create it first")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, DEMO_MARKER)):
        raise UserError(
            f"--out {out_dir} is not empty and is not a demo folder: "
            "choose a new or empty folder (the demo never overwrites other files)"
        )
    return out_dir


def _prepare(out_dir, options):
    """Create or reuse ``out_dir``; returns the state (stages done) to resume from."""
    out_dir = _check_out(out_dir)
    marker = os.path.join(out_dir, DEMO_MARKER)
    state = None
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        try:
            with open(marker, encoding="utf-8") as f:
                state = json.load(f)
        except (OSError, ValueError):
            state = None
    if state and state.get("options") == options:
        return out_dir, state
    # a fresh start: remove only what the demo itself writes
    for name in _OWN:
        p = os.path.join(out_dir, name)
        if os.path.isdir(p):
            shutil.rmtree(p)
        elif os.path.isfile(p):
            os.remove(p)
    os.makedirs(out_dir, exist_ok=True)
    state = {"options": options, "stages_done": [], "status": "running"}
    _write_json(marker, state)
    return out_dir, state


def _pretrained_problem(model, image_size, weights, model_kwargs):
    """None when Keras can load the pretrained weights (from its cache, a download or a
    file), else the reason in a few words."""
    from amazon_visual import models

    try:
        with contextlib.redirect_stdout(sys.stderr):  # Keras's "Downloading data from ..." line is a log
            models.build(model, 10, image_size, weights=weights, **model_kwargs)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001  (Keras raises plain Exceptions for failed downloads)
        return str(e).splitlines()[0][:160] if str(e) else type(e).__name__
    return None


def _check_pretrained(model, image_size, weights, model_kwargs):
    """Fail early, with what to do, when Keras cannot get explicitly asked-for weights."""
    problem = _pretrained_problem(model, image_size, weights, model_kwargs)
    if problem:
        raise UserError(
            f"--weights {weights}: Keras could not load the pretrained {model} weights "
            f"({problem}): rerun with --weights none to train from scratch, "
            "or pass a downloaded weights file with --weights PATH"
        )


def _choose_weights(weights, model):
    """--weights auto: "imagenet" when Keras can get MobileNetV2's weights (cache or download),
    else "none" with one line that says so."""
    if str(weights).lower() != "auto":
        return weights
    name = (model or PRETRAINED["model"]).strip().lower().replace("-", "_")
    size = PRETRAINED["image_size"]
    problem = _pretrained_problem(name, size, "imagenet", {})
    if problem is None:
        return "imagenet"
    _say(
        f"ImageNet weights for {name} are not available (offline and not in Keras's cache: {problem[:90]}): "
        f"training VGG16-BN from scratch instead"
    )
    return "none"


def expected_seconds(model, image_size, epochs, head_epochs=None):
    """Seconds the demo should take on a quiet 2-core laptop CPU, or None when not measured for this
    choice (another model or image size than the preset's)."""
    preset = PRETRAINED if model == PRETRAINED["model"] else SCRATCH
    cost = EXPECTED.get(model)
    if cost is None or model != preset["model"] or int(image_size) != preset["image_size"]:
        return None
    if head_epochs is None:  # train's default: a third of the epochs on the head (pretrained runs only)
        head_epochs = epochs // 3 if cost["head_epoch"] else 0
    head = min(int(head_epochs), epochs)
    return cost["other"] + head * cost["head_epoch"] + (epochs - head) * cost["epoch"]


def _say_expected(seconds, minutes):
    if minutes:
        _say(f"expected time: {minutes:g} minutes of training at most (--minutes), plus the other stages")
    elif seconds is None:
        _say("expected time: not measured for this model and image size (the presets take about 2 minutes)")
    else:
        _say(
            f"expected time: about {seconds / 60:.1f} minutes on a quiet 2-core laptop CPU; a busy or slower "
            "machine takes longer and ends with the same model (a fixed number of epochs)"
        )


def _rel(path, base):
    return os.path.relpath(path, base) if path else None


def recommend_samples(index_dir, out_dir, queries=4, k=5):
    """Recommend for ``queries`` test products; write ``recommendations.json`` and one HTML gallery each."""
    from amazon_visual.retrieval.recommend import Recommender
    from amazon_visual.web.gallery import write_gallery

    os.makedirs(out_dir, exist_ok=True)
    saved = []
    with Recommender.load(index_dir) as rec:
        for i, asin in enumerate(choose_queries(rec.index.items, queries), 1):
            res = rec.recommend(asin=asin, k=k)
            query, results = res["query"], res["results"]
            title = f"Look-alikes of {query.get('title') or asin}"
            page = os.path.join(out_dir, f"gallery-{i}-{asin}.html")
            write_gallery(page, query, results, title=title)
            q = dict(query, thumb=_rel(query.get("thumb"), out_dir), gallery=os.path.basename(page))
            rs = [dict(r, thumb=_rel(r.get("thumb"), out_dir)) for r in results]
            same = [r.get("label") == query.get("label") for r in results]
            saved.append({"query": q, "results": rs, "precision_at_k": sum(same) / k})
    _write_json(
        os.path.join(out_dir, RECOMMENDATIONS_FILE),
        {"index_dir": os.path.abspath(index_dir), "k": k, "queries": saved, "precision_at_k": precision_at_k(saved)},
    )
    return saved


def precision_at_k(saved):
    """Mean over the demo's queries of the share of look-alikes of the query's own class."""
    return sum(q["precision_at_k"] for q in saved) / len(saved) if saved else None


def run_demo(
    out_dir=DEFAULT_OUT,
    model=None,
    weights="auto",
    epochs=None,
    image_size=None,
    queries=4,
    k=5,
    quick=False,
    batch_size=None,
    seed=0,
    progress=True,
    minutes=None,
):
    """Run the whole chain on the embedded sample catalog into ``out_dir``; returns a summary dict.

    ``weights``: ``"auto"`` (the default) starts from ImageNet weights when Keras can get
    them (its cache or a download) and says in one line when it cannot, then trains from
    scratch; ``"imagenet"`` insists on them (a UserError says what to do when they cannot be
    had); ``"none"`` trains from scratch; or a weights file. ``epochs`` / ``image_size`` /
    ``model`` override the defaults for that choice. The train stage runs a fixed number of epochs
    (so the result does not depend on the machine's speed); ``minutes`` adds a time budget to it.
    ``quick``: one epoch (for tests; every stage still runs).
    """
    from amazon_visual import sample
    from amazon_visual.models import applications

    t0 = time.time()
    _check_out(out_dir)
    weights = _choose_weights(weights, model)
    weights_n = applications.normalize_weights(weights)  # UserError for a missing file
    scratch = weights_n is None
    preset = SCRATCH if scratch else PRETRAINED
    model = (model or preset["model"]).strip().lower().replace("-", "_")
    model_kwargs = dict(preset["model_kwargs"]) if model == preset["model"] else {}
    image_size = int(image_size or preset["image_size"])
    # the head on cached features costs a fraction of a second an epoch: give it its own epochs
    head_epochs = preset.get("head_epochs") if model == preset["model"] and epochs is None and not quick else None
    if batch_size is None and model == preset["model"]:
        batch_size = preset.get("batch_size")
    epochs = 1 if quick and epochs is None else int(epochs or preset["epochs"])
    if epochs < 1:
        raise UserError(f"--epochs {epochs}: give at least 1")
    if minutes is not None and not minutes > 0:
        raise UserError(
            f"--minutes {minutes}: give a positive number of minutes, or leave it out "
            "(the demo then trains its fixed number of epochs)"
        )
    if queries < 1 or k < 1:
        raise UserError("--queries and -k must be at least 1")
    options = {
        "model": model,
        "weights": weights_n if weights_n in (None, "imagenet") else os.path.abspath(weights_n),
        "epochs": epochs,
        "image_size": image_size,
        "batch_size": batch_size,
        "seed": seed,
        "queries": queries,
        "k": k,
        "model_kwargs": model_kwargs,
        "minutes": float(minutes) if minutes else None,
    }
    out_dir, state = _prepare(out_dir, options)
    paths = {key: os.path.join(out_dir, sub) for key, sub in DEMO_LAYOUT.items()}
    marker = os.path.join(out_dir, DEMO_MARKER)
    done = state.setdefault("stages_done", [])
    results = state.setdefault("results", {})

    def finish(stage, **info):
        done.append(stage)
        results[stage] = info
        _write_json(marker, state)

    products = len(sample.products())
    if scratch:
        _say(
            f"training {model} FROM SCRATCH (random weights) at {image_size} px for {epochs} epochs "
            f"on the embedded sample ({products} products, {len(sample.class_names())} classes); "
            "pass --weights imagenet to start from pretrained weights"
        )
    else:
        _say(
            f"transfer learning: {model} from {options['weights']} weights at {image_size} px (head on cached "
            f"features, then fine-tuning) on the embedded sample ({products} products); --weights none trains "
            "from scratch"
        )
    _say(f"output folder: {out_dir}")
    _say_expected(expected_seconds(model, image_size, epochs, head_epochs), options["minutes"])

    # Keras and the stages print progress to stdout: keep stdout for the command's own result.
    with contextlib.redirect_stdout(sys.stderr):
        n = len(STAGES)
        if not scratch and "train" not in done:  # fail before any work when the weights cannot be had
            _check_pretrained(model, image_size, weights_n, model_kwargs)
        if "build-data" not in done:
            _say(f"[1/{n}] build-data: TFRecord dataset from {sample.metadata_path()}")
            from tfrecords_builder.build import build_data

            t = time.time()
            if os.path.isdir(paths["data"]):  # an interrupted build: start it again (seconds)
                shutil.rmtree(paths["data"])
            # the photos are kept at their size (<= 160 px) so the galleries' thumbnails stay sharp;
            # training resizes them to image_size on the fly
            rep = build_data(
                sample.metadata_path(),
                paths["data"],
                images_dir=sample.images_dir(),
                categories=sample.class_names(),
                image_size=max(image_size, 160),
                seed=seed,
                splits=SPLITS,
                workers=1,
                progress=progress,
            )  # 1,000 small photos: no process pool needed
            finish(
                "build-data",
                seconds=round(time.time() - t, 1),
                totals=rep.get("totals") if isinstance(rep, dict) else None,
            )
        else:
            _say(f"[1/{n}] build-data: done before, kept {paths['data']}")

        if "train" not in done:
            _say(
                f"[2/{n}] train: {model} ({'from scratch' if scratch else 'pretrained ' + str(options['weights'])}),"
                f" {epochs} epochs" + (f", {options['minutes']:g} minutes at most" if options["minutes"] else "")
            )
            from amazon_visual.training import train

            t = time.time()
            summ = train(
                paths["data"],
                model=model,
                out=paths["run"],
                weights=weights_n or "none",
                image_size=image_size,
                epochs=epochs,
                head_epochs=head_epochs,
                batch_size=batch_size,
                seed=seed,
                early_stopping=0,
                max_minutes=options["minutes"],
                model_kwargs=model_kwargs or None,
                quiet=not progress,
            )
            finish(
                "train",
                seconds=round(time.time() - t, 1),
                epochs_run=summ.get("epochs_run"),
                best_val_accuracy=summ.get("best_val_accuracy"),
            )
        else:
            _say(f"[2/{n}] train: done before, kept {paths['run']}")

        if "evaluate" not in done:
            _say(f"[3/{n}] evaluate: test split, then the compare table over train/validation/test")
            from amazon_visual.evaluation import compare, evaluate

            t = time.time()
            ev = evaluate(paths["run"], paths["data"], split="test")
            compare([paths["run"]], paths["data"], out=paths["compare"], write_evaluations=False)
            finish(
                "evaluate",
                seconds=round(time.time() - t, 1),
                test_accuracy=ev["accuracy"],
                n_test=ev.get("n"),
                chance_accuracy=1.0 / max(1, len(ev.get("labels") or [])),
            )
            _say(f"test accuracy {ev['accuracy']:.3f} (chance {1.0 / max(1, len(ev.get('labels') or [])):.3f})")
        else:
            _say(f"[3/{n}] evaluate: done before")

        if "index" not in done:
            _say(f"[4/{n}] index: embed every product with the trained model and build the Annoy index")
            from amazon_visual.retrieval.index import build_index

            t = time.time()
            man = build_index(paths["data"], paths["index"], run_dir=paths["run"], overwrite=True, progress=progress)
            finish("index", seconds=round(time.time() - t, 1), n_items=man.get("n_items"))
        else:
            _say(f"[4/{n}] index: done before, kept {paths['index']}")

        if "recommend" not in done:
            _say(f"[5/{n}] recommend: {k} look-alikes for {queries} test products")
            t = time.time()
            saved = recommend_samples(paths["index"], paths["recommendations"], queries=queries, k=k)
            finish(
                "recommend",
                seconds=round(time.time() - t, 1),
                queries=[q["query"]["asin"] for q in saved],
                precision_at_k=precision_at_k(saved),
                k=k,
            )
            _say(
                f"precision@{k} of the demo's queries: {precision_at_k(saved):.2f} "
                f"(share of look-alikes in the query's class)"
            )
        else:
            _say(f"[5/{n}] recommend: done before")

        _say(f"[6/{n}] report: one HTML page for the whole experiment")
        t = time.time()
        state["trained_from_scratch"] = scratch
        state["weights"] = options["weights"] or "none"
        _write_json(marker, state)
        report = write_report(out_dir)
        if "report" not in done:
            done.append("report")
        results["report"] = {"seconds": round(time.time() - t, 1)}

    seconds = time.time() - t0
    state["status"] = "complete"
    _write_json(marker, state)
    ev = results.get("evaluate", {})
    recs = os.path.join(paths["recommendations"], RECOMMENDATIONS_FILE)
    galleries = sorted(
        os.path.join(paths["recommendations"], f) for f in os.listdir(paths["recommendations"]) if f.endswith(".html")
    )
    _say(f"finished in {seconds:.0f} s")
    return {
        "out_dir": out_dir,
        "report": report,
        "model": model,
        "weights": options["weights"] or "none",
        "trained_from_scratch": scratch,
        "image_size": image_size,
        "epochs": epochs,
        "epochs_run": results.get("train", {}).get("epochs_run"),
        "test_accuracy": ev.get("test_accuracy"),
        "chance_accuracy": ev.get("chance_accuracy"),
        "precision_at_k": results.get("recommend", {}).get("precision_at_k"),
        "k": k,
        "data_dir": paths["data"],
        "run_dir": paths["run"],
        "compare_dir": paths["compare"],
        "index_dir": paths["index"],
        "recommendations": recs,
        "galleries": galleries,
        "stage_seconds": {s: results.get(s, {}).get("seconds") for s in STAGES},
        "seconds": round(seconds, 1),
    }
