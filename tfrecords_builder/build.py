"""``build_data(...)``: Amazon metadata + images -> DATA_DIR (the library entry point of build-data).

Steps: read the metadata (streamed) -> choose the classes -> label, de-duplicate and
filter the products -> split by hash -> find or download the images -> write the
TFDS dataset (image work in ``workers`` processes, or Apache Beam) into a temporary
sibling folder -> write the report -> move the finished dataset into ``out``.
Between the steps the products live in the build plan on disk (:mod:`tfrecords_builder.plan`),
not in memory: a build's memory does not grow with the catalog.
"""

import contextlib
import logging
import os
import shlex
import shutil
import sys
import threading
import time
from collections import Counter

from amazon_visual.atomic import write_json
from amazon_visual.errors import UserError
from tfrecords_builder import download as dl
from tfrecords_builder.decisions import read_exclude_file, read_relabel_file, relabel_labels
from tfrecords_builder.images import iter_image_files, warm_up
from tfrecords_builder.labels import (
    PRESETS,
    CategoryCounts,
    Labeler,
    read_categories_file,
    top_categories,
    unique_names,
)
from tfrecords_builder.metadata import ReadStats, read_products
from tfrecords_builder.parallel import OrderedPool
from tfrecords_builder.plan import ATTRIBUTES, PlanStore
from tfrecords_builder.report import FailureLog, plot_label_distribution
from tfrecords_builder.splits import SPLIT_NAMES, parse_fractions, split_of, unit_hash

BUILDER_NAME = "amazon_products"
DATASET_MARKERS = ("dataset_info.json", "build_report.json", "features.json")
SHUFFLE_BUFFER_MB = 64  # the local writer's shuffle memory before it spills to disk (TFDS's own is 1 GB)
PLAN_DIR = "plan"  # inside the build's temporary folder: the plan (SQLite) and Beam's JSON-lines inputs


def _tqdm(enabled, **kw):
    from tqdm.auto import tqdm

    return tqdm(file=sys.stderr, disable=not enabled, dynamic_ncols=True, **kw)


def _check_out(out, overwrite):
    out = os.path.abspath(os.fspath(out))
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file: give a folder for the dataset")
    if os.path.isdir(out) and os.listdir(out):
        if not overwrite:
            raise UserError(f"--out {out} is not empty: pass --overwrite to replace it, or choose another folder")
        if not any(os.path.exists(os.path.join(out, m)) for m in DATASET_MARKERS):
            raise UserError(
                f"--out {out} is not empty and holds no dataset: --overwrite only replaces a dataset "
                "folder; empty it or choose another folder"
            )
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise UserError(f"--out {out}: its parent folder {parent} does not exist: create it first")
    return out


def _choose_classes(metadata, categories, categories_file, top, preset, progress):
    """``(class names, source, category level or None, the option in words)``."""
    given = sum(x is not None and x != [] for x in (categories or None, categories_file, top, preset))
    if given == 0:
        raise UserError(
            "name the classes: --category NAME (repeatable), --categories-file FILE, "
            "--top-categories N or --preset seed20"
        )
    if given > 1:
        raise UserError("give only one of --category, --categories-file, --top-categories, --preset")
    if categories:
        return unique_names(categories, "--category"), "category", None, "--category"
    if categories_file:
        names = unique_names(read_categories_file(categories_file), f"categories file {categories_file}")
        return names, "file", None, f"--categories-file {categories_file}"
    if preset:
        if preset not in PRESETS:
            raise UserError(f"--preset {preset!r} is unknown: use one of {', '.join(PRESETS)}")
        return list(PRESETS[preset]), f"preset {preset}", None, f"--preset {preset}"
    top = int(top)
    if top < 2:
        raise UserError(f"--top-categories {top}: a dataset needs at least 2 classes, give N >= 2")
    bar = _tqdm(progress, desc="counting categories", unit=" products")

    def counted():
        for p in read_products(metadata, ReadStats()):
            bar.update(1)
            yield p

    names, level, counts = top_categories(counted(), top)
    bar.close()
    if not names:
        raise UserError(
            f"--top-categories {top}: no level of the category paths has {top} categories "
            f"({counts.describe()}): pass a smaller N, or name the classes with --category NAME "
            "(repeatable) or --categories-file FILE"
        )
    return names, f"top {top}", level, f"--top-categories {top} (level {level} of the category paths)"


def _check_classes(names, n_per_label, counts, how, when="", dropped=None):
    """A dataset needs 2 classes with products: else a UserError naming the categories found."""
    if sum(1 for i in range(len(names)) if n_per_label.get(i)) >= 2:
        return
    have = ", ".join(f"{n} ({n_per_label.get(i, 0)})" for i, n in enumerate(names)) or "none"
    if dropped:
        have += "; dropped by --min-per-class: " + ", ".join(f"{k} ({v})" for k, v in dropped.items())
    raise UserError(
        f"{how}: fewer than 2 classes have products{when} ({have}), and a dataset needs 2; the "
        f"metadata's categories: {counts.describe()}: name 2 or more with --category NAME (repeatable) "
        "or --categories-file FILE, or use --top-categories N" + (", or a smaller --min-per-class" if dropped else "")
    )


def _select(metadata, labeler, store, images_dir, seed, fractions, stats, drops, progress, counts, decided=None):
    """Stream the products into ``store``: the labelled, unique ones with an image source, with their
    split and attributes (``counts``: categories seen). ``decided``: the review decisions' counts
    (None: no decision file, nothing to look up). Nothing per product stays in memory."""
    bar = _tqdm(progress, desc="reading metadata", unit=" products")
    for p in read_products(metadata, stats):
        bar.update(1)
        if not store.first_sight(p.asin):
            drops["duplicate_asin"] += 1
            continue
        if decided is not None and store.is_excluded(p.asin):
            drops["excluded"] += 1
            continue
        counts.add(p)
        label, category = labeler.match(p.paths)
        if decided is not None:
            label, category = _relabel(store, p.asin, label, category, labeler, decided)
        if label is None:
            drops["no_class"] += 1
            continue
        if images_dir:
            source = store.image_file(p.asin)
            if source is None:
                drops["no_image_file"] += 1
                continue
            url = os.path.basename(source)
        else:
            if not p.image_urls:
                drops["no_image_url"] += 1
                continue
            source, url = None, p.image_urls[0]
        store.add(
            p.asin,
            p.title,
            category,
            label,
            source,
            url,
            p.image_urls,
            split_of(p.asin, seed, fractions),
            unit_hash(seed, p.asin, "cap"),
            {name: getattr(p, name) for name in ATTRIBUTES},
        )
    store.commit()
    bar.close()


def _relabel(store, asin, label, category, labeler, decided):
    """``(label, category)`` after the relabel file: the suggested class (its name as the category)."""
    new = store.relabelled(asin)
    if new is None:
        return label, category
    if new == label:
        decided["relabel_unchanged"] += 1
        return label, category
    decided["relabelled"] += 1
    return new, labeler.names[new]


def _read_decisions(exclude_file, relabel_file):
    """The review decision files, read and checked before anything else (None when neither is given)."""
    if not exclude_file and not relabel_file:
        return None
    excluded, ex_info = read_exclude_file(exclude_file) if exclude_file else ([], None)
    relabel, re_info = read_relabel_file(relabel_file) if relabel_file else ([], None)
    return {"excluded": excluded, "relabel": relabel, "exclude_info": ex_info, "relabel_info": re_info}


def _load_decisions(store, decisions, class_names):
    """Put the review decisions into the plan (the relabel file's classes checked against ``class_names``);
    returns their counters (None without decision files)."""
    if decisions is None:
        return None
    relabel = (
        relabel_labels(decisions["relabel_info"]["file"], decisions["relabel"], class_names)
        if decisions["relabel_info"]
        else []
    )
    store.add_decisions(decisions["excluded"], relabel)
    return Counter({"relabelled": 0, "relabel_unchanged": 0})


def _collect_beam_failures(failures_dir, failures, store):
    """The image failures Beam's workers appended to ``failures_dir``, into ``failures`` and the plan."""
    import json

    for name in sorted(os.listdir(failures_dir)):
        with open(os.path.join(failures_dir, name), encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    record = dict(json.loads(line), stage="image")
                    failures.append(record)
                    store.image_failed(record["asin"])  # (the attribute counts leave it out)


def _decisions_report(decisions, store, decided):
    """The ``decisions`` section of the report: what each file asked, what it changed, what it did not find."""
    if decisions is None:
        return {"exclude_file": None, "relabel_file": None}
    not_found = store.decisions_unknown()
    out = {"exclude_file": None, "relabel_file": None}
    if decisions["exclude_info"]:
        info = decisions["exclude_info"]
        out.update(
            exclude_file=info["file"],
            exclude_form=info["form"],
            exclude_listed=info["listed"],
            representatives_kept=info["representatives_kept"],
            excluded=decided["excluded"],
            exclude_not_found=not_found[0],
        )
    if decisions["relabel_info"]:
        info = decisions["relabel_info"]
        out.update(
            relabel_file=info["file"],
            relabel_listed=info["listed"],
            relabelled=decided["relabelled"],
            relabel_unchanged=decided["relabel_unchanged"],
            relabel_not_found=not_found[1],
        )
    return out


def _attributes_report(store, total):
    """Products written with each attribute: ``{name: {"count", "share"}}``."""
    counts = store.attribute_counts()
    return {name: {"count": int(n), "share": round(n / total, 4) if total else 0.0} for name, n in counts.items()}


def _final_per_label(store):
    """Products per final label (after dropped classes are renumbered)."""
    return Counter({store.remap[k]: v for k, v in store.per_label().items() if k in store.remap})


def _download(store, cache_dir, failures, workers, timeout, retries, backoff, max_bytes, progress):
    """Download every planned product's image into the cache (streamed, resumable); the plan keeps the
    downloaded ones with their file and URL. Returns the download stats."""
    os.makedirs(cache_dir, exist_ok=True)
    dl.clean_partials(cache_dir)
    store.load_known_urls(dl.UrlLog.records(cache_dir))
    log = dl.UrlLog(cache_dir, load=False)  # the records already there live in the plan
    stats = {"cached": 0, "downloaded": 0, "refreshed": 0, "failed": 0}
    bar = _tqdm(progress, desc="downloading images", total=store.count(), unit=" img")
    for asin, path, url, reason in dl.download_iter(
        store.download_tasks(),
        cache_dir,
        workers,
        timeout,
        retries,
        backoff,
        max_bytes,
        known_url=store.known_url,
        log=log,
    ):
        if path:
            stats[reason if reason in ("cached", "refreshed") else "downloaded"] += 1
        else:
            stats["failed"] += 1
        store.fetched(asin, path, url, None if path else reason)
        bar.update(1)
    bar.close()
    for asin, url, reason in store.download_failures():  # in metadata order, whatever order they finished in
        failures.append({"asin": asin, "url": url, "reason": reason, "stage": "download"})
    store.apply_downloads()
    return stats


def _parse_beam_options(beam_options):
    if not beam_options:
        return []
    if isinstance(beam_options, str):
        return shlex.split(beam_options)
    out = []
    for o in beam_options:
        out.extend(shlex.split(o))
    return out


_SHUFFLE_LOCK = threading.Lock()
_SHUFFLE = {"builds": 0, "tfds_value": None}  # builds running in this process; TFDS's value before the first


@contextlib.contextmanager
def tfds_shuffle_buffer(mb):
    """Let TFDS's local writer hold at most ``mb`` MiB of a split in memory while it shuffles.

    TFDS's ``Shuffler`` keeps a split's serialized examples in a list until they pass the module
    constant ``MAX_MEM_BUFFER_SIZE`` (1 GB), then moves them to 1,000 bucket files on disk and
    sorts one bucket at a time. Both ways sort by the same hashed key, so the written dataset is
    the same; only the memory differs. TFDS has no option for it, so the constant is set for the
    duration of the build and put back after (one value per process: builds running at once in
    threads share the latest one; TFDS's own comes back when the last of them ends).
    """
    from tensorflow_datasets.core import shuffle

    if not hasattr(shuffle, "MAX_MEM_BUFFER_SIZE"):  # a TFDS without it: its own default applies
        logging.getLogger(__name__).warning(
            "this tensorflow-datasets has no MAX_MEM_BUFFER_SIZE; --shuffle-buffer-mb has no effect"
        )
        yield
        return
    with _SHUFFLE_LOCK:  # builds in several threads: TFDS's value comes back when the last one ends
        if _SHUFFLE["builds"] == 0:
            _SHUFFLE["tfds_value"] = shuffle.MAX_MEM_BUFFER_SIZE
        _SHUFFLE["builds"] += 1
        shuffle.MAX_MEM_BUFFER_SIZE = int(float(mb) * (1 << 20))  # one value per process: the latest build's
    try:
        yield
    finally:
        with _SHUFFLE_LOCK:
            _SHUFFLE["builds"] -= 1
            if _SHUFFLE["builds"] == 0:
                shuffle.MAX_MEM_BUFFER_SIZE = _SHUFFLE["tfds_value"]


def _run_tfds(tmp, plan, beam, beam_args, shard_mb):
    import tensorflow_datasets as tfds

    from tfrecords_builder.builder import AmazonProducts

    kwargs = {}
    if beam:
        try:
            from apache_beam.options.pipeline_options import PipelineOptions
        except ImportError:
            raise UserError("--beam needs apache-beam: pip install 'amazon-visual[beam]'") from None
        kwargs["beam_options"] = PipelineOptions(beam_args)
    max_shard = int(shard_mb * 1024 * 1024)
    config = tfds.download.DownloadConfig(max_shard_size=max_shard, min_shard_size=min(max_shard, 64 << 20), **kwargs)
    builder = AmazonProducts(plan=plan, data_dir=tmp)
    # tfds prints its progress messages to stdout, and Beam worker processes inherit it;
    # stdout belongs to the command's result (one JSON document with --json)
    with _stdout_to_stderr():
        builder.download_and_prepare(download_config=config, download_dir=os.path.join(tmp, "downloads"))
    return builder


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send this process's stdout (the Python object and file descriptor 1) to stderr."""
    saved = None
    try:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(2, 1)
    except (OSError, ValueError, AttributeError):
        saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved is not None:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 1)
            os.close(saved)


def _read_back_counts(version_dir, class_names):
    """Examples per split and class, read from the written shards (labels only)."""
    import tensorflow_datasets as tfds

    b = tfds.builder_from_directory(version_dir)
    counts = {}
    for split in b.info.splits.keys():
        c = [0] * len(class_names)
        ds = b.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        for label in ds.map(lambda ex: ex["label"]).batch(4096).as_numpy_iterator():
            for v in label:
                c[int(v)] += 1
        counts[split] = c
    return counts


def _move_into_place(version_dir, out):
    """Put the finished dataset folder at ``out`` by renames (replacing an old dataset; see _recover)."""
    old = None
    if os.path.isdir(out):
        if os.listdir(out):
            old = f"{out}.old-{os.getpid()}"
            os.replace(out, old)
        else:
            os.rmdir(out)
    os.replace(version_dir, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def build_data(
    metadata,
    out,
    images_dir=None,
    download=False,
    cache_dir=None,
    categories=None,
    categories_file=None,
    top_categories=None,
    preset=None,
    min_per_class=0,
    max_per_class=None,
    image_size=256,
    splits=(0.8, 0.1, 0.1),
    seed=0,
    workers=None,
    beam=False,
    beam_options=None,
    overwrite=False,
    download_workers=16,
    timeout=10.0,
    retries=3,
    backoff=0.5,
    max_bytes=dl.MAX_BYTES,
    shard_mb=256,
    shuffle_buffer_mb=SHUFFLE_BUFFER_MB,
    progress=True,
    exclude_file=None,
    relabel_file=None,
):
    """Build DATA_DIR ``out`` from Amazon metadata files and images; returns the report dict.

    Args:
      metadata: one path or a list of paths (2014 / 2018 / 2023 format, plain or gzipped).
      out: the dataset folder to write (must be empty or absent unless ``overwrite``).
      images_dir: folder of images named by ASIN (``B000123.jpg``, any common extension), or
      download: fetch the images from the metadata URLs into ``cache_dir``
        (default ``<out>.image-cache`` next to ``out``); a rerun fetches only what is missing
        (and a product's image again when its URLs changed: the report's ``refreshed``).
      categories / categories_file / top_categories / preset: how the classes are named (one of them).
      min_per_class: drop classes with fewer products. max_per_class: cap classes (by hash, deterministic).
      image_size: longer side of the stored JPEGs (smaller images are not enlarged).
      splits: train, validation, test fractions (a sequence or "0.8,0.1,0.1").
      seed: the split hash seed.
      workers: processes for the image work (default: CPU count).
      beam: run the builder through Apache Beam; ``beam_options``: pipeline options string/list.
      shuffle_buffer_mb: memory the local writer may use to shuffle a split before it spills the
        examples to bucket files on disk (the output is the same whatever the value).
      exclude_file / relabel_file: review decisions (CSV, as ``amazon-visual audit`` writes them):
        products to leave out, products whose class changes (see :mod:`tfrecords_builder.decisions`).
    """
    t0 = time.time()
    if isinstance(metadata, (str, os.PathLike)):
        metadata = [metadata]
    metadata = [os.fspath(m) for m in (metadata or [])]
    if not metadata:
        raise UserError("--metadata: give at least one Amazon metadata file")
    for m in metadata:
        if not os.path.isfile(m):
            raise UserError(f"metadata file {m} does not exist: pass an Amazon meta_*.json(.gz) / .jsonl(.gz) file")
    if bool(images_dir) == bool(download):
        raise UserError("give exactly one image source: --images-dir DIR or --download")
    if images_dir and not os.path.isdir(images_dir):
        raise UserError(f"--images-dir {images_dir} is not a folder: give the folder of images named by ASIN")
    image_size = int(image_size)
    if not 8 <= image_size <= 4096:
        raise UserError(f"--image-size {image_size}: give a size between 8 and 4096 pixels")
    fractions = parse_fractions(splits)
    workers = int(workers) if workers else (os.cpu_count() or 1)
    if workers < 1:
        raise UserError(f"--workers {workers}: give at least 1")
    if min_per_class is not None and int(min_per_class) < 0:
        raise UserError("--min-per-class: give a number >= 0")
    if max_per_class is not None and int(max_per_class) < 1:
        raise UserError("--max-per-class: give a number >= 1")
    try:
        buffer_ok = 0 <= float(shuffle_buffer_mb) < float("inf")  # (NaN fails too)
    except (TypeError, ValueError):
        buffer_ok = False
    if not buffer_ok:
        raise UserError(f"--shuffle-buffer-mb {shuffle_buffer_mb}: give a size in MiB >= 0 (default 64)")
    beam_args = _parse_beam_options(beam_options)
    if beam_args and not beam:
        raise UserError("--beam-options needs --beam")
    decisions = _read_decisions(exclude_file, relabel_file)
    out = os.path.abspath(os.fspath(out))
    with _build_lock(out):
        _recover(out)
        out = _check_out(out, overwrite)
        pool = None
        if not beam and workers > 1:
            pool = OrderedPool(workers)
            pool.warm(warm_up)  # the workers start while the metadata is read
        try:
            with tfds_shuffle_buffer(shuffle_buffer_mb):
                return _build(
                    metadata,
                    out,
                    images_dir,
                    download,
                    cache_dir,
                    categories,
                    categories_file,
                    top_categories,
                    preset,
                    min_per_class,
                    max_per_class,
                    image_size,
                    fractions,
                    seed,
                    workers,
                    beam,
                    beam_args,
                    download_workers,
                    timeout,
                    retries,
                    backoff,
                    max_bytes,
                    shard_mb,
                    progress,
                    pool,
                    t0,
                    decisions,
                )
        finally:
            if pool is not None:
                pool.close()


@contextlib.contextmanager
def _build_lock(out):
    """Hold ``<out>.build-lock`` (an flock, freed by the kernel even on kill -9): one build per --out.

    The file is removed when the build ends (a killed build leaves it, unlocked, for the next).
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        fcntl = None
    if fcntl is None or not os.path.isdir(os.path.dirname(out)):
        yield  # (a missing parent folder is reported by _check_out)
        return
    path = f"{out}.build-lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(
                f"--out {out} is being built by another build-data (it holds {path}): wait for it "
                "to end, or choose another --out"
            ) from None
        if _same_file(fd, path):
            break
        os.close(fd)  # its holder removed it as we took it: take the current file
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)  # while still held
        os.close(fd)


def _same_file(fd, path):
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def _recover(out):
    """Undo what a killed build left next to ``out`` (under the build lock).

    The dataset only ever appears at ``out`` by renaming a finished folder, so ``out`` is
    always absent, the old dataset or the new one. A kill between the two renames of
    :func:`_move_into_place` leaves the old dataset at ``<out>.old-<pid>``: it is put back.
    """
    parent, name = os.path.split(out)
    if not os.path.isdir(parent):
        return
    for entry in sorted(os.listdir(parent)):
        path = os.path.join(parent, entry)
        if entry.startswith(f"{name}.old-") and os.path.isdir(path):
            if not os.path.exists(out):
                os.replace(path, out)
            else:
                shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(f"{out}.tmp-build", ignore_errors=True)


def _build(
    metadata,
    out,
    images_dir,
    download,
    cache_dir,
    categories,
    categories_file,
    top_categories,
    preset,
    min_per_class,
    max_per_class,
    image_size,
    fractions,
    seed,
    workers,
    beam,
    beam_args,
    download_workers,
    timeout,
    retries,
    backoff,
    max_bytes,
    shard_mb,
    progress,
    pool,
    t0,
    decisions,
):
    if download:
        cache_dir = os.path.abspath(os.fspath(cache_dir)) if cache_dir else f"{out}.image-cache"
        if cache_dir == out or cache_dir.startswith(out + os.sep):
            raise UserError(f"--cache-dir {cache_dir} is inside --out: put the image cache elsewhere")

    # ---- metadata, classes, selection -------------------------------------------------
    drops = Counter(
        {
            k: 0
            for k in (
                "malformed_line",
                "duplicate_asin",
                "no_class",
                "no_image_url",
                "no_image_file",
                "class_too_small",
                "over_max_per_class",
                "download_failed",
                "image_failed",
                "excluded",
            )
        }
    )
    class_names, class_source, level, how = _choose_classes(
        metadata, categories, categories_file, top_categories, preset, progress
    )
    labeler = Labeler(class_names)
    tmp = f"{out}.tmp-build"  # (one left by a killed run was removed by _recover)
    os.makedirs(os.path.join(tmp, PLAN_DIR))
    store = PlanStore(os.path.join(tmp, PLAN_DIR, "plan.sqlite"))
    absl_level = None
    try:
        if images_dir:
            store.add_image_files(iter_image_files(images_dir))
        stats = ReadStats()
        categories_seen = CategoryCounts()
        decided = _load_decisions(store, decisions, class_names)
        _select(metadata, labeler, store, images_dir, seed, fractions, stats, drops, progress, categories_seen, decided)
        if decided is not None:
            decided["excluded"] = drops["excluded"]
        drops["malformed_line"] = stats.malformed
        t_meta = time.time()

        per_class = store.per_label()
        dropped_classes = {}
        keep_labels = []
        for i, name in enumerate(class_names):
            n = per_class.get(i, 0)
            if min_per_class and n < int(min_per_class):
                dropped_classes[name] = n
                drops["class_too_small"] += n
            else:
                keep_labels.append(i)
        warnings = []
        if dropped_classes:
            warnings.append(
                f"classes with fewer than {min_per_class} products dropped: "
                + ", ".join(f"{k} ({v})" for k, v in dropped_classes.items())
            )
            store.drop_labels(i for i, name in enumerate(class_names) if name in dropped_classes)
        store.remap = {old: new for new, old in enumerate(keep_labels)}
        final_names = [class_names[i] for i in keep_labels]
        if not store.count():
            why = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in drops.items() if v) or "none read"
            raise UserError(
                f"no product is left to build from {stats.products} products ({why}): check the class "
                "names against the metadata categories and the image source"
            )
        if max_per_class:
            for label in keep_labels:
                drops["over_max_per_class"] += store.cap_label(label, int(max_per_class))
        n_per_label = _final_per_label(store)
        _check_classes(final_names, n_per_label, categories_seen, how, dropped=dropped_classes)
        empty_classes = [name for i, name in enumerate(final_names) if not n_per_label.get(i)]
        if empty_classes:
            warnings.append("classes with no product: " + ", ".join(empty_classes))

        # ---- images -------------------------------------------------------------------
        failures = FailureLog()
        dl_stats = {}
        if download:
            dl_stats = _download(
                store, cache_dir, failures, download_workers, timeout, retries, backoff, max_bytes, progress
            )
            drops["download_failed"] += dl_stats["failed"]
            _check_classes(final_names, _final_per_label(store), categories_seen, how, " once downloaded")
        t_dl = time.time()

        # ---- the TFDS build -----------------------------------------------------------
        from tfrecords_builder.builder import BuildPlan

        failures_dir = os.path.join(tmp, "failures")
        os.makedirs(failures_dir)
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()
        try:
            from absl import logging as absl_logging

            absl_level = absl_logging.get_verbosity()
            absl_logging.set_verbosity(absl_logging.WARNING)
        except ImportError:
            pass
        n_items = store.count()
        before = failures.count  # the image failures are what the build adds (every attempt, both modes)
        bar = _tqdm(progress and not beam, desc="writing examples", total=n_items, unit=" img")
        plan = BuildPlan(
            class_names=final_names,
            store=store,
            image_size=image_size,
            pool=pool,
            beam=bool(beam),
            failures_dir=failures_dir,
            failures=failures,
            progress=bar,
        )
        try:
            builder = _retry_build(tmp, plan, beam, beam_args, shard_mb)
        finally:
            bar.close()
        t_build = time.time()
        version_dir = os.fspath(builder.data_dir)
        if beam:
            _collect_beam_failures(failures_dir, failures, store)
            plan.counts = _read_back_counts(version_dir, final_names)
        drops["image_failed"] += failures.count - before

        written = Counter()
        for per_label in plan.counts.values():
            written.update(dict(enumerate(per_label)))
        _check_classes(final_names, written, categories_seen, how, " with a usable image")
        counts = {
            s: {final_names[i]: int(v) for i, v in enumerate(plan.counts.get(s, [0] * len(final_names)))}
            for s in SPLIT_NAMES
        }
        totals = {s: sum(counts[s].values()) for s in SPLIT_NAMES}
        totals["all"] = sum(totals.values())
        for s in SPLIT_NAMES:
            if totals[s] == 0 and fractions[SPLIT_NAMES.index(s)] > 0:
                warnings.append(f"split {s} has no example and is not written")
        t_end = time.time()
        report = {
            "builder": BUILDER_NAME,
            "version": builder.version.__str__(),
            "data_dir": out,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "classes": final_names,
            "class_source": class_source,
            "category_level": level,  # --top-categories: the level of the category paths (1 = top)
            "image_size": image_size,
            "seed": seed,
            "split_fractions": dict(zip(SPLIT_NAMES, fractions)),
            "split_method": "hash of (seed, asin) -> [0,1) cut at the cumulative fractions (stable; per class "
            "proportional in expectation)",
            "image_source": {"images_dir": os.path.abspath(images_dir)}
            if images_dir
            else {"download": True, "cache_dir": cache_dir, **dl_stats},
            "metadata": {"files": [os.path.abspath(m) for m in metadata], **stats.as_dict()},
            "counts": counts,
            "totals": totals,
            "drops": dict(drops),
            "attributes": _attributes_report(store, totals["all"]),
            "decisions": _decisions_report(decisions, store, decided),
            "dropped_classes": dropped_classes,
            "failure_reasons": dict(failures.reasons),
            "failures": failures.listed,
            "failures_listed": len(failures.listed),
            "warnings": warnings,
            "workers": workers,
            "beam": bool(beam),
            "beam_options": beam_args,
            "timings": {
                "metadata_s": round(t_meta - t0, 3),
                "download_s": round(t_dl - t_meta, 3),
                "build_s": round(t_build - t_dl, 3),
                "total_s": round(t_end - t0, 3),
                "images_per_s": round(totals["all"] / max(1e-9, t_build - t_dl), 2),
            },
        }
        write_json(os.path.join(version_dir, "build_report.json"), report)
        plot_label_distribution(report, os.path.join(version_dir, "label_distribution.png"))
        _move_into_place(version_dir, out)
    finally:
        store.close()
        if absl_level is not None:
            from absl import logging as absl_logging

            absl_logging.set_verbosity(absl_level)
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _retry_build(tmp, plan, beam, beam_args, shard_mb):
    """Run the TFDS build; a split whose every image failed is left out and the build rerun once."""
    try:
        return _run_tfds(tmp, plan, beam, beam_args, shard_mb)
    except AssertionError as e:
        if beam or "No examples were yielded" not in str(e):
            raise
    logging.getLogger(__name__).warning("a split has no usable image; rebuilding without the failed images")
    plan.store.drop_failed()
    plan.reset()
    for name in os.listdir(tmp):
        if name not in ("failures", PLAN_DIR):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
    return _run_tfds(tmp, plan, beam, beam_args, shard_mb)
