"""The demo as a new user runs it: pretrained (ImageNet weights available) and offline (from scratch).

    python benchmarks/demo.py --work /tmp/av_demo

Runs ``amazon-visual demo --json`` twice in fresh folders, each in its own process as a user
would: (1) with a KERAS_HOME seeded from ../shared/weights, so that ``--weights auto`` (the
default) finds Keras's ImageNet MobileNetV2 weights in its cache; (2) offline: an empty
KERAS_HOME and a proxy that refuses every connection, so the demo says it cannot get the
weights and trains VGG16-BN from scratch at 64 px. Prints, for each: the whole demo's wall time, the
test accuracy, the precision@5 of the demo's queries and the machine's load, against the
targets (pretrained >= 0.75 in < 3 minutes; from scratch >= 0.40).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def run(out, env):
    exe = shutil.which("amazon-visual")
    cmd = ([exe] if exe else [sys.executable, "-m", "amazon_visual.cli"]) + ["demo", "--out", out, "--json"]
    load = os.getloadavg()[0]
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.time() - t
    if r.returncode != 0:
        sys.exit(f"demo failed ({r.returncode}): {r.stderr[-2000:]}")
    s = json.loads(r.stdout)
    fallback = [line for line in r.stderr.splitlines() if "not available" in line]
    return {
        "wall_seconds": round(wall, 1),
        "demo_seconds": s["seconds"],
        "model": s["model"],
        "weights": s["weights"],
        "image_size": s["image_size"],
        "epochs_run": s["epochs_run"],
        "test_accuracy": s["test_accuracy"],
        "precision_at_5": s["precision_at_k"],
        "stage_seconds": s["stage_seconds"],
        "load_1min": [round(load, 2), round(os.getloadavg()[0], 2)],
        "fallback_line": fallback[0] if fallback else None,
    }


def main(argv=None):
    import benchmark_env

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/av_demo")
    args = ap.parse_args(argv)
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    seeded = benchmark_env.seed_keras_home(os.path.join(args.work, "seeded"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    off = "http://127.0.0.1:9"
    offline = dict(
        env,
        KERAS_HOME=os.path.join(args.work, "empty-keras-home"),
        HTTPS_PROXY=off,
        HTTP_PROXY=off,
        https_proxy=off,
        http_proxy=off,
    )
    os.makedirs(offline["KERAS_HOME"])
    rows = {
        "pretrained": run(os.path.join(args.work, "pretrained"), dict(env, KERAS_HOME=seeded)),
        "offline": run(os.path.join(args.work, "offline"), offline),
    }
    print(json.dumps(rows, indent=2))
    print("| demo | model | test accuracy | precision@5 | whole demo (s) | load before / after | target |")
    print("|---|---|---|---|---|---|---|")
    targets = {"pretrained": (0.75, 180), "offline": (0.40, None)}
    for name, r in rows.items():
        acc, limit = targets[name]
        ok = r["test_accuracy"] >= acc and (limit is None or r["wall_seconds"] < limit)
        print(
            f"| {name} | {r['model']} {r['image_size']} px, {r['weights']} | {r['test_accuracy']:.3f} | "
            f"{r['precision_at_5']:.2f} | {r['wall_seconds']} | {r['load_1min'][0]} / {r['load_1min'][1]} | "
            f">= {acc}{f' in < {limit} s' if limit else ''}: {'met' if ok else 'MISSED'} |"
        )


if __name__ == "__main__":
    main()
