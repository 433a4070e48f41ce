"""Nothing generic can be imported from the repo root (where `python -m pytest`, `python -m specdistill.cli`
and `torchrun -m` put it on sys.path): a top-level `kernels` package there shadowed the PyPI package
`kernels` that transformers >= 5.25 imports when `modeling_utils` loads, so nothing ran from the root."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def _run_from_root(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", ["kernels", "serve"])
def test_the_top_level_folders_are_not_importable_packages(name):
    # The check that fails whatever transformers does: `kernels` either resolves to the PyPI package or
    # to nothing, never to this checkout's folder.
    probe = f"import importlib.util as u; s = u.find_spec({name!r}); print(s.origin if s and s.origin else '')"
    found = _run_from_root("-c", probe)
    assert found.returncode == 0, found.stderr
    origin = found.stdout.strip()
    assert not origin.startswith(str(ROOT / name)), f"`import {name}` from the repo root finds {origin}"


def test_transformers_and_our_packages_import_from_the_repo_root():
    done = _run_from_root("-c", "import transformers.integrations.hub_kernels, specdistill.kernels, specdistill.serve")
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_cli_runs_as_a_module_from_the_repo_root():
    done = _run_from_root("-m", "specdistill.cli", "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "train" in done.stdout


def test_a_wheel_holds_every_subpackage():
    """pyproject lists its packages by hand (package-dir maps two of them): a subpackage missing from the
    list is left out of a wheel, while an editable install still finds it."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"specdistill." + p.parent.name for p in (ROOT / "specdistill").glob("*/__init__.py")}
    assert found | {"specdistill", "specdistill.kernels", "specdistill.serve"} == listed


def test_a_checkout_imported_without_its_editable_install_finds_kernels_and_serve():
    """A wheel installed elsewhere and the repo root on sys.path: the checkout's `specdistill` shadows the
    wheel's, so it must find its own kernels/src and serve/src (specdistill/__init__.py)."""
    probe = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__module__]; "
             "import specdistill.kernels, specdistill.serve.tree as t; print(specdistill.kernels.__file__, t.__file__)")
    done = _run_from_root("-c", probe)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(ROOT / "kernels/src/__init__.py"), str(ROOT / "serve/src/tree.py")]
