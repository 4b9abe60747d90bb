"""tf.distribute: MirroredStrategy on two logical CPUs, MultiWorkerMirroredStrategy with two
local worker processes on loopback through TF_CONFIG. Each runs in fresh processes, since
logical devices and the multi-worker runtime must be set up before TensorFlow starts."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import helpers_training  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return helpers_training.tiny_dataset(tmp_path_factory.mktemp("tiny_dist"), per_class=12, size=32)


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


MIRRORED = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from amazon_visual import training
    s = training.train(sys.argv[1], model="alexnet", out=sys.argv[2], image_size=32, epochs=2, batch_size=8,
                       strategy="mirrored", model_kwargs={"width": 0.25, "fc_units": 32}, quiet=True)
    print("SUMMARY " + json.dumps({k: s[k] for k in ("epochs_run", "phases")}))
""")


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(tiny, tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(script), tiny, str(out)], env=_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.load(open(out / "config.json"))
    assert config["strategy_class"] == "MirroredStrategy" and config["replicas"] == 2
    summary = json.loads(proc.stdout.split("SUMMARY ", 1)[1])
    assert summary["epochs_run"] == 2
    assert (out / "model.keras").is_file()


WORKER = textwrap.dedent("""
    import json, sys
    from amazon_visual import training
    s = training.train(sys.argv[1], model="svm", out=sys.argv[2], image_size=32, epochs=2, batch_size=8,
                       strategy="auto", quiet=True)
    print("SUMMARY " + json.dumps({"chief": s.get("chief"), "epochs_run": s.get("epochs_run")}))
""")


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_mirrored_with_two_local_workers(tiny, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "run"
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for i in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), tiny, str(out)],
                env=_env(TF_CONFIG=tf_config),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=600)
            results.append((p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rc, _stdout, stderr in results:
        assert rc == 0, stderr[-3000:]
    chief = json.loads(results[0][1].split("SUMMARY ", 1)[1])
    other = json.loads(results[1][1].split("SUMMARY ", 1)[1])
    assert chief == {"chief": True, "epochs_run": 2}
    assert other["chief"] is False
    config = json.load(open(out / "config.json"))
    assert config["strategy_class"] in ("MultiWorkerMirroredStrategy", "CollectiveAllReduceStrategy")
    assert config["replicas"] == 2
    assert (out / "model.keras").is_file()
    assert not any(name.startswith("backup") for name in os.listdir(out))
