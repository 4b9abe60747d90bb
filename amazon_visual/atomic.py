"""Atomic file writes: a temporary name in the same folder, then ``os.replace``.

A reader never sees a half-written file, and a killed process leaves at most a
``*.tmp-<pid>`` file behind, never a corrupt target.
"""

import json
import os


def write_bytes(path, data):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))


def json_default(o):
    """JSON encoder fallback: numpy scalars and arrays as numbers and lists, anything else as str."""
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def write_json(path, obj, sort_keys=False):
    write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys, ensure_ascii=False, default=json_default) + "\n")
