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


PUBLIC = ["AutoStart", "PlateauStart", "RDrop", "RDropLoss", "RDropOutput", "Schedule",
          "TryoutResult", "ctc_rdrop_loss", "multi_pass_rdrop_loss", "multilabel_rdrop_loss",
          "plateau_step", "rdrop_loss", "subset_rdrop_loss", "symmetric_kl", "tryout",
          "unwrap_state_dict"]


def test_public_api_is_exactly_these_names_and_each_is_what_its_module_defines():
    import rdrop
    from rdrop import wrapper
    from rdrop.losses import functional
    from rdrop.training import autostart, schedule, tryout

    assert sorted(rdrop.__all__) == sorted(PUBLIC)  # a new public name is added here on purpose
    assert rdrop.RDrop is wrapper.RDrop and rdrop.rdrop_loss is functional.rdrop_loss
    assert rdrop.PlateauStart is autostart.PlateauStart and rdrop.Schedule is schedule.Schedule
    assert callable(rdrop.tryout) and rdrop.TryoutResult is tryout.TryoutResult
    assert isinstance(rdrop.__version__, str) and rdrop.__version__.count(".") == 2


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
