"""`import rdrop` stays cheap: torch and nothing heavier."""

from __future__ import annotations

import subprocess
import sys


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (a clean sys.modules) and return its stripped stdout."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120).stdout.strip()


def test_import_rdrop_loads_no_heavy_optional_module():
    code = (
        "import sys, rdrop\n"
        "heavy = [m for m in ('transformers', 'accelerate', 'rdrop_experiments', "
        "'rdrop.integrations', 'matplotlib', 'sklearn', 'sacrebleu') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    loaded = _python(code)
    assert loaded == "", f"import rdrop loaded: {loaded}"


def test_public_api_is_exported():
    import rdrop

    for name in rdrop.__all__:
        assert getattr(rdrop, name) is not None
    assert rdrop.__version__


def test_import_and_eager_training_do_not_load_the_compiler():
    # torch._dynamo costs ~3 s to import; only torch.compile users should pay it.
    code = (
        "import sys, torch, rdrop\n"
        "net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.2), "
        "torch.nn.Linear(8, 3))\n"
        "model = rdrop.RDrop(net, alpha=1.0).train()\n"
        "model(torch.randn(5, 4), target=torch.tensor([0, 1, 2, 0, 1])).loss.backward()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    assert _python(code) == "False"
