"""specdistill: distill draft models for speculative decoding, and serve them losslessly."""

import importlib.abc
import importlib.util
import logging
import sys
from pathlib import Path

__version__ = "0.1.0"

# The library logs and never prints; entry points configure handlers.
logging.getLogger(__name__).addHandler(logging.NullHandler())


class _SourceLayout(importlib.abc.MetaPathFinder):
    """``specdistill.kernels`` and ``specdistill.serve`` live in ``kernels/src`` and ``serve/src`` of a
    source checkout (pyproject's ``package-dir``). An editable install maps them; this finder does the
    same when this package is imported from a checkout without one, e.g. a wheel installed elsewhere
    and the repo root on ``sys.path`` (which then shadows the wheel's copy)."""

    def __init__(self, root: Path):
        self.folders = {f"{__name__}.{name}": root / name / "src" for name in ("kernels", "serve")}

    def find_spec(self, name, path=None, target=None):
        folder = self.folders.get(name)
        if folder is None or not (folder / "__init__.py").is_file():
            return None
        return importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])


_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file():  # a source checkout, not an installed copy
    sys.meta_path.append(_SourceLayout(_checkout))  # last: an editable install's own finder comes first
