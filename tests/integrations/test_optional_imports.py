"""Each integration names what to install when its framework is missing, and `import rdrop`
loads none of them."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(("module", "blocked", "hint"), [
    ("rdrop.integrations.trl", "trl", "pip install 'torch-rdrop[hf]' trl"),
    ("rdrop.integrations.lightning", "pytorch_lightning", "pip install pytorch-lightning"),
])
def test_missing_framework_names_the_install(module, blocked, hint):
    pytest.importorskip("transformers")
    code = (
        f"import sys; sys.modules[{blocked!r}] = None; sys.modules['lightning'] = None\n"
        f"try:\n    import {module}\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert hint in out.stdout, out.stdout + out.stderr


def test_import_rdrop_loads_no_integration():
    code = ("import sys, rdrop, rdrop.integrations\n"
            "print(sorted(m for m in ('transformers', 'trl', 'peft', 'pytorch_lightning', "
            "'deepspeed', 'rdrop.integrations.hf') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
