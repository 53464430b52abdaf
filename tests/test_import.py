"""`import rdrop` stays cheap: torch and nothing heavier."""

from __future__ import annotations

import subprocess
import sys


def test_import_rdrop_loads_no_heavy_optional_module():
    code = (
        "import sys, rdrop\n"
        "heavy = [m for m in ('transformers', 'accelerate', 'rdrop_experiments', "
        "'rdrop.integrations', 'matplotlib', 'sklearn', 'sacrebleu') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "", f"import rdrop loaded: {out.stdout.strip()}"


def test_public_api_is_exported():
    import rdrop

    for name in rdrop.__all__:
        assert getattr(rdrop, name) is not None
    assert rdrop.__version__
