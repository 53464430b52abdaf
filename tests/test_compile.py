"""torch.compile and RDrop: a few graphs for many steps, no recompile per step (on CPU).

Recompiles are decided by dynamo's guards, whatever the backend, so the tests use the "eager"
backend (no code generation) to stay fast; the graph count is what they assert.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from rdrop import RDrop


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Dropout(0.2), nn.Linear(16, 4))


def _train(model: nn.Module, wrapped: RDrop, steps: int = 12,
           graphs: list[int] | None = None) -> list[float]:
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.05)
    wrapped.attach_optimizer(opt)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 6, generator=g), torch.randint(0, 4, (8,), generator=g)
    losses = []
    for step in range(steps):
        torch.manual_seed(step)
        out = model(x, target=y)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
        if graphs is not None:
            graphs.append(counters["stats"]["unique_graphs"])
    return losses


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("check_finite", [False, True])
def test_compiled_wrapper_does_not_recompile_per_step(check_finite):
    # every_k_steps and a warm-up make the decision and alpha change from step to step.
    kwargs = {"alpha": 1.0, "every_k_steps": 2, "alpha_warmup_steps": 6,
              "check_finite": check_finite}
    wrapped = RDrop(_net(), **kwargs)
    graphs: list[int] = []
    losses = _train(torch.compile(wrapped, backend="eager"), wrapped, graphs=graphs)
    # Graphs: the R-Drop and the single-pass step, the first call's input check, the second
    # warm-up alpha (dynamo then makes it dynamic), and the pieces between graph breaks (the
    # step decision; with check_finite the finiteness read). All are compiled by step 4; steps
    # 5-12 compile nothing (before the fix every step recompiled: 11 graphs, then eager).
    assert graphs[3:] == [graphs[3]] * 9, graphs
    assert graphs[-1] <= (10 if check_finite else 5), dict(counters["stats"])
    assert wrapped.num_steps == 12
    torch._dynamo.reset()
    eager = RDrop(_net(), **kwargs)
    torch.testing.assert_close(losses, _train(eager, eager), rtol=1e-5, atol=1e-6)


def test_compiling_the_inner_model_compiles_one_graph_per_shape():
    wrapped = RDrop(torch.compile(_net(), backend="eager"), alpha=1.0, every_k_steps=3,
                    check_inputs=False)
    _train(wrapped, wrapped)
    assert counters["stats"]["unique_graphs"] <= 3, dict(counters["stats"])


@pytest.mark.parametrize("kwargs", [{"stop_gradient": True}, {"mode": "twice"}])
def test_other_paths_compile_through_autograd_without_recompiles(kwargs):
    # aot_eager also traces the backward, as inductor does, without generating code.
    wrapped = RDrop(_net(), alpha=1.0, every_k_steps=2, check_finite=False, **kwargs)
    graphs: list[int] = []
    losses = _train(torch.compile(wrapped, backend="aot_eager"), wrapped, graphs=graphs)
    assert graphs[3:] == [graphs[3]] * 9, graphs
    torch._dynamo.reset()
    eager = RDrop(_net(), alpha=1.0, every_k_steps=2, check_finite=False, **kwargs)
    torch.testing.assert_close(losses, _train(eager, eager), rtol=1e-5, atol=1e-6)
