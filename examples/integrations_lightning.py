# Lightning: a LightningModule whose model is built on the meta device in configure_model,
# initialized by torchinit before the optimizer exists, checked on the first batch, logged to
# TensorBoard. Then the same with Fabric and an empty-init module.
# Run: python examples/integrations_lightning.py
import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from torchinit.integrations.lightning import InitCallback, diagnose_batch, init_fabric_module


def mlp():
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))


class Classifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = None

    def configure_model(self):  # meta: no memory, no time spent on an init thrown away
        if self.model is None:
            with torch.device("meta"):
                self.model = mlp()

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


x = torch.randn(256, 8)
data = torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long())
loader = torch.utils.data.DataLoader(data, batch_size=32)

init = InitCallback("kaiming", seed=0, module="model", fail_on="error")
trainer = L.Trainer(max_steps=5, accelerator="cpu", logger=TensorBoardLogger("runs", name="lightning"),
                    callbacks=[init], enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, log_every_n_steps=1)
trainer.fit(Classifier(), loader)
print("Trainer: healthy init:", init.report.healthy, "| plan entries:", len(init.plan.entries))

# Fabric: no callbacks; init after building, before fabric.setup; check the first batch
fabric = L.Fabric(accelerator="cpu", devices=1, loggers=TensorBoardLogger("runs", name="fabric"))
with fabric.init_module(empty_init=True):  # allocated, NOT initialized: garbage until torchinit
    net = mlp()
plan = init_fabric_module(fabric, net, "kaiming", seed=0)
optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
net, optimizer = fabric.setup(net, optimizer)
for step, (xb, yb) in enumerate(fabric.setup_dataloaders(loader)):
    if step == 0:
        report = diagnose_batch(fabric, net, (xb, yb), plan=plan, fail_on="error")
    loss = nn.functional.cross_entropy(net(xb), yb)
    fabric.backward(loss)
    optimizer.step()
    optimizer.zero_grad()
print("Fabric: healthy init:", report.healthy, "| last loss:", round(loss.item(), 3))
