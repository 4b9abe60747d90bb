"""``amazon-visual audit`` against injected ground truth, with its baselines, and at scale.

    python benchmarks/audit.py --work /tmp/av_audit [--datasets clothing-small,sample] [--scale 100000,1000000]

Quality (per dataset: ../shared/datasets/clothing-small and the packaged sample). Made
reproducibly (``--seed``): 3 % of the products are added again as re-encodes (JPEG quality
60-90, resized to 50-100 %), 3 % as near copies (a crop to 80-95 % of each side, brightness
+-20 %, a text overlay), each under a new ASIN with the original's class; 5 % of the other
products have their label moved to another class. The catalog is built with ``build_data``
(224 px), indexed with the MobileNetV2 ImageNet backbone (``../shared/weights`` through
KERAS_HOME, 160 px, raw pooled features), and audited with ``--data``. Then:

- duplicates, pair-level: every pair of members of a group is a predicted pair; it is right when
  both are the same product (an original and its copy). Recall per kind: copies grouped with
  their original. Precision per kind: right pairs among the predicted pairs that hold a copy of
  that kind; overall: right pairs among all predicted pairs (pairs of two originals, the clean
  set's own findings, count as wrong there and are listed for a look);
- baselines in the same run: pHash alone over all pairs (Hamming <= 4 and <= 10, imagededup's
  default), cosine of the same embeddings alone over all pairs (>= 0.90 and >= 0.95);
- a sweep of the second look's thresholds (``near_aligned``, ``colour``) on the looked-at pairs;
- misfiled: the flagged products against the moved labels; baselines: cleanlab's default filter
  (``find_label_issues``) on the same out-of-fold probabilities of the raw backbone features, and
  the oracle cut (the N worst by label quality, N = the true number moved).

Scale (``--scale``): synthetic embeddings (``--dim`` 128, 20 classes, 1 % near copies, 5 % labels
moved) in an INDEX_DIR with an Annoy index; timed: the duplicate stage without photos (ANN
neighbours, candidate pairs, groups) and the misfiled stage. The second look's cost per pair
is measured on the real photos above.
"""

import argparse
import csv
import io
import json
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.path.join(ROOT, "..", "shared")
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

RE, NEAR = "re", "near"


# --------------------------------------------------------------------------
# the catalogs and the injected ground truth
# --------------------------------------------------------------------------
def clothing_small():
    src = os.path.join(SHARED, "datasets", "clothing-small")
    with open(os.path.join(src, "labels.csv"), newline="", encoding="utf-8") as f:
        return [
            (os.path.splitext(r["image"])[0], r["label"], os.path.join(src, "images", r["image"]))
            for r in csv.DictReader(f)
        ]


def packaged_sample():
    import gzip

    src = os.path.join(ROOT, "amazon_visual", "sample")
    out = []
    with gzip.open(os.path.join(src, "meta_sample.jsonl.gz"), "rt", encoding="utf-8") as f:
        for line in f:
            p = json.loads(line)
            out.append((p["parent_asin"], p["categories"][-1], os.path.join(src, "images", p["images"][0]["large"])))
    return out


def reencode(img, rng):
    f = rng.uniform(0.5, 1.0)
    img = img.resize((max(8, round(img.width * f)), max(8, round(img.height * f))))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=rng.randint(60, 90))
    return buf.getvalue()


def near_copy(img, rng):
    from PIL import ImageDraw, ImageEnhance

    fx, fy = rng.uniform(0.8, 0.95), rng.uniform(0.8, 0.95)
    w, h = round(img.width * fx), round(img.height * fy)
    x, y = rng.randint(0, img.width - w), rng.randint(0, img.height - h)
    img = ImageEnhance.Brightness(img.crop((x, y, x + w, y + h))).enhance(rng.uniform(0.8, 1.2))
    draw = ImageDraw.Draw(img)
    text = rng.choice(["SALE -30%", "NEW", "BEST PRICE", "www.shop.example", "2 FOR 1"])
    draw.text(
        (rng.randint(2, max(3, w // 3)), rng.randint(2, max(3, h - 16))),
        text,
        fill=rng.choice([(255, 0, 0), (0, 0, 0), (255, 255, 255), (20, 60, 200)]),
    )
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def inject(items, folder, seed, share_re=0.03, share_near=0.03, share_moved=0.05):
    """``(catalog rows (asin, label, file name), truth)``; photos (links and copies) in ``folder``."""
    from PIL import Image

    rng = random.Random(seed)
    os.makedirs(folder, exist_ok=True)
    classes = sorted({lab for _, lab, _ in items})
    order = list(range(len(items)))
    rng.shuffle(order)
    n_re, n_near, n_moved = (
        round(share_re * len(items)),
        round(share_near * len(items)),
        round(share_moved * len(items)),
    )
    copied_re, copied_near = order[:n_re], order[n_re : n_re + n_near]
    moved = set(order[n_re + n_near : n_re + n_near + n_moved])
    rows, truth = [], {"copies": {}, "moved": {}}
    for t, (asin, label, path) in enumerate(items):
        name = f"{asin}{os.path.splitext(path)[1]}"
        link = os.path.join(folder, name)
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(path), link)
        filed = label
        if t in moved:
            filed = rng.choice([c for c in classes if c != label])
            truth["moved"][asin] = {"true": label, "filed": filed}
        rows.append((asin, filed, name))
    for kind, chosen, make in ((RE, copied_re, reencode), (NEAR, copied_near, near_copy)):
        for c, t in enumerate(chosen):
            asin, label, path = items[t]
            copy = f"Z{kind.upper()}{c:05d}"
            with Image.open(path) as img:
                data = make(img.convert("RGB"), rng)
            with open(os.path.join(folder, f"{copy}.jpg"), "wb") as f:
                f.write(data)
            rows.append((copy, label, f"{copy}.jpg"))
            truth["copies"][copy] = {"original": asin, "kind": kind}
    return rows, truth


def build(work, name, rows, folder, image_size):
    from amazon_visual.retrieval.index import build_index
    from tfrecords_builder.build import build_data

    meta = os.path.join(work, f"{name}-meta.jsonl")
    with open(meta, "w", encoding="utf-8") as f:
        for asin, label, file_name in rows:
            f.write(
                json.dumps(
                    {
                        "asin": asin,
                        "title": f"{label} {asin}",
                        "category": ["Clothing, Shoes & Jewelry", "Clothing", label],
                        "imageURL": [file_name],
                    }
                )
                + "\n"
            )
    data_dir, index_dir = os.path.join(work, f"{name}-data"), os.path.join(work, f"{name}-index")
    t0 = time.perf_counter()
    if not os.path.isfile(os.path.join(data_dir, "dataset_info.json")):
        build_data(
            meta,
            data_dir,
            images_dir=folder,
            categories=sorted({r[1] for r in rows}),
            image_size=224,
            seed=0,
            progress=False,
        )
    t1 = time.perf_counter()
    if not os.path.isfile(os.path.join(index_dir, "manifest.json")):
        build_index(
            data_dir,
            index_dir,
            backbone="mobilenet_v2",
            weights="imagenet",
            image_size=image_size,
            batch_size=32,
            progress=False,
            overwrite=True,
        )
    return data_dir, index_dir, {"build_data_s": round(t1 - t0, 1), "index_s": round(time.perf_counter() - t1, 1)}


# --------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------
def source(asin, truth):
    c = truth["copies"].get(asin)
    return c["original"] if c else asin


def score_pairs(pairs, truth, grouped=None):
    """P/R per kind of a set of predicted ``(asin, asin)`` pairs; ``grouped``: asin -> group (recall by group)."""
    out = {}
    for kind in (RE, NEAR):
        copies = [a for a, c in truth["copies"].items() if c["kind"] == kind]
        if grouped is not None:
            hit = [
                grouped.get(a) is not None and grouped.get(a) == grouped.get(truth["copies"][a]["original"])
                for a in copies
            ]
        else:
            hit = [tuple(sorted((a, truth["copies"][a]["original"]))) in pairs for a in copies]
        touching = [p for p in pairs if any(truth["copies"].get(x, {}).get("kind") == kind for x in p)]
        right = sum(source(a, truth) == source(b, truth) for a, b in touching)
        out[kind] = {
            "precision": round(right / len(touching), 4) if touching else None,
            "recall": round(sum(hit) / len(copies), 4) if copies else None,
            "pairs": len(touching),
        }
    right = sum(source(a, truth) == source(b, truth) for a, b in pairs)
    clean = [p for p in pairs if not any(x in truth["copies"] for x in p)]
    out["all"] = {
        "pairs": len(pairs),
        "precision": round(right / len(pairs), 4) if pairs else None,
        "clean_set_pairs": len(clean),
    }
    return out


def group_pairs(dup_rows):
    groups = {}
    for r in dup_rows:
        groups.setdefault(r["group"], []).append(r["asin"])
    pairs = {tuple(sorted((a, b))) for m in groups.values() for i, a in enumerate(m) for b in m[i + 1 :]}
    return pairs, {r["asin"]: r["group"] for r in dup_rows}


def baseline_pairs(index, looks_all, truth):
    """pHash alone and cosine alone over all pairs (the baselines)."""
    asins = index.items["asin"].tolist()
    hashes = np.array([int(str(looks_all[i].phash), 16) for i in range(len(asins))], dtype=np.uint64)
    emb = np.asarray(index.embeddings, np.float32)
    out = {}
    for name, mask_fn in (
        ("phash<=4", lambda lo, hi: _ham(hashes, lo, hi) <= 4),
        ("phash<=10", lambda lo, hi: _ham(hashes, lo, hi) <= 10),
        ("cosine>=0.90", lambda lo, hi: emb[lo:hi] @ emb.T >= 0.90),
        ("cosine>=0.95", lambda lo, hi: emb[lo:hi] @ emb.T >= 0.95),
    ):
        pairs = set()
        for lo in range(0, len(asins), 512):
            hi = min(len(asins), lo + 512)
            ii, jj = np.nonzero(mask_fn(lo, hi))
            ii = ii + lo
            for a, b in zip(ii[ii < jj], jj[ii < jj]):
                pairs.add(tuple(sorted((asins[a], asins[b]))))
        out[name] = score_pairs(pairs, truth)
    return out


def _ham(hashes, lo, hi):
    return np.bitwise_count(hashes[lo:hi, None] ^ hashes[None, :])


def sweep(index, pairs, truth):
    """P/R of the second look over thresholds (the looked-at pairs reused)."""
    from amazon_visual.audit import duplicates

    out = []
    for near in (0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.80):
        for colour in (0.0, 0.5, 0.6, 0.7):
            acc, ex = duplicates.decide(pairs, near_aligned=near, colour=colour)
            rows, _ = duplicates.groups(index, pairs, acc, ex, {})
            p, g = group_pairs(rows)
            s = score_pairs(p, truth, g)
            out.append(
                {
                    "near_aligned": near,
                    "colour": colour,
                    **{f"{k}_{m}": s[k][m] for k in (RE, NEAR) for m in ("precision", "recall")},
                    "all_precision": s["all"]["precision"],
                    "clean_pairs": s["all"]["clean_set_pairs"],
                }
            )
    return out


def misfiled_scores(index, truth, groups):
    from amazon_visual.audit import misfiled

    items = index.items
    labels = items["label_id"].to_numpy()
    probs = misfiled.out_of_fold(index.embeddings, labels, 5, groups)
    moved = set(truth["moved"])
    asins = np.array(items["asin"].tolist())
    out = {}
    for cut in ("confidence", "count", "filter"):
        flagged, quality, est = misfiled.find(labels, probs, cut)
        out[cut] = _pr(set(asins[flagged]), moved) | {"estimated": est}
    oracle = np.argsort(quality, kind="stable")[: len(moved)]
    out["oracle_top_n"] = _pr(set(asins[oracle]), moved)
    out["oof_accuracy"] = round(float((probs.argmax(1) == labels).mean()), 4)
    return out


def _pr(found, true):
    right = len(found & true)
    return {
        "flagged": len(found),
        "precision": round(right / len(found), 4) if found else None,
        "recall": round(right / len(true), 4) if true else None,
    }


# --------------------------------------------------------------------------
# the quality stage
# --------------------------------------------------------------------------
def quality(work, name, items, seed, image_size):
    from amazon_visual.audit import duplicates, inputs
    from amazon_visual.audit.photos import look
    from amazon_visual.audit.run import audit

    rows, truth = inject(items, os.path.join(work, f"{name}-images"), seed)
    data_dir, index_dir, build_t = build(work, name, rows, os.path.join(work, f"{name}-images"), image_size)
    out = os.path.join(work, f"{name}-audit")
    t0 = time.perf_counter()
    summary = audit(index_dir, out, data_dir=data_dir, progress=True)
    audit_s = time.perf_counter() - t0
    with open(os.path.join(out, "duplicates.csv"), newline="", encoding="utf-8") as f:
        dup_rows = [{**r, "group": int(r["group"])} for r in csv.DictReader(f)]
    pairs, grouped = group_pairs(dup_rows)
    injected = [c["kind"] for c in truth["copies"].values()]
    result = {
        "dataset": name,
        "items": summary["n_items"],
        "injected_re": injected.count(RE),
        "injected_near": injected.count(NEAR),
        "moved": len(truth["moved"]),
        **build_t,
        "audit_s": round(audit_s, 1),
        "timings": summary["timings"],
        "thresholds": summary["thresholds"],
        "audit": score_pairs(pairs, truth, grouped),
    }
    kinds = {r["asin"]: r["kind"] for r in dup_rows}
    result["kind_right"] = {
        k: round(
            np.mean(
                [kinds.get(a) == ("exact" if k == RE else "near") for a, c in truth["copies"].items() if c["kind"] == k]
            ),
            4,
        )
        for k in (RE, NEAR)
    }
    result["clean_set_pairs"] = sorted(p for p in pairs if not any(x in truth["copies"] for x in p))
    # baselines and the sweep: every photo looked at once
    index = inputs.open_index(index_dir)
    t0 = time.perf_counter()
    looks_all = {i: look(img) for i, img in inputs.photos(index, range(index.n_items), data_dir).items()}
    result["look_per_photo_ms"] = round(1000 * (time.perf_counter() - t0) / index.n_items, 2)
    result["baselines"] = baseline_pairs(index, looks_all, truth)
    cand = duplicates.candidate_pairs(index, **summary["thresholds"])
    t0 = time.perf_counter()
    looked = duplicates.second_look(cand, looks_all)
    result["second_look_per_pair_ms"] = round(1000 * (time.perf_counter() - t0) / max(1, len(cand["i"])), 2)
    result["candidate_pairs"] = len(cand["i"])
    result["candidate_recall"] = _candidate_recall(index, cand, truth)
    result["sweep"] = sweep(index, looked, truth)
    group_of = np.arange(index.n_items) + 10**7
    ids = {a: t for t, a in enumerate(index.items["asin"].tolist())}
    for r in dup_rows:
        group_of[ids[r["asin"]]] = r["group"]
    result["misfiled"] = misfiled_scores(index, truth, group_of)
    result["leaks"] = summary["leaks"]
    flagged_clean = []
    with open(os.path.join(out, "misfiled.csv"), newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r["asin"] not in truth["moved"]:
                flagged_clean.append(r)
    result["misfiled_not_moved"] = flagged_clean[:20]
    index.close()
    return result


def _candidate_recall(index, cand, truth):
    ids = {a: t for t, a in enumerate(index.items["asin"].tolist())}
    have = set(zip(cand["i"].tolist(), cand["j"].tolist()))
    hit = [tuple(sorted((ids[a], ids[c["original"]]))) in have for a, c in truth["copies"].items()]
    return round(float(np.mean(hit)), 4)


# --------------------------------------------------------------------------
# the scale stage
# --------------------------------------------------------------------------
def synthetic_index(folder, n, dim, classes=20, seed=0):
    from amazon_visual.atomic import write_json
    from amazon_visual.retrieval.index import build_annoy
    from amazon_visual.retrieval.layout import normalize

    if os.path.isfile(os.path.join(folder, "manifest.json")):
        return folder
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    y = rng.integers(0, classes, n)
    emb = np.empty((n, dim), np.float32)
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        emb[lo:hi] = normalize(centres[y[lo:hi]] + 1.6 * rng.normal(size=(hi - lo, dim)).astype(np.float32))
    copies = rng.choice(n, n // 100, replace=False)
    emb[copies[: len(copies) // 2]] = normalize(
        emb[copies[len(copies) // 2 :]]
        + 0.01 * rng.normal(size=(len(copies) - len(copies) // 2, dim)).astype(np.float32)
    )
    filed = y.copy()
    moved = rng.choice(n, n // 20, replace=False)
    filed[moved] = (y[moved] + rng.integers(1, classes, len(moved))) % classes
    np.save(os.path.join(folder, "embeddings.npy"), emb)
    import pandas as pd

    names = [f"class{c:02d}" for c in range(classes)]
    pd.DataFrame(
        {
            "asin": [f"S{i:08d}" for i in range(n)],
            "title": "",
            "category": "",
            "label": [names[c] for c in filed],
            "label_id": filed,
            "image_url": "",
            "split": np.where(rng.random(n) < 0.8, "train", "test"),
            "thumb": "",
            "brand": "",
            "price": "",
            "average_rating": "",
            "rating_number": "",
            "image_sha256": "",
        }
    ).to_csv(os.path.join(folder, "items.csv"), index=False)
    stats = build_annoy(emb, os.path.join(folder, "index.ann"), trees=10)
    write_json(
        os.path.join(folder, "manifest.json"),
        {
            "format_version": 1,
            "source": "synthetic",
            "metric": "angular",
            "backend": "annoy",
            "n_items": n,
            "embedding_dim": dim,
            "trees": 10,
            "search_k": -1,
            "index_file": "index.ann",
            "index_size_bytes": stats["size_bytes"],
            "index_sample_sha256": stats["sample_sha256"],
            "embeddings_file": "embeddings.npy",
            "thumbnails": False,
            "class_names": names,
            "splits": ["train", "test"],
        },
    )
    return folder


def scale(work, n, dim):
    from amazon_visual.audit import duplicates, inputs, misfiled

    folder = synthetic_index(os.path.join(work, f"synthetic-{n}-{dim}"), n, dim)
    index = inputs.open_index(folder)
    t0 = time.perf_counter()
    nbrs = duplicates.neighbours(index, duplicates.DEFAULTS["k"])
    t1 = time.perf_counter()
    pairs = duplicates.candidate_pairs(index, nbrs=nbrs)
    accepted = np.ones(len(pairs["i"]), bool)
    rows, n_groups = duplicates.groups(index, pairs, accepted, accepted & False, {})
    t2 = time.perf_counter()
    group_of = np.arange(n) + n
    for r in rows:
        group_of[r["id"]] = r["group"]
    found, summary = misfiled.audit(index, group_of)
    t3 = time.perf_counter()
    index.close()
    return {
        "n": n,
        "dim": dim,
        "ann_neighbours_s": round(t1 - t0, 1),
        "pairs_and_groups_s": round(t2 - t1, 1),
        "misfiled_s": round(t3 - t2, 1),
        "total_s": round(t3 - t0, 1),
        "candidate_pairs": len(pairs["i"]),
        "groups": n_groups,
        "flagged": len(found),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--datasets", default="clothing-small,sample")
    ap.add_argument("--scale", default="", help="comma-separated catalog sizes for the scale stage")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--image-size", type=int, default=160)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    from benchmark_env import seed_keras_home

    seed_keras_home(args.work)
    results = {"uptime_before": os.popen("uptime").read().strip(), "quality": [], "scale": []}
    sources = {"clothing-small": clothing_small, "sample": packaged_sample}
    for name in [d for d in args.datasets.split(",") if d]:
        results["quality"].append(quality(args.work, name, sources[name](), args.seed, args.image_size))
        print(json.dumps(results["quality"][-1], indent=1, default=str), flush=True)
    for n in [int(x) for x in args.scale.split(",") if x]:
        results["scale"].append(scale(args.work, n, args.dim))
        print(json.dumps(results["scale"][-1]), flush=True)
    results["uptime_after"] = os.popen("uptime").read().strip()
    path = os.path.join(args.work, "audit_benchmark.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1, default=str)
    print(f"written to {path}")


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main()
