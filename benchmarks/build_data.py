"""Benchmark: build-data throughput against the bare Pillow floor.

The floor is the image work alone -- Pillow decode, RGB conversion, resize, JPEG
encode of the same images in the same number of processes (a ``multiprocessing``
pool, ordered ``imap``), results consumed and dropped. The builder run is the
whole ``build_data(...)`` call (metadata reading, labelling, splitting, the same
image work, TFDS serialisation and shard writing, the report and its chart).
TensorFlow is imported before either clock starts.

    python benchmarks/build_data.py --workers 2 --image-size 128
    python benchmarks/build_data.py --data /path/to/clothing-small --limit 1000 --repeats 3
    python benchmarks/build_data.py --large-photos 6 --workers 2 --image-size 256

Prints a table and the ratio floor_time / builder_time (1.0 = as fast as the floor;
the floor counts its pool start-up like the builder does; the "warm floor", timed once
the workers are up, is the pure image work and gives the stricter ratio),
plus the CPU ratio (CPU seconds of all processes, floor / builder), which a busy
machine disturbs less than wall time; ``--json`` prints the numbers as JSON.

``--large-photos N`` benchmarks large photos instead: N generated JPEGs of 8 to 100
megapixels (clothing-small photos enlarged, with film grain so the files weigh what
camera JPEGs weigh, quality 90, 4:2:0). Its floor is the plain decode: ``Image.open(p)
.convert("RGB")`` (a full-size decode), resize, JPEG encode -- what the image work cost
before reduced-scale decoding -- against :func:`tfrecords_builder.images.normalize`
(reduced-scale decoding), in the same number of processes, and ``build_data`` on the
set. The ratio plain / reduced should be 2 or more.
"""

import argparse
import csv
import json
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time

DEFAULT_DATA = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "datasets", "clothing-small"
)


def prepare(data, workdir, limit=None):
    """A 2014-format catalog from labels.csv and an images folder of ASIN-named symlinks."""
    with open(os.path.join(data, "labels.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    if limit:
        rows = rows[:limit]
    img = os.path.join(workdir, "images")
    os.makedirs(img)
    meta = os.path.join(workdir, "meta_Clothing.json")
    with open(meta, "w", encoding="utf-8") as f:
        for r in rows:
            asin = os.path.splitext(r["image"])[0]
            os.symlink(os.path.abspath(os.path.join(data, "images", r["image"])), os.path.join(img, r["image"]))
            rec = {
                "asin": asin,
                "title": f"{r['label']} {asin[:8]}",
                "imUrl": f"http://example.com/{asin}.jpg",
                "categories": [["Clothing, Shoes & Jewelry", "Clothing", r["label"]]],
            }
            f.write(repr(rec) + "\n")
    classes = sorted({r["label"] for r in rows})
    paths = [os.path.join(img, r["image"]) for r in rows]
    return meta, img, classes, paths


def _cpu():
    """CPU seconds of this process and of its finished children."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def floor(paths, image_size, workers, warm=False):
    """Seconds for the bare image work on ``paths`` in ``workers`` processes.

    ``warm=False`` counts the pool start-up (as the builder's time does); ``warm=True``
    starts the clock once the workers are up: the pure image work.
    """
    from tfrecords_builder.images import process_item, warm_up

    tasks = [(p, p, image_size) for p in paths]
    t = time.perf_counter()
    n_bytes = 0
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            if warm:
                pool.starmap(warm_up, [()] * workers * 4)
                t = time.perf_counter()
            for _, jpeg, _ in pool.imap(process_item, tasks, chunksize=4):
                n_bytes += len(jpeg or b"")
    else:
        for task in tasks:
            n_bytes += len(process_item(task)[1] or b"")
    return time.perf_counter() - t


LARGE_MP = (8, 100, 24, 50, 12, 75, 36, 16)  # the sizes of the generated photos, in this order


def large_photo_set(data, workdir, n):
    """``n`` JPEGs of 8-100 MP (4:3) named L000.jpg..., a 2014 catalog of 2 classes; ``(meta, img, paths)``."""
    from PIL import Image, ImageChops

    with open(os.path.join(data, "labels.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    img = os.path.join(workdir, "large")
    os.makedirs(img)
    meta = os.path.join(workdir, "meta_large.json")
    paths = []
    with open(meta, "w", encoding="utf-8") as m:
        for i in range(n):
            mp = LARGE_MP[i % len(LARGE_MP)]
            w = int((mp * 1e6 * 4 / 3) ** 0.5)
            h = int(mp * 1e6 / w)
            with Image.open(os.path.join(data, "images", rows[i * 7]["image"])) as src:
                im = src.convert("RGB").resize((w, h), Image.Resampling.BILINEAR)
            grain = Image.effect_noise((w, h), 12).convert("RGB")
            im = ImageChops.add(im, grain, scale=1.0, offset=-128)
            paths.append(os.path.join(img, f"L{i:03d}.jpg"))
            im.save(paths[-1], "JPEG", quality=90)
            del im, grain
            m.write(repr({"asin": f"L{i:03d}", "categories": [["Clothing", ["Shirts", "Shoes"][i % 2]]]}) + "\n")
    return meta, img, paths


def _plain_item(task):
    """The plain-decode floor for one photo: full-size decode, resize, JPEG encode."""
    import io

    from PIL import Image

    path, image_size = task
    Image.MAX_IMAGE_PIXELS = None  # (a plain open refuses photos over ~179 MP; these are <= 100)
    with Image.open(path) as im:
        im = im.convert("RGB")
    scale = image_size / max(im.size)
    if scale < 1:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    im.save(out, "JPEG", quality=90)
    return len(out.getvalue())


def _reduced_item(task):
    from tfrecords_builder.images import normalize

    path, image_size = task
    return len(normalize(path, image_size)[0])


def timed_map(fn, tasks, workers):
    """Seconds to run ``fn`` on every task in ``workers`` processes, timed once the workers are up."""
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(_warm, range(workers * 2))
        t = time.perf_counter()
        pool.map(fn, tasks, chunksize=1)
        return time.perf_counter() - t


def _warm(_):
    import PIL.Image  # noqa: F401

    import tfrecords_builder.images  # noqa: F401


def large_main(args, work):
    meta, img, paths = large_photo_set(args.data, work, args.large_photos)
    file_bytes = sum(os.path.getsize(p) for p in paths)
    from PIL import Image

    sizes = []
    for p in paths:
        with Image.open(p) as im:  # (header only)
            sizes.append(im.size)
    total_mp = sum(w * h for w, h in sizes) / 1e6
    tasks = [(p, args.image_size) for p in paths]
    plain, reduced, builds, report = [], [], [], None
    for _ in range(args.repeats):  # interleaved, so load changes hit both
        plain.append(timed_map(_plain_item, tasks, args.workers))
        reduced.append(timed_map(_reduced_item, tasks, args.workers))
        t, report = builder(meta, img, None, os.path.join(work, "out-large"), args.image_size, args.workers, top=2)
        builds.append(t)
    p, r, b = min(plain), min(reduced), min(builds)
    n = len(paths)
    return {
        "photos": n,
        "megapixels": [round(w * h / 1e6, 1) for w, h in sizes],
        "total_megapixels": round(total_mp, 1),
        "file_mb": round(file_bytes / 1e6, 1),
        "written": report["totals"]["all"],
        "failures": report["failure_reasons"],
        "workers": args.workers,
        "image_size": args.image_size,
        "plain_decode_floor_s": round(p, 3),
        "reduced_scale_s": round(r, 3),
        "builder_s": round(b, 3),
        "ratio_plain_over_reduced": round(p / r, 2),
        "ratio_plain_over_builder": round(p / b, 2),
        "all_plain_s": [round(x, 3) for x in plain],
        "all_reduced_s": [round(x, 3) for x in reduced],
        "all_builder_s": [round(x, 3) for x in builds],
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def print_large(res):
    n, mp = res["photos"], res["total_megapixels"]
    print(
        f"large photos: {n} JPEGs of {min(res['megapixels'])}-{max(res['megapixels'])} MP ({mp} MP, "
        f"{res['file_mb']} MB), image size {res['image_size']}, workers {res['workers']}, {res['cpu_count']} CPUs"
    )
    print(f"{'':34} {'wall s':>8} {'photos/s':>9} {'MP/s':>8}")
    for name, key in [
        ("plain decode floor (full size)", "plain_decode_floor_s"),
        ("reduced-scale decode (normalize)", "reduced_scale_s"),
        ("builder (build_data, whole run)", "builder_s"),
    ]:
        t = res[key]
        print(f"{name:34} {t:8.2f} {n / t:9.2f} {mp / t:8.1f}")
    print(f"written {res['written']} of {n}, failures: {res['failures'] or 'none'}")
    print(
        f"ratio plain floor / reduced-scale (best wall times): {res['ratio_plain_over_reduced']:.2f}x "
        f"(2x or more expected)"
    )
    print(f"ratio plain floor / whole builder run: {res['ratio_plain_over_builder']:.2f}x")
    print(f"load average during the run: {res['load_average'][0]:.2f} on {res['cpu_count']} CPUs")


def builder(meta, img, classes, out, image_size, workers, top=None):
    from tfrecords_builder.build import build_data

    if os.path.exists(out):
        shutil.rmtree(out)
    t = time.perf_counter()
    report = build_data(
        meta,
        out,
        images_dir=img,
        categories=classes,
        top_categories=top,
        image_size=image_size,
        workers=workers,
        progress=False,
    )
    return time.perf_counter() - t, report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=DEFAULT_DATA, help="clothing-small folder (labels.csv, images/)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--limit", type=int, help="use the first N images only")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each; the best time counts")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--large-photos",
        type=int,
        default=0,
        metavar="N",
        help="benchmark N generated 8-100 MP JPEGs against the plain full-size decode instead",
    )
    args = ap.parse_args(argv)
    if not os.path.isfile(os.path.join(args.data, "labels.csv")):
        sys.exit(f"build_data benchmark: {args.data} has no labels.csv: pass --data DIR")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow  # noqa: F401  (import costs are not measured)
    import tensorflow_datasets  # noqa: F401

    work = tempfile.mkdtemp(prefix="bench-build-data-")
    try:
        if args.large_photos:
            res = large_main(args, work)
            if args.json:
                print(json.dumps(res, indent=2))
            else:
                print_large(res)
            return 0
        meta, img, classes, paths = prepare(args.data, work, args.limit)
        out = os.path.join(work, "out")
        floors, warm_floors, builds, report = [], [], [], None
        cpu_floor, cpu_build = [], []
        for _ in range(args.repeats):  # interleaved, so load changes hit both
            warm_floors.append(floor(paths, args.image_size, args.workers, warm=True))
            c = _cpu()
            floors.append(floor(paths, args.image_size, args.workers))
            cpu_floor.append(_cpu() - c)
            c = _cpu()
            t, report = builder(meta, img, classes, out, args.image_size, args.workers)
            cpu_build.append(_cpu() - c)
            builds.append(t)
        f, b, fw = min(floors), min(builds), min(warm_floors)
        cf, cb = min(cpu_floor), min(cpu_build)
        n = len(paths)
        result = {
            "images": n,
            "written": report["totals"]["all"],
            "workers": args.workers,
            "image_size": args.image_size,
            "cpu_count": os.cpu_count(),
            "floor_s": round(f, 3),
            "builder_s": round(b, 3),
            "floor_img_per_s": round(n / f, 1),
            "builder_img_per_s": round(n / b, 1),
            "ratio": round(f / b, 3),
            "floor_warm_s": round(fw, 3),
            "ratio_vs_warm_floor": round(fw / b, 3),
            "builder_build_phase_s": report["timings"]["build_s"],
            "floor_cpu_s": round(cf, 3),
            "builder_cpu_s": round(cb, 3),
            "cpu_ratio": round(cf / cb, 3),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "all_floor_s": [round(x, 3) for x in floors],
            "all_floor_warm_s": [round(x, 3) for x in warm_floors],
            "all_builder_s": [round(x, 3) for x in builds],
        }
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(
                f"images {n} (written {result['written']}), workers {args.workers}, "
                f"image size {args.image_size}, {os.cpu_count()} CPUs"
            )
            print(f"{'':10} {'wall s':>8} {'images/s':>9} {'CPU s':>8}")
            print(f"{'floor':10} {f:8.2f} {n / f:9.1f} {cf:8.2f}")
            print(f"{'floor warm':10} {fw:8.2f} {n / fw:9.1f} {'':>8}")
            print(f"{'builder':10} {b:8.2f} {n / b:9.1f} {cb:8.2f}")
            print(f"ratio (builder throughput / floor throughput, best wall times): {f / b:.3f}")
            print(f"ratio against the warm floor (workers already started, pure image work): {fw / b:.3f}")
            print(f"CPU ratio (floor CPU / builder CPU, all processes): {cf / cb:.3f}")
            print(f"load average during the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
