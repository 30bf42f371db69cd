# Hugging Face Trainer: a tiny GPT-2 built from its config on the meta device and materialized
# with torchinit's "gpt2" policy, trained a few steps; DiagnoseCallback checks the first batch
# and logs the report next to the Trainer's TensorBoard run (output_dir/runs/torchinit).
# Run: python examples/integrations_hf_trainer.py
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from torchinit.integrations.hf import DiagnoseCallback, from_config

config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=32)
model = from_config(GPT2LMHeadModel, config, "gpt2", seed=0)  # meta -> keyed init, ties kept


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, n=64, length=32):
        self.ids = torch.randint(0, 128, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


args = TrainingArguments(output_dir="gpt2-tiny", use_cpu=True, max_steps=4, per_device_train_batch_size=8,
                         logging_steps=1, save_strategy="no", report_to=["tensorboard"], disable_tqdm=True)
check = DiagnoseCallback(fail_on="error")  # InitVerdictError from train() on an error verdict
trainer = Trainer(model=model, args=args, train_dataset=RandomTokens(), callbacks=[check])
trainer.train()
print("healthy init:", check.report.healthy, "| verdicts:", [str(v) for v in check.report.verdicts])
