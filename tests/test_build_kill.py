"""kill -9 at four moments of ``amazon-visual build-data``, then the same command again.

The killed run is a subprocess of the real CLI; the kill points are: during the downloads
(a loopback server that serves slowly), during the image work, during the TFDS shard
writing, and between the two renames that swap an old dataset for the new one. After
each kill no reader can take anything for a finished dataset; the rerun (same command)
finishes and its dataset equals an uninterrupted build: same examples, labels, splits,
image bytes, URLs and failures. About 10 s per kill point (most of it importing TF).
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from amazon_visual import data
from amazon_visual.cli import main
from amazon_visual.errors import UserError
from builder_fixtures import ImageServer, files_under

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = {
    "Shoes": ["Clothing, Shoes & Jewelry", "Shoes"],
    "Watches": ["Clothing, Shoes & Jewelry", "Watches"],
    "Bags": ["Clothing, Shoes & Jewelry", "Bags"],
}

# The CLI, with test hooks chosen by KILL_HOOK: "images:N" kills itself after N images,
# "slow:S" sleeps S seconds per image, "swap" kills itself once the old dataset is moved aside.
RUNNER = textwrap.dedent("""
    import os, signal, sys, time
    hook = os.environ.get("KILL_HOOK", "")
    if hook.startswith(("images:", "slow:")):
        from tfrecords_builder import builder
        real, done = builder.process_item, [0]
        def process_item(task):
            done[0] += 1
            if hook.startswith("images:") and done[0] > int(hook[7:]):
                os.kill(os.getpid(), signal.SIGKILL)
            if hook.startswith("slow:"):
                time.sleep(float(hook[5:]))
            return real(task)
        builder.process_item = process_item
    if hook == "swap":
        out, real_replace = os.path.abspath(sys.argv[sys.argv.index("--out") + 1]), os.replace
        def replace(src, dst, *a, **k):
            real_replace(src, dst, *a, **k)
            if os.path.abspath(os.fspath(src)) == out:
                os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace
    from amazon_visual.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _catalog(path, srv):
    """24 products in 2023 format: slow URLs, some whose first URL is a 404, one 404, one broken image."""
    lines = []
    for i in range(24):
        cls = list(CLASSES)[i % 3]
        url = srv.url(f"slow/0.15/{'png' if i % 4 else 'jpeg'}/{i}")
        if i == 5:
            url = srv.url("404")  # a download failure
        if i == 7:
            url = srv.url(f"slow/0.15/truncated/{i}")  # an image failure
        images = [{"large": url, "variant": "MAIN"}]
        if i % 6 == 1:  # the first URL fails, the second serves the image
            images = [{"large": srv.url("404"), "hi_res": url, "variant": "MAIN"}]
        lines.append(
            json.dumps(
                {
                    "parent_asin": f"K{i:03d}",
                    "title": f"thing {i}",
                    "main_category": "AMAZON FASHION",
                    "categories": CLASSES[cls],
                    "images": images,
                }
            )
        )
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _args(meta, out, cache, *extra):
    return [
        "build-data",
        "--metadata",
        meta,
        "--download",
        "--cache-dir",
        str(cache),
        "--out",
        str(out),
        "--top-categories",
        "3",
        "--image-size",
        "24",
        "--splits",
        "0.5,0.25,0.25",
        "--workers",
        "1",
        "--download-workers",
        "2",
        "--retries",
        "0",
        "--timeout",
        "5",
        "--no-progress",
        "--json",
        *extra,
    ]


def snapshot(data_dir):
    """What a reader gets: every example's fields and JPEG bytes by ASIN, and the report's outcome."""
    import tensorflow_datasets as tfds

    b = tfds.builder_from_directory(str(data_dir))
    names = b.info.features["label"].names
    examples = {}
    for split in b.info.splits.keys():
        ds = b.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        for ex in tfds.as_numpy(ds):
            examples[ex["asin"].decode()] = (
                split,
                names[ex["label"]],
                ex["category"].decode(),
                ex["title"].decode(),
                ex["image_url"].decode(),
                hashlib.sha256(ex["image"]).hexdigest(),
            )
    report = json.loads((data_dir / "build_report.json").read_text())
    outcome = {k: report[k] for k in ("classes", "category_level", "counts", "totals", "drops")}
    outcome["failures"] = sorted((f["asin"], f["stage"], f["reason"]) for f in report["failures"])
    return examples, outcome


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    with ImageServer() as srv:
        meta = _catalog(root / "meta.jsonl", srv)
        assert main(_args(meta, root / "ref", root / "ref-cache")) == 0  # the uninterrupted build
        old = root / "old"  # another dataset, to be replaced with --overwrite
        assert main(_args(meta, old, root / "ref-cache", "--image-size", "12", "--splits", "1,0,0")) == 0
        yield {"root": root, "meta": meta, "server": srv, "ref": snapshot(root / "ref"), "old": old}


def _spawn(args, hook=""):
    env = dict(os.environ, KILL_HOOK=hook, PYTHONPATH=os.pathsep.join([REPO, *sys.path]), TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _kill_when(proc, ready, timeout=90):
    """SIGKILL ``proc`` as soon as ``ready()``; fails if it ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ready():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    rc = proc.wait(30)
    assert rc == -signal.SIGKILL, f"the build ended before its kill point (exit status {rc})"


def _files(folder, needle, end=False):
    names = files_under(folder) if os.path.isdir(folder) else ()
    return [f for f in names if (f.endswith(needle) if end else needle in f)]


def _no_dataset_visible(root, out):
    """No dataset_info.json at ``out``: only in the scratch folder, or in an old dataset moved aside."""
    for f in files_under(root):
        top = f.split(os.sep)[0]
        if f.endswith("dataset_info.json") and (top == out.name or top.startswith(out.name + ".")):
            assert top.endswith(".tmp-build") or ".old-" in top, f
    if not os.path.exists(out):
        with pytest.raises(UserError, match="not an amazon-visual dataset"):
            data.class_names(out)


@pytest.mark.parametrize("point", ["download", "images", "shards", "swap"])
def test_kill_9_then_the_same_command_equals_an_uninterrupted_build(world, point):
    root = world["root"]
    out, cache = root / f"out-{point}", root / f"cache-{point}"
    args = _args(world["meta"], out, cache)
    if point != "download":  # the downloads are done: a cache from an earlier (killed) run
        shutil.copytree(root / "ref-cache", cache)
    if point == "swap":
        shutil.copytree(world["old"], out)
        args.append("--overwrite")
    tmp = f"{out}.tmp-build"

    if point == "download":
        proc = _spawn(args)
        _kill_when(proc, lambda: len(_files(cache, ".img", end=True)) >= 4)
        assert 4 <= len(_files(cache, ".img", end=True)) < 23  # of 23
    elif point == "images":
        _kill_when(_spawn(args, "images:9"), lambda: False)
        assert os.path.isdir(tmp)
    elif point == "shards":
        proc = _spawn(args, "slow:0.08")
        _kill_when(proc, lambda: bool(_files(tmp, "tfrecord")))
    else:
        _kill_when(_spawn(args, "swap"), lambda: False)
        assert not out.exists() and len([n for n in os.listdir(root) if n.startswith("out-swap.old-")]) == 1

    _no_dataset_visible(root, out)
    if point == "swap":
        assert not out.exists()

    assert main(args) == 0  # the same command again
    assert snapshot(out) == world["ref"]
    left = {n for n in os.listdir(root) if n.startswith(f"out-{point}")}
    assert left == {f"out-{point}"}, left  # no scratch folder, old dataset or lock file left
    assert not _files(cache, ".tmp-")


def test_one_build_per_out_folder(tmp_path):
    from tfrecords_builder.build import _build_lock, build_data

    out = str(tmp_path / "d")
    meta = tmp_path / "meta.json"
    meta.write_text('{"asin": "A1", "category": ["Shoes"]}\n')
    with _build_lock(out):  # another build-data holds the folder
        with pytest.raises(UserError, match=r"is being built by another build-data \(it holds .*d\.build-lock\)"):
            build_data(str(meta), out, images_dir=str(tmp_path), categories=["Shoes", "Bags"], progress=False)
    assert not os.path.exists(out + ".build-lock")  # removed by its holder
    (tmp_path / "d.build-lock").write_text("")  # left by a killed build: free
    with pytest.raises(UserError, match="no product is left"):  # the build goes on
        build_data(str(meta), out, images_dir=str(tmp_path), categories=["Shoes", "Bags"], progress=False)
    assert sorted(os.listdir(tmp_path)) == ["meta.json"]


def test_recover_puts_back_an_old_dataset_moved_aside(tmp_path):
    from tfrecords_builder.build import _recover

    out = tmp_path / "d"
    (tmp_path / "d.old-123").mkdir()  # killed between the renames: the old dataset is aside
    (tmp_path / "d.old-123" / "dataset_info.json").write_text("{}")
    (tmp_path / "d.tmp-build" / "x").mkdir(parents=True)
    (tmp_path / "dd.old-1").mkdir()  # another dataset's name: not touched
    _recover(str(out))
    assert sorted(os.listdir(tmp_path)) == ["d", "dd.old-1"] and (out / "dataset_info.json").exists()
    (tmp_path / "d.old-456").mkdir()  # killed after the renames: the new dataset is in place
    _recover(str(out))
    assert sorted(os.listdir(tmp_path)) == ["d", "dd.old-1"]
