"""train.ema (averaged, saved, preferred for evaluation and inference) and train.amp (bfloat16
on the CPU) with gradient clipping."""

from __future__ import annotations

import pytest
import torch

from gfldet.core.checkpoint import (
    load_checkpoint,
)
from gfldet.inference.predictor import load_trained_model
from gfldet.training.trainer import Trainer, unwrap
from tests.helpers import tiny_train_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_ema_is_averaged_saved_and_preferred(shapes, tmp_path):
    work = tmp_path / "w"
    cfg = tiny_train_cfg(shapes, work, "train.ema=true", "train.ema_decay=0.5", "train.max_iters=2")
    seen: list[dict] = []

    class Recording(Trainer):
        def train_step(self, *args):
            out = super().train_step(*args)
            seen.append({k: v.clone() for k, v in unwrap(self.model).state_dict().items()})
            return out

    Recording(cfg).fit()
    state = load_checkpoint(work / "latest.pth")
    assert state["ema_updates"] == 2
    name = "head.gfl_cls.weight"
    # The first update copies the weights; then ema = 0.5 * ema + 0.5 * weights.
    torch.testing.assert_close(state["ema"][name], 0.5 * seen[0][name] + 0.5 * seen[1][name])
    assert not torch.equal(state["ema"][name], state["model"][name])
    # (That evaluation during training uses the EMA weights: test_distributed_training.py.)

    model, _ = load_trained_model(cfg, work / "latest.pth", torch.device("cpu"))
    assert torch.equal(model.state_dict()[name], state["ema"][name])
    model, _ = load_trained_model(cfg, work / "latest.pth", torch.device("cpu"), use_ema=False)
    assert torch.equal(model.state_dict()[name], state["model"][name])


@pytest.mark.slow
def test_amp_bf16_on_cpu_and_gradient_clipping(shapes, tmp_path):
    cfg = tiny_train_cfg(
        shapes, tmp_path / "w", "train.amp=true", "train.grad_clip=0.001", "train.max_iters=2"
    )
    trainer = Trainer(cfg)
    model = unwrap(trainer.model)
    dtypes, norms = [], []
    model.backbone.conv1.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    trainer.fit()
    assert dtypes == [torch.bfloat16] * 2
    assert len(norms) == 2 and all(n <= 0.001 * 1.001 for n in norms)
    state = load_checkpoint(tmp_path / "w" / "latest.pth")
    assert state["scaler"] == {}  # bf16 needs no loss scaling
    assert all(torch.isfinite(v.float()).all() for v in state["model"].values())
