"""The Lightning and Hugging Face callbacks in real (tiny, CPU) training runs, checked against
the hand-computed oracle of tests/watch/oracle.py recorded by an independent callback."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

import reludoctor  # noqa: E402
from tests.watch import oracle  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::reludoctor.errors.ReludoctorWarning")]
STEPS, WINDOW, BATCH, LR = 30, 5, 60, 1.0


def _check(watcher, maxima, model):
    """The watcher's dead units now against the oracle's, and its site names against scan's."""
    steps = list(range(len(maxima)))
    assert watcher.observed_steps == steps
    names = list(watcher.summary())
    for layer, name in enumerate(names):
        truth = oracle.events([m[layer] for m in maxima], steps, WINDOW)[-1]["dead"]
        assert watcher.dead_units()[name] == truth
    assert any(watcher.dead_units().values()), "no unit died: the comparison proves little"
    x, _ = oracle.digits()
    assert [s.name for s in reludoctor.scan(model, x[:64].numpy(), method="dispatch").sites] == names


def test_lightning_trainer(tmp_path, one_thread_seeded):
    pl = pytest.importorskip("lightning.pytorch")
    from reludoctor.integrations.lightning import ReludoctorCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = oracle.mlp()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)  # not self(x): the callback still sees it

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR)

    maxima = []

    class Oracle(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.x = batch[0]

        def on_before_optimizer_step(self, trainer, module, optimizer):  # weights as the forward saw them
            maxima.append(oracle.hidden_maxima([module.net[0], module.net[2]], self.x))

    x, y = oracle.digits()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=False)
    callback = ReludoctorCallback(every=1, window=WINDOW, log=tmp_path / "w.jsonl")
    module = Module()
    trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[Oracle(), callback],
                         default_root_dir=tmp_path)
    trainer.fit(module, loader)
    assert len(maxima) == STEPS
    assert list(callback.watcher.summary()) == ["net.1", "net.3"]
    _check(callback.watcher, maxima, module)
    assert callback.watcher.optimizer is trainer.optimizers[0]


def test_huggingface_trainer(tmp_path, one_thread_seeded):
    pytest.importorskip("accelerate")
    transformers = pytest.importorskip("transformers")
    from reludoctor.integrations.huggingface import ReludoctorCallback

    maxima = []

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = oracle.mlp()

        def forward(self, pixels, labels=None):
            if self.training:  # by hand, before the forward: the weights this step sees
                maxima.append(oracle.hidden_maxima([self.net[0], self.net[2]], pixels))
            logits = self.net(pixels)
            if labels is None:  # reludoctor.scan's forward
                return logits
            return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}

    class Digits(torch.utils.data.Dataset):
        def __init__(self):
            self.x, self.y = oracle.digits()

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return {"pixels": self.x[i], "labels": self.y[i]}

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=STEPS, per_device_train_batch_size=BATCH, learning_rate=LR,
        lr_scheduler_type="constant", optim="sgd", weight_decay=0.0, report_to=[], use_cpu=True,
        save_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=0)
    callback = ReludoctorCallback(every=1, window=WINDOW)
    model = Model()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Digits(), callbacks=[callback])
    trainer.train()
    assert len(maxima) == STEPS
    assert list(callback.watcher.summary()) == ["net.1", "net.3"]
    _check(callback.watcher, maxima, model)
