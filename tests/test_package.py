"""The package as users meet it: one version, the license files, ``python -m amazon_visual``,
the landing page's promises and the generated CLI reference of the docs.

(CI builds the wheel itself, installs it alone in a fresh virtual environment and runs the demo
and the service from it: ``.ci/run``.)
"""

import configparser
import importlib.util
import os
import re
import subprocess
import sys

import amazon_visual
from amazon_visual.cli import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.dirname(amazon_visual.__file__)


def _read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def _subcommands():
    from docs_hook import subcommands

    return [name for name, _ in subcommands(build_parser())]


def _hook():
    spec = importlib.util.spec_from_file_location("docs_hook", os.path.join(ROOT, "docs", "_hooks", "cli_reference.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["docs_hook"] = module
    return module


def test_one_version_everywhere():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    assert cfg["metadata"]["version"].strip() == "attr: amazon_visual.__version__"
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]|rc)?\d*", amazon_visual.__version__)
    for cmd in (
        [sys.executable, "-m", "amazon_visual", "--version"],
        [sys.executable, "-m", "amazon_visual.cli", "--version"],
    ):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.strip() == f"amazon-visual {amazon_visual.__version__}", r
    assert f"## [{amazon_visual.__version__}]" in _read("CHANGELOG.md")


def test_python_m_amazon_visual_runs_the_cli():
    r = subprocess.run(
        [sys.executable, "-m", "amazon_visual", "no-such-command"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_license_files_and_the_samples_notice_ship_with_the_package():
    assert _read("LICENSE").startswith("MIT License") and "the amazon-visual authors" in _read("LICENSE")
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    assert cfg["metadata"]["license"] == "MIT"
    data = cfg["options.package_data"]["amazon_visual"]
    assert "py.typed" in data and "sample/*" in data
    assert os.path.isfile(os.path.join(PKG, "py.typed"))
    with open(os.path.join(PKG, "sample", "LICENSE"), encoding="utf-8") as f:
        assert "CC0 1.0 Universal" in f.read()
    with open(os.path.join(PKG, "sample", "NOTICE.md"), encoding="utf-8") as f:
        notice = f.read()
    assert "Alexey Grigorev" in notice and "CC0" in notice


def test_the_cli_reference_is_generated_from_the_parsers():
    hook = _hook()
    assert hook.MARKER in _read("docs", "cli.md")
    page = hook.on_page_markdown(_read("docs", "cli.md"), page=None)
    assert hook.MARKER not in page
    names = _subcommands()
    assert {"build-data", "train", "index", "recommend", "serve", "demo", "export"} <= set(names)
    for name in names:
        sub = dict(hook.subcommands(build_parser()))[name]
        assert f"## `amazon-visual {name}`" in page
        for action in sub._actions:  # every option of every subcommand is listed
            for opt in action.option_strings:
                if opt not in ("-h", "--help"):
                    assert f"`{opt}`" in page, (name, opt)


def test_readme_is_a_landing_page_that_links_every_command_to_the_docs():
    readme = _read("README.md")
    assert len(readme.splitlines()) <= 200
    assert 'pip install -e ".[test]" && python -m pytest' in readme
    assert 'pip install -e ".[docs]" && mkdocs serve' in readme
    assert "pip install . && amazon-visual demo" in readme
    _hook()
    rows = [line for line in readme.splitlines() if line.startswith("| `amazon-visual ")]
    for name in _subcommands():
        row = [
            r
            for r in rows
            if re.search(rf"`amazon-visual {re.escape(name)}\b", r)
            or re.search(rf"`amazon-visual [^|]*`{re.escape(name)}`", r)
        ]
        assert row and "](docs/" in row[0], f"README: no row linking `amazon-visual {name}` to its docs page"
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert os.path.isfile(os.path.join(ROOT, link)), f"README links to {link}, which does not exist"


def test_every_docs_page_is_in_the_site_navigation():
    nav = _read("mkdocs.yml")
    pages = sorted(f for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))
    missing = [p for p in pages if not re.search(rf":\s+{re.escape(p)}\s*$", nav, re.M)]
    assert not missing, f"docs pages missing from mkdocs.yml's nav: {missing}"
