"""The library apart from its application: ``import torchinn`` (and its command line, whose ``demo``
subcommand imports the app only when run) loads no module of :mod:`torchinn_demo` and none of the
demo's heavy dependencies."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

APP = ("torchinn_demo", "matplotlib", "skimage", "sklearn", "mlxtend")

PROBE = """
import json, sys
{imports}
print(json.dumps(sorted(sys.modules)))
"""


def _loaded(*imports: str) -> list[str]:
    """The top-level packages of the app (and its dependencies) in ``sys.modules`` after running
    ``imports`` in a fresh interpreter."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", PROBE.format(imports="\n".join(imports))], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    modules = json.loads(out.stdout.splitlines()[-1])
    assert "torch" in modules  # the probe really ran the imports
    return sorted(m for m in modules if m.split(".")[0] in APP)


@pytest.mark.parametrize("imports", [("import torchinn",), ("import torchinn", "import torchinn.cli.main"),
                                     ("import torchinn.cli.main", "torchinn.cli.main.build_parser()")])
def test_the_core_imports_nothing_of_the_app(imports):
    assert _loaded(*imports) == []


def test_the_probe_sees_the_app_when_it_is_imported():
    pytest.importorskip("matplotlib")
    loaded = _loaded("import torchinn", "import torchinn_demo.tour", "import torchinn_demo.plots as p",
                     "import matplotlib")
    assert {"torchinn_demo", "torchinn_demo.tour", "torchinn_demo.plots", "matplotlib"} <= set(loaded)
