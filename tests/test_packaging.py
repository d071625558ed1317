"""The distribution installs from nothing: as a wheel, and from a git URL.

What a team does (``pip install .``, ``pip install git+https://...``) is done here
offline and in seconds, on a copy of this working tree (committed or not): the
build uses this venv's setuptools (``--no-build-isolation``; requirements-dev.txt
pins one inside ``build-system.requires``), the install takes no dependency
(``--no-deps``) into a fresh venv that sees this venv's packages through a
``.pth`` file, and the imports run isolated (``python -I``) from a directory
outside the checkout, so nothing can come from the checkout itself.

``venv --system-site-packages`` would not do: run from a venv's python it shows
the base interpreter's site-packages, not the venv's, where the dependencies are.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = {"sse_gateway", "sse_gateway_client"}

# Run in the new venv: import both packages (every engine module), and say from where.
CHECK = """
import importlib, importlib.metadata, json, pkgutil, sys
import sse_gateway_client
pulled = sorted(m for m in ("flask", "gevent", "sse_gateway", "openai", "anthropic", "redis")
                if m in sys.modules)
import sse_gateway
engine = [m.name for m in pkgutil.walk_packages(sse_gateway.__path__, "sse_gateway.")]
for name in engine:
    importlib.import_module(name)
print(json.dumps({
    "files": [sse_gateway.__file__, sse_gateway_client.__file__],
    "pulled_by_client": pulled,
    "version": sse_gateway.__version__,
    "dist_version": importlib.metadata.version("sse-gateway"),
    "engine": engine,
}))
"""


def run(*args: str | Path, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env |= {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1", "GIT_CONFIG_NOSYSTEM": "1"}
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def pip(*args: str | Path, cwd: Path) -> str:
    return run(sys.executable, "-m", "pip", "--no-cache-dir", "--quiet", *args, cwd=cwd)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the working tree's files (tracked, or new and not ignored): the checkout
    stays clean (the build writes build/ and *.egg-info/ beside pyproject.toml)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    copy = tmp_path_factory.mktemp("source")
    listed = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    return copy


def new_venv(where: Path) -> Path:
    """An empty venv that sees the running interpreter's site-packages; its python."""
    run(sys.executable, "-m", "venv", "--without-pip", where, cwd=where.parent)
    python = where / "bin" / "python"
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                  cwd=where).strip()
    ours = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    ours += [sysconfig.get_path("purelib")]
    (Path(purelib) / "_parent_site.pth").write_text("\n".join(dict.fromkeys(ours)) + "\n")
    return python


def check_imports(python: Path, venv: Path, outside: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(run(python, "-I", "-c", CHECK, cwd=outside))
    for file in report["files"]:
        assert Path(file).is_relative_to(venv), (file, "imported from outside the venv")
    assert report["pulled_by_client"] == [], "sse_gateway_client must need httpx, httpx-sse only"
    assert report["version"] == report["dist_version"]
    assert {"sse_gateway.events", "sse_gateway.transports.sse",
            "sse_gateway.broker.redis"} <= set(report["engine"])
    return report


@pytest.fixture(scope="module")
def wheel(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    backend = Requirement(PYPROJECT["build-system"]["requires"][0])
    setuptools = installed("setuptools")
    if setuptools is None or setuptools not in backend.specifier:
        pytest.skip(f"setuptools {setuptools} here, outside build-system.requires {backend}: "
                    "make unit/test install requirements-dev.txt's pin")
    dist = tmp_path_factory.mktemp("dist")
    pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", dist, source,
        cwd=dist)
    (built,) = dist.glob("*.whl")
    return built


def installed(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def test_the_wheel_holds_the_two_packages_only(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    tops = {name.split("/", 1)[0] for name in names}
    (metadata,) = tops - PACKAGES
    assert metadata.startswith("sse_gateway-") and metadata.endswith(".dist-info"), tops
    assert {"sse_gateway/py.typed", "sse_gateway_client/py.typed"} <= set(names)
    assert "sse_gateway/transports/sse.py" in names  # subpackages are in
    assert not [n for n in names if n.startswith(("app/", "tests/", "bench/", "config/"))]


def test_the_wheel_installs_and_imports_from_anywhere(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    python = new_venv(venv)
    pip("--python", python, "install", "--no-deps", wheel, cwd=tmp_path)
    check_imports(python, venv, outside=tmp_path)


def test_a_git_url_installs_and_imports(source: Path, wheel: Path, tmp_path: Path) -> None:
    """``pip install git+file://...`` of a clone of this tree (pip clones it itself)."""
    repo = tmp_path / "repo"
    shutil.copytree(source, repo, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    run("git", "init", "--quiet", "--initial-branch=main", cwd=repo)
    run("git", "add", "--all", cwd=repo)
    run("git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "commit",
        "--quiet", "--no-verify", "--message", "snapshot", cwd=repo)
    venv = tmp_path / "venv"
    python = new_venv(venv)
    pip("--python", python, "install", "--no-deps", "--no-build-isolation",
        f"git+{repo.as_uri()}", cwd=tmp_path)
    check_imports(python, venv, outside=tmp_path)


# --------------------------------------------------------------------------- pins vs ranges


def pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file and of the files it ``-r``-includes."""
    found: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r "):
            found |= pins(path.parent / line[3:].strip())
        elif line:
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"{path.name}: {line} is not pinned"
            found[canonicalize_name(requirement.name)] = spec.version
    return found


def test_every_range_holds_its_pin() -> None:
    """pyproject.toml's ranges are around the versions requirements*.txt pins and tests."""
    runtime, dev = pins(ROOT / "requirements.txt"), pins(ROOT / "requirements-dev.txt")
    project = PYPROJECT["project"]
    declared = [(d, runtime) for d in project["dependencies"]]
    declared += [(d, runtime) for extra in project["optional-dependencies"].values()
                 for d in extra]
    declared += [(d, dev) for d in PYPROJECT["build-system"]["requires"]]
    for line, pinned in declared:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{line}: no pin in requirements*.txt"
        assert pinned[name] in requirement.specifier, f"{line}: the pin is {pinned[name]}"
        assert any(s.operator == "<" for s in requirement.specifier), f"{line}: no upper bound"
