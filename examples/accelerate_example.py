"""R-Drop with Hugging Face Accelerate: wrap the model before ``accelerator.prepare``.

    python examples/accelerate_example.py --steps 50                       # one process
    accelerate launch --multi_gpu --num_processes 2 examples/accelerate_example.py --steps 50
    # add the script's --cpu (after its name) to run the two processes on CPU with gloo;
    # Accelerate's own --cpu before the script name starts one process

``prepare`` wraps the ``RDrop`` module in DDP when there are several processes (DDP(RDrop(net)):
one DDP forward per step, the duplicated pair made inside it, on the rank that owns the samples).
Gradient accumulation goes through ``accelerator.accumulate``. Lines tagged ``# [rdrop]`` are the
change from a plain Accelerate script.
"""

from __future__ import annotations

import argparse

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rdrop  # [rdrop]


def make_data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(5, 20, generator=torch.Generator().manual_seed(1)) * 1.5
    y = torch.randint(0, 5, (n,), generator=g)
    return TensorDataset(centers[y] + torch.randn(n, 20, generator=g), y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--cpu", action="store_true", help="force CPU")
    args = parser.parse_args()

    accelerator = Accelerator(cpu=args.cpu, gradient_accumulation_steps=2)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 5))
    model = rdrop.RDrop(net, alpha=args.alpha)  # [rdrop]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = DataLoader(make_data(4096, 0), batch_size=32, shuffle=True)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    step = 0
    model.train()
    while step < args.steps:
        for x, y in loader:
            with accelerator.accumulate(model):
                out = model(x, target=y)  # [rdrop] RDropOutput
                accelerator.backward(out.loss)  # [rdrop]
                optimizer.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                step += 1
                if step % 10 == 0 or step == args.steps:
                    loss = accelerator.gather(out.loss.detach()).mean().item()
                    cons = accelerator.gather(out.consistency_loss.detach()).mean().item()
                    accelerator.print(f"step {step}: loss {loss:.4f} consistency {cons:.4f} "
                                      f"({accelerator.num_processes} process(es))")
                if step == args.steps:
                    break

    flat = torch.cat([p.detach().flatten() for p in accelerator.unwrap_model(model).parameters()])
    spread = (accelerator.gather(flat[None]) - flat).abs().max().item()
    accelerator.print(f"max parameter difference across processes {spread:.2e}")
    model.eval()
    test = make_data(1024, 1)
    with torch.no_grad():
        pred = accelerator.unwrap_model(model)(test.tensors[0].to(accelerator.device)).argmax(-1)
    accelerator.print(f"test accuracy: {(pred.cpu() == test.tensors[1]).float().mean():.3f}")
    accelerator.wait_for_everyone()
    accelerator.end_training()  # destroys the process group, so every rank exits cleanly


if __name__ == "__main__":
    main()
