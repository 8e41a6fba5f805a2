"""`gradwatch report` separates now from then: each layer's state over the last steps, apart from its alerts."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_gradwatch import GradWatch
from lightning_gradwatch.demos import DeepMLP
from lightning_gradwatch.html_report import run_data
from lightning_gradwatch.layer_state import layer_states
from lightning_gradwatch.runs import load_run
from tests.helpers import flavour, make_mlp_module, regression_data, trainer_kwargs
from tests.test_cli import gradwatch

pl = flavour("lightning.pytorch")


def _fit(root: Path, model, steps: int, log_every: int = 2) -> Path:
    trainer = pl.Trainer(
        callbacks=[GradWatch(log_every_n_steps=log_every)],
        **trainer_kwargs(root, max_epochs=50, max_steps=steps),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the alerts are what the tests read back, from the files
        trainer.fit(model)
    return Path(trainer.logger.log_dir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("states")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        recovered = _fit(root / "recovered", make_mlp_module(pl, optimizer="adam", lr=0.3, batches=1024), 120)
        torch.manual_seed(0)
        dead = _fit(root / "dead", DeepMLP("relu", depth=5, optimizer="adam", lr=0.05), 120)
        torch.manual_seed(0)
        sigmoid = _fit(root / "sigmoid", DeepMLP("sigmoid", depth=11), 80, log_every=5)
    return {"recovered": recovered, "dead": dead, "sigmoid": sigmoid}


def _rows(text: str) -> dict[str, tuple[str, str]]:
    """``{layer: (now, alerts)}`` from the text table."""
    rows = {}
    for line in text.splitlines():
        match = re.match(r"^(\(total\)|[\w.]+)\s+\d+\s+(?:\S+\s+){5}(ok|small|zero|large|non-finite)\s+(.+)$", line)
        if match:
            rows[match.group(1)] = (match.group(2), match.group(3))
    return rows


def test_recovered_run_is_ok_now_and_still_shows_its_alert(runs):
    # Adam at lr 0.3: the norms exploded at step 1 (71x the first steps'), then settled
    result = gradwatch("report", str(runs["recovered"]))
    assert result.returncode == 0, result.stderr
    assert _rows(result.stdout) == dict.fromkeys(("(total)", "net.0", "net.2", "head"), ("ok", "exploding@1"))
    (doc,) = json.loads(gradwatch("report", str(runs["recovered"]), "--format", "json").stdout)
    layer = doc["layers"][0]
    assert (layer["status"], layer["state"], layer["named_in"]) == ("exploding", "ok", ["exploding@1"])
    assert layer["recent"]["last_step"] == 119
    assert layer["recent"]["points"] >= 5
    assert doc["total_norm"]["all"]["state"] == "ok"


def test_a_network_whose_every_gradient_is_zero_is_zero_now(runs):
    # Adam at lr 0.05 on a deep ReLU net: its norm 16x at step 1 over a level loss (1.40, 1.39), then the loss goes to
    # exactly 0 (every logit certain) and so does every gradient: no alert (a jump needs its loss up with it)
    rows = _rows(gradwatch("report", str(runs["dead"])).stdout)
    assert rows["net.0"] == ("zero", "-")
    assert rows["net.8"] == ("zero", "-")
    assert rows["(total)"][0] == "zero"


def test_vanishing_layers_are_small_now(runs):
    rows = _rows(gradwatch("report", str(runs["sigmoid"])).stdout)
    alerted = {name for name, (_, alerts) in rows.items() if alerts.startswith("vanishing@")} - {"(total)"}
    small = {name for name, (now, _) in rows.items() if now == "small"}
    assert small == {"net.0", "net.2", "net.4", "net.6"}
    assert alerted - {"net.8"} == small  # net.8 sits at the threshold (1e-5x): small when alerted, at step 19
    assert rows["net.20"] == ("ok", "-")


def test_states_from_event_files_alone_agree(runs, tmp_path):
    for name in ("recovered", "dead", "sigmoid"):
        run = Path(shutil.copytree(runs[name], tmp_path / name))
        expected = _rows(gradwatch("report", str(run)).stdout)
        (run / "gradwatch.json").unlink()
        result = gradwatch("report", str(run))
        assert "(event files" in result.stdout
        found = _rows(result.stdout)
        if name == "sigmoid":  # net.8 sits at the threshold (1.0e-5x the last layer): the window's points decide
            found.pop("net.8"), expected.pop("net.8")
        assert found == expected


def test_report_heading_is_a_legend(runs):
    lines = gradwatch("report", str(runs["recovered"])).stdout.splitlines()
    legend = lines[: lines.index("")]
    assert legend[0] == "gradient health per layer; columns:"
    assert [line.split()[0] for line in legend[1:] if not line.startswith("               ")] == [
        "steps",
        "last..max",
        "grad/weight",
        "now",
        "alerts",
    ]
    assert all(len(line) <= 100 for line in legend)
    title = lines[len(legend) + 1]
    assert title.endswith("(gradwatch.json, 120 steps, finished; now: steps 108-119)")


class Refrozen(pl.LightningModule):
    """``net.0`` frozen for the first 32 steps and trained after; ``net.2`` trained for 64 steps and frozen after."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))
        self.net[0].requires_grad_(False)

    def on_train_batch_start(self, batch, batch_idx):
        if self.global_step == 32:
            self.net[0].requires_grad_(True)
        if self.global_step == 64:
            self.net[2].requires_grad_(False)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return regression_data(256)


@pytest.fixture(scope="module")
def refrozen(tmp_path_factory) -> Path:
    """A run of 96 steps: ``net.0`` trained from step 32, ``net.2`` until step 63; scalars every 2 steps."""
    trainer = pl.Trainer(
        callbacks=[GradWatch(log_every_n_steps=2, images=False)],
        **trainer_kwargs(tmp_path_factory.mktemp("refrozen"), max_epochs=50, max_steps=96),
    )
    trainer.fit(Refrozen())
    return Path(trainer.logger.log_dir)


def _now(text: str) -> dict[str, str]:
    """``{layer: now}`` from the text table, in its order (a state may be several words)."""
    rows = (re.match(r"^(net\.\d)\s+\d+\s+(?:\S+\s+){5}(.+?)\s{2,}(\S.*)$", line) for line in text.splitlines())
    return {row.group(1): row.group(2) for row in rows if row}


def test_layers_are_listed_in_the_models_order(refrozen, tmp_path):
    model_order = ["net.0", "net.2", "net.4"]  # net.0's first gradient came at step 32, after the others'
    report = json.loads((refrozen / "gradwatch.json").read_text())
    assert [layer["name"] for layer in report["layers"]] == model_order
    assert list(_now(gradwatch("report", str(refrozen)).stdout)) == model_order
    (doc,) = json.loads(gradwatch("report", str(refrozen), "--format", "json").stdout)
    assert [layer["name"] for layer in doc["layers"]] == model_order
    assert run_data(load_run(refrozen, series=True))["layers"] == model_order  # the HTML page: first layer on top

    run = Path(shutil.copytree(refrozen, tmp_path / "run"))
    (run / "gradwatch.json").unlink()  # from the event files alone: the order of each step's values
    assert [layer["name"] for layer in load_run(run).layers] == model_order


class CriticFirst(pl.LightningModule):
    """A GAN under manual optimization: the generator is registered first, the critic's optimizer steps first."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        self.critic = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        real, _ = batch
        opt_g, opt_c = self.optimizers()
        fake = self.generator(torch.randn(len(real), 4))
        critic_loss = self.critic(fake.detach()).mean() - self.critic(real[:, :2]).mean()
        opt_c.zero_grad()
        self.manual_backward(critic_loss)
        opt_c.step()
        generator_loss = -self.critic(self.generator(torch.randn(len(real), 4))).mean()
        opt_g.zero_grad()
        self.manual_backward(generator_loss)
        opt_g.step()

    def configure_optimizers(self):
        return torch.optim.Adam(self.generator.parameters(), 1e-3), torch.optim.Adam(self.critic.parameters(), 1e-3)

    def train_dataloader(self):
        return regression_data(64)


def test_two_optimizers_layers_are_listed_in_the_models_order_whichever_steps_first(tmp_path):
    run = _fit(tmp_path, CriticFirst(), 8)
    model_order = ["generator.0", "generator.2", "critic.0", "critic.2"]
    report = json.loads((run / "gradwatch.json").read_text())
    assert [layer["name"] for layer in report["layers"]] == model_order
    assert list(_layer_rows(gradwatch("report", str(run)).stdout)) == model_order
    assert run_data(load_run(run, series=True))["layers"] == model_order


def _layer_rows(text: str) -> list[str]:
    return [line.split()[0] for line in text.splitlines() if re.match(r"^(generator|critic)\.\d\s", line)]


def test_layer_frozen_mid_run_has_no_gradient_now(refrozen, tmp_path):
    lines = gradwatch("report", str(refrozen)).stdout.splitlines()
    assert _now("\n".join(lines)) == {"net.0": "ok", "net.2": "no gradient since step 63", "net.4": "ok"}
    assert lines[lines.index("") + 1].endswith("(gradwatch.json, 96 steps, finished; now: steps 86-95)")
    (doc,) = json.loads(gradwatch("report", str(refrozen), "--format", "json").stdout)
    assert [(layer["state"], layer.get("since")) for layer in doc["layers"]] == [
        ("ok", None),
        ("no-gradient", 63),
        ("ok", None),
    ]
    assert run_data(load_run(refrozen, series=True))["marked"] == ["", "no gradient since step 63", ""]

    run = Path(shutil.copytree(refrozen, tmp_path / "run"))
    (run / "gradwatch.json").unlink()
    assert layer_states(load_run(run))["net.2"].label == "no gradient since step 62"  # its last logged step
