"""Two processes on the CPU (gloo), launched by torchrun as a user would.

One torchrun launch does three things (each process start costs seconds of imports):
1. distributed evaluation of the initial weights, over contiguous shards and over a padded
   DistributedSampler that hands one image to both ranks;
2. one training step on a fixed global batch of 4 images, 2 per rank;
3. a short training run through `python -m gfldet train` (trains, checkpoints, evaluates).
This process then repeats 1 and 2 in a single process and compares."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gfldet.config import load_config
from gfldet.core.checkpoint import load_checkpoint
from gfldet.data.synth import shapes_overrides, write_shapes_dataset
from gfldet.data.transforms import collate_batch
from gfldet.evaluation.evaluator import gather_detections
from gfldet.training.trainer import Trainer, unwrap
from tests.helpers import DEMO, TINY_MODEL

pytestmark = pytest.mark.usefixtures("one_thread")


AUG_SEED = 7  # augmentation seed of the samples of the compared training step


WORKER = """
import json
import sys
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from gfldet.core import dist as gdist
from gfldet.cli import main
from gfldet.config import load_config
from gfldet.data.transforms import collate_batch
from gfldet.evaluation.evaluator import gather_detections
from gfldet.training.trainer import Trainer, unwrap

out, config, sets = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
trainer = Trainer(load_config(config, sets))  # joins the process group torchrun set up
rank, model = gdist.rank(), unwrap(trainer.model)
assert gdist.world_size() == 2

out.mkdir(exist_ok=True)
dets, ids = gather_detections(model, trainer.val_loader, trainer.device)
padded = DataLoader(trainer.val_set, batch_size=1, collate_fn=partial(collate_batch),
                    sampler=DistributedSampler(trainer.val_set, shuffle=False))
assert len(padded) * 2 > len(trainer.val_set)  # some image goes to both ranks
dets_padded, ids_padded = gather_detections(model, padded, trainer.device)
if rank == 0:
    dets_json = json.dumps({"sharded": [dets, ids], "padded": [dets_padded, ids_padded]})
    (out / "detections.json").write_text(dets_json)

samples = [trainer.train_set[(i, {seed})] for i in (2 * rank, 2 * rank + 1)]
images, targets = collate_batch(samples)
trainer.train_step(images, targets, 0.01)
if rank == 0:
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    torch.save(grads, out / "grads.pth")
gdist.barrier()

sys.exit(main(["train", "--config", config, "--set", *sets, f"work_dir={out / 'run'}",
               "train.ema=true", "train.checkpoint_interval_iters=1", "train.eval_interval=2",
               "model.backbone.norm_eval=false", "train.sync_bn=true"]))
""".replace("{seed}", str(AUG_SEED))


def two_process_sets(paths: dict, work: Path) -> list[str]:
    """Tiny model. For the gradient comparison: BatchNorm frozen (norm_eval), else each rank
    normalises by its own batch's statistics; and prior_prob 0.5, so that the box losses'
    normaliser (the scores' sum, averaged over ranks) is above the clamp at 1 that GFL puts on
    it, which at a score of 0.01 would make the first steps depend on how the batch is split."""
    return [
        f"work_dir={work}",
        *shapes_overrides(paths),
        "data.train.img_scale=[64,64]",
        "data.val.img_scale=[64,64]",
        "data.train.batch_size=2",
        "data.val.batch_size=1",
        "data.train.num_workers=0",
        "data.val.num_workers=0",
        *TINY_MODEL,
        "model.test.score_thr=0.001",
        "model.backbone.norm_eval=true",
        "model.head.prior_prob=0.5",
        "train.epochs=2",
        "train.log_interval=1",
        "train.warmup_iters=2",
        "train.eval_interval=0",
    ]


def _sorted(dets: list[dict]) -> list[dict]:
    return sorted(dets, key=lambda d: (d["image_id"], -d["score"], d["category_id"], d["bbox"]))


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, run_python):
    paths = write_shapes_dataset(
        tmp_path / "shapes", num_train=8, num_val=3, img_size=64, max_size=40, max_objects=3
    )
    sets = two_process_sets(paths, tmp_path / "work2")
    out = tmp_path / "out"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = run_python(
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(out),
        DEMO,
        *sets,
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])

    # The same in one process, with the same seed (same initial weights).
    trainer = Trainer(load_config(DEMO, two_process_sets(paths, tmp_path / "work1")))
    model = unwrap(trainer.model)
    single, ids = gather_detections(model, trainer.val_loader, trainer.device)
    single = _sorted(single)
    two = json.loads((out / "detections.json").read_text())
    distributed = _sorted(two["sharded"][0])
    assert ids == two["sharded"][1] == two["padded"][1] == [1000, 1001, 1002]
    assert {d["image_id"] for d in single} == {1000, 1001, 1002}
    assert _sorted(two["padded"][0]) == distributed  # the padded image counted once
    assert len(distributed) == len(single) > 3
    for a, b in zip(single, distributed):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["score"] == pytest.approx(b["score"], rel=1e-4, abs=1e-6)
        assert a["bbox"] == pytest.approx(b["bbox"], abs=0.02)

    samples = [trainer.train_set[(i, AUG_SEED)] for i in range(4)]
    images, targets = collate_batch(samples)
    trainer.train_step(images, targets, 0.01)
    two = torch.load(out / "grads.pth", weights_only=True)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == two.keys() and len(grads) > 20
    for name, g in grads.items():
        torch.testing.assert_close(two[name], g, rtol=1e-4, atol=1e-7, msg=name)
    assert any(g.abs().sum() > 0 for g in grads.values())

    run = out / "run"  # 8 images / (2 ranks x 2) = 2 iterations per epoch
    state = load_checkpoint(run / "latest.pth")
    assert (state["epoch"], state["iter"], state["world_size"]) == (2, 4, 2)
    assert len(state["rng"]) == 2 and "ema" in state
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "loss" in r] == [1, 2, 3, 4]  # rank 0 writes alone
    assert [r.get("weights") for r in records if "val" in r] == ["ema"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= {"AP", "AP50"}
    assert "SyncBatchNorm needs CUDA" in proc.stdout + proc.stderr
    names = sorted(p.name for p in run.glob("*.pth"))
    assert names == ["best.pth", "epoch_1.pth", "epoch_2.pth", "latest.pth"]
    # The one evaluation (AP a number, 0 at worst) is the best: best.pth is epoch 2's.
    assert (run / "best.pth").read_bytes() == (run / "epoch_2.pth").read_bytes()
    assert len(list(run.glob("train_batch*.jpg"))) == 2  # rank 0's 2 batches per epoch
