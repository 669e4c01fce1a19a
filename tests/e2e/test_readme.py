"""The README's examples, run as written, so that they cannot rot.

The quick start's shell block runs verbatim in a copy of the clone (it creates its own venv;
pip installs from the machine's configured index and cache), on Debian's own python3 when it
is "externally managed" (PEP 668), the case that broke `pip install .`. The Python example runs
as written against the sandbox, which it finds through GETTY_API_URL like the CLI does. And
`.ci/run`'s install lines are run on that externally managed python3 too.
"""

from __future__ import annotations

import ast
import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bulkgetty.sandbox import Faults, SandboxConfig, SandboxThread
from tests.harness import REPO, clean_env

#: A fresh venv and `pip install` from the local index: generous, but bounded.
INSTALL_TIMEOUT = 600
#: Debian's own interpreter and the marker that makes pip refuse to install into it.
DEBIAN_PYTHON = Path("/usr/bin/python3")
MARKERS = glob.glob("/usr/lib/python3*/EXTERNALLY-MANAGED")


def readme_block(after: str, lang: str) -> str:
    """The first ```LANG block after the heading or sentence `after`."""
    text = (REPO / "README.md").read_text()
    block = text.split(after, 1)[1].split(f"```{lang}\n", 1)[1]
    return block.split("```", 1)[0]


def clone_copy(dest: Path) -> Path:
    """The clone's files without its venv, git data, caches or earlier outputs."""
    shutil.copytree(
        REPO,
        dest,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "*.egg-info", "__pycache__", ".*_cache", "downloads", "build"
        ),
    )
    return dest


def externally_managed_python(bin_dir: Path) -> dict[str, str] | None:
    """An environment whose `python3` is Debian's externally managed one, or None."""
    if not (DEBIAN_PYTHON.exists() and MARKERS):
        return None
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(DEBIAN_PYTHON)
    env = clean_env()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.pop("VIRTUAL_ENV", None)
    return env


def bash(script: str, *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
    )


@pytest.mark.timeout(INSTALL_TIMEOUT + 120)
def test_quick_start_runs_verbatim_in_a_fresh_clone_and_its_python_fetches_over_https(
    tmp_path: Path,
) -> None:
    """The README's first command, as written, on Debian's externally managed python3 where
    there is one: it creates .venv, installs there, and downloads the sample manifest. Then
    that install fetches over https, a close-delimited body among the files: on Debian 12's
    Python 3.11.2 such a run ended "unexpected error" as its session closed."""
    block = readme_block("## Quick start", "sh").strip()
    assert block.count("\n") == 0 and block.startswith("python3 -m venv .venv && ")
    clone = clone_copy(tmp_path / "clone")
    env = externally_managed_python(tmp_path / "bin") or clean_env()
    done = bash(block, cwd=clone, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "11 assets: 11 downloaded" in done.stdout
    files = [p for p in (clone / "downloads").iterdir() if not p.name.startswith(".")]
    assert len(files) == 11
    assert "Traceback" not in done.stderr
    ids = ["9990001", "9990002", "9990003"]
    (clone / "ids.txt").write_text("\n".join(ids) + "\n")
    faults = Faults(close_delimited=frozenset({ids[0]}))
    config = SandboxConfig(sizes={i: 300_000 for i in ids}, faults=faults, bandwidth=2_000_000)
    with SandboxThread(config, tls=True) as sb:
        run = [str(clone / ".venv" / "bin" / "bulkgetty"), "run", "ids.txt", "--out", "tls"]
        tls = subprocess.run(
            [*run, "--api-rate", "500"],
            cwd=clone,
            env={**env, **sb.credentials_env()},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert tls.returncode == 0, tls.stderr[-3000:]
    assert "3 assets: 3 downloaded" in tls.stdout


def test_readme_python_example_runs_as_written_against_the_sandbox(tmp_path: Path) -> None:
    """The ```python block, verbatim, with only the sandbox's exports in the environment:
    it calls fetch() itself and the Python API reads GETTY_API_URL as the CLI does."""
    code = readme_block("### Python API", "python")
    assert "asyncio.run(fetch())" in code
    with SandboxThread() as sb:
        env = clean_env(sb.credentials_env())
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert sb.spends_by_asset() == {"image/1167612765": 1, "video/502370915": 1}
    assert "'event': 'run_finished'" in done.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_file()) == [
        "GettyImages-1167612765.jpg",
        "GettyImages-502370915.mp4",
    ]


def test_ci_runs_the_readme_test_command() -> None:
    """`.ci/run` installs and tests as the README's second command does, and stops on a
    failing step (set -e), so the README's test command is what CI proves."""
    block = readme_block("## Quick start", "sh")  # the first block: skip it
    text = (REPO / "README.md").read_text()
    second = text.split(block, 1)[1].split("```sh\n", 1)[1].split("```", 1)[0].strip()
    assert second == (
        "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && "
        ".venv/bin/python -m pytest -q"
    )
    ci = (REPO / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci
    assert "python3 -m venv .venv && .venv/bin/pip install --quiet -e '.[test]'" in ci
    assert ci.rstrip().endswith(".venv/bin/python -m pytest -q")


def third_party_imports_of_tests() -> set[str]:
    """Top-level modules the test suite imports that neither Python nor this repo provides:
    what `.[test]` must install."""
    local = {"tests", "bulkgetty", "benchmarks"}
    found: set[str] = set()
    for path in (REPO / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    return {m for m in found - local if m not in sys.stdlib_module_names and m != "__future__"}


@pytest.mark.timeout(INSTALL_TIMEOUT + 60)
def test_ci_install_lines_work_on_an_externally_managed_python(tmp_path: Path) -> None:
    """`.ci/run`'s install lines on Debian's own python3, which refuses `pip install .`
    (PEP 668): they install into .venv, and .venv then imports everything the tests import."""
    env = externally_managed_python(tmp_path / "bin")
    if env is None:
        pytest.skip(f"no externally managed {DEBIAN_PYTHON} here (markers: {MARKERS or 'none'})")
    ci = (REPO / ".ci" / "run").read_text()
    found = re.search(r"# >>> install\n(.*?)# <<< install", ci, re.S)
    assert found is not None, ".ci/run lost its install markers"
    clone = clone_copy(tmp_path / "clone")
    refused = bash("python3 -m pip install --dry-run .", cwd=clone, env=env)
    if "No module named pip" not in refused.stderr:  # Debian without python3-pip: no pip to refuse
        assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr
    done = bash(found.group(1), cwd=clone, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = (clone / ".venv" / "pyvenv.cfg").read_text()
    assert f"executable = {DEBIAN_PYTHON.resolve()}" in cfg
    modules = sorted(third_party_imports_of_tests())
    probe = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\n"
    imported = subprocess.run(
        [str(clone / ".venv" / "bin" / "python"), "-c", probe, *modules],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert imported.returncode == 0, (modules, imported.stderr[-2000:])
