# Diagnose a small MLP and write the report to TensorBoard and to an offline W&B run.
# Run: python examples/integrations_logging.py, then: tensorboard --logdir runs
import torch
import wandb
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import torchinit

model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
plan = torchinit.init_model(model, "kaiming", seed=0)
report = torchinit.diagnose(model, torch.randn(64, 16), plan=plan)

with SummaryWriter("runs/mlp") as writer:  # scalars, histograms, verdicts, figures
    tags = report.log(writer, step=0, model=model)
print(f"{len(tags)} TensorBoard tags, e.g. {tags[0]}")

run = wandb.init(project="torchinit-demo", mode="offline", dir=".", settings=wandb.Settings(silent=True))
keys = report.log(run, model=model)  # the same, with the layers and verdicts as tables
run.finish()
print(f"{len(keys)} W&B keys, e.g. torchinit/layers: {'torchinit/layers' in keys}")
