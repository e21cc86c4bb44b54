"""Localization Distillation (distill.*): the loss by hand, the teacher frozen and never saved,
the bins and strides that must match, and a tiny train -> eval with a teacher."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from gfldet.cli import main
from gfldet.core.checkpoint import load_checkpoint
from gfldet.model.build import build_model
from gfldet.model.losses import distillation_kl_loss
from gfldet.training.distill import build_distiller, check_pair, valuable_region
from gfldet.training.trainer import Trainer, train
from tests.helpers import tiny_train_sets

DEMO = str(Path(__file__).resolve().parents[2] / "configs" / "shapes_demo.yaml")


def _kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) of two distributions written out."""
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def _softmax(x: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in x]
    return [v / sum(e) for v in e]


def test_distillation_kl_by_hand():
    """KL(p_t || p_s) of softened distributions, averaged over the bins and x T², row by row."""
    student = [[0.0, 1.0, 2.0, 0.5], [3.0, 0.0, 0.0, 0.0]]
    teacher = [[2.0, 0.0, 1.0, 0.0], [3.0, 0.0, 0.0, 0.0]]
    for t in (1.0, 2.0, 10.0):
        got = distillation_kl_loss(torch.tensor(student), torch.tensor(teacher), t, "none")
        want = [
            _kl(_softmax(tr, t), _softmax(sr, t)) / 4 * t * t for sr, tr in zip(student, teacher)
        ]
        assert got.tolist() == pytest.approx(want, rel=1e-5)
        assert want[1] == 0.0  # equal distributions teach nothing
    # Row 0 at T = 1 by hand: p_t = softmax(2, 0, 1, 0), p_s = softmax(0, 1, 2, 0.5).
    zt = math.exp(2) + 1 + math.e + 1
    zs = 1 + math.e + math.exp(2) + math.exp(0.5)
    pt = [math.exp(2) / zt, 1 / zt, math.e / zt, 1 / zt]
    ps = [1 / zs, math.e / zs, math.exp(2) / zs, math.exp(0.5) / zs]
    kl = sum(a * math.log(a / b) for a, b in zip(pt, ps))
    got = distillation_kl_loss(torch.tensor(student[:1]), torch.tensor(teacher[:1]), 1.0, "sum")
    assert float(got) == pytest.approx(kl / 4, rel=1e-6)
    # T² scale: for logits scaled by T the softened distributions stay the same, the loss x T².
    s, tt = torch.tensor(student[:1]), torch.tensor(teacher[:1])
    assert float(distillation_kl_loss(s * 10, tt * 10, 10.0, "sum")) == pytest.approx(
        100 * kl / 4, rel=1e-5
    )


def test_distillation_kl_gradient_reaches_the_student_only():
    s = torch.tensor([[0.0, 1.0, 2.0]], requires_grad=True)
    t = torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True)
    distillation_kl_loss(s, t, 2.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
    # The gradient is (p_s - p_t) / K x T (for the logits, before the 1/T of the softmax).
    ps, pt = torch.softmax(s.detach() / 2, -1), torch.softmax(t.detach() / 2, -1)
    assert torch.allclose(s.grad, (ps - pt) / 3 * 2, atol=1e-6)


@pytest.fixture
def teacher_ckpt(tiny_cfg, tmp_path_factory, one_thread):
    """A tiny model trained for 1 step: its latest.pth (reg_max 16, strides 8 ... 128)."""
    work = tmp_path_factory.mktemp("teacher")
    train(tiny_cfg(work, "train.max_iters=1"))
    return work / "latest.pth"


def _student_sets(ckpt, *extra):
    return [f"distill.teacher_checkpoint={ckpt}", *extra]


def test_teacher_is_frozen_gets_no_gradient_and_is_not_saved(tiny_cfg, teacher_ckpt, tmp_path):
    cfg = tiny_cfg(tmp_path / "student", *_student_sets(teacher_ckpt), "train.max_iters=1")
    trainer = Trainer(cfg)
    teacher = trainer.distiller.teacher
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer.fit()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    state = load_checkpoint(tmp_path / "student" / "latest.pth")
    student_keys = set(trainer.model.state_dict())
    assert set(state["model"]) == student_keys
    assert not any("teacher" in k for k in state) and "distill" in state["config"]
    # loss_ld is a loss term of the run's records.
    records = (tmp_path / "student" / "log.jsonl").read_text()
    assert '"loss_ld"' in records


def test_resume_reloads_the_teacher(tiny_cfg, teacher_ckpt, tmp_path):
    work = tmp_path / "student"
    train(tiny_cfg(work, *_student_sets(teacher_ckpt), "train.max_iters=1"))
    cfg = tiny_cfg(work, *_student_sets(teacher_ckpt), "train.max_iters=2")
    trainer = Trainer(cfg, resume=True)
    assert trainer.iter == 1 and trainer.distiller is not None
    ref = load_checkpoint(teacher_ckpt)["model"]
    # The folded teacher's head output conv equals the checkpoint's (no BatchNorm there).
    got = trainer.distiller.teacher.head.gfl_cls.weight
    assert torch.equal(got, ref["head.gfl_cls.weight"])


def test_bins_mismatch_is_one_line_naming_both(tiny_cfg, teacher_ckpt, tmp_path):
    cfg = tiny_cfg(tmp_path / "s", *_student_sets(teacher_ckpt), "model.head.reg_max=7")
    with pytest.raises(ValueError) as e:
        Trainer(cfg)
    msg = str(e.value)
    assert "\n" not in msg and str(teacher_ckpt) in msg
    assert "reg_max 16: 17 bins" in msg and "reg_max 7: 8 bins" in msg
    assert not (tmp_path / "s" / "latest.pth").exists()


def test_strides_and_box_mismatch(tiny_cfg, tmp_path):
    cfg = tiny_cfg(tmp_path / "a")
    cfg.model.num_classes = 3
    teacher = build_model(cfg.model)
    cfg.model.neck.extra_levels = 1
    with pytest.raises(
        ValueError, match=r"strides \[8, 16, 32, 64, 128\] and the student \[8, 16, 32, 64\]"
    ):
        check_pair(teacher, build_model(cfg.model), "T.pth")
    cfg.model.neck.extra_levels = 2
    cfg.model.head.box = "dirac"
    cfg.model.head.quality = "joint"
    with pytest.raises(ValueError, match="no edge distributions"):
        check_pair(teacher, build_model(cfg.model), "T.pth")


@pytest.mark.parametrize("amp", [False, True])
def test_distill_losses_and_options(tiny_cfg, teacher_ckpt, tmp_path, one_thread, amp):
    """With VLR and class KD on, one step gives each term, finite and > 0 (also under AMP,
    bfloat16 autocast on the CPU)."""
    sets = _student_sets(
        teacher_ckpt,
        "distill.vlr_weight=0.25",
        "distill.cls_weight=10",
        "train.max_iters=1",
        f"train.amp={str(amp).lower()}",
    )
    trainer = Trainer(tiny_cfg(tmp_path / "s", *sets))
    images, targets = next(iter(trainer.train_loader))
    losses = trainer.train_step(images, targets, 1e-3)
    for k in ("loss_ld", "loss_ld_vlr", "loss_kd", "loss_qfl", "loss_dfl"):
        assert k in losses and math.isfinite(losses[k]), k
    assert losses["loss_ld"] > 0 and losses["loss_ld_vlr"] > 0 and losses["loss_kd"] > 0


def test_a_teacher_equal_to_the_student_teaches_nothing(tiny_cfg, teacher_ckpt, tmp_path):
    """The student initialised from the teacher (same architecture, BN folding aside) has
    loss_ld 0 up to float rounding: the loss compares the right locations and edges."""
    sets = _student_sets(teacher_ckpt, f"model.init_from={teacher_ckpt}", "train.max_iters=1")
    trainer = Trainer(tiny_cfg(tmp_path / "s", *sets))
    for m in trainer.model.modules():  # BatchNorm with the running statistics, as folded
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    images, targets = next(iter(trainer.train_loader))
    with torch.no_grad():
        losses = trainer.distiller(trainer.model, images, targets)
    assert float(losses["loss_ld"]) < 1e-6


def test_valuable_region_by_hand():
    """One gt on a 16 x 16 grid of stride 8: VLR locations have α·t ≤ DIoU < t, valued by IoU."""
    from torchvision.ops import box_iou, distance_box_iou

    from gfldet.model.box_ops import grid_points, square_anchors
    from gfldet.model.options import ModelOptions

    m = ModelOptions(num_classes=1)
    m.backbone.pretrained = None
    m.backbone.depth = 18
    m.backbone.base_width = 8
    m.neck.out_channels = 16
    m.head.feat_channels = 16
    m.head.stacked_convs = 1
    m.head.num_groups = 4
    model = build_model(m)
    model.strides = [8]
    m_topk = model.assigner.topk
    sizes = [(16, 16)]
    points, strides = grid_points(sizes, [8])
    gt = torch.tensor([[30.0, 41.0, 75.0, 90.0]])
    targets = [{"boxes": gt, "labels": torch.tensor([0])}]
    valid = torch.ones(1, 256, dtype=torch.bool)
    valid[0, -16:] = False  # the last row: padding of the batch
    region = valuable_region(model, points, strides, sizes, targets, valid, 0.25)
    anchors = square_anchors(points, strides, model.assigner.anchor_scale)
    iou, diou = box_iou(anchors, gt)[:, 0], distance_box_iou(anchors, gt)[:, 0]
    cand = iou[torch.cdist(points, ((gt[:, :2] + gt[:, 2:]) / 2)).squeeze(1).argsort()[:m_topk]]
    thr = cand.mean() + cand.std()
    want = torch.where((diou >= 0.25 * thr) & (diou < thr) & valid[0], iou, 0.0)
    assert torch.allclose(region[0], want)
    assert 10 < int((region > 0).sum()) < 200


@pytest.mark.slow
def test_tiny_train_then_eval_with_distill(tiny_cfg, teacher_ckpt, tmp_path, log_records):
    """A tiny run distilled from the teacher trains, evaluates and writes loss_ld everywhere."""
    work = tmp_path / "student"
    cfg = tiny_cfg(work, *_student_sets(teacher_ckpt), "train.max_iters=3", "train.eval_interval=1")
    metrics = train(cfg)
    assert "AP" in metrics
    recs = log_records(work)
    assert any("loss_ld" in r for r in recs)
    assert any("loss_ld" in r.get("epoch_mean", {}) for r in recs)
    header = (work / "results.csv").read_text().splitlines()[0].split(",")
    assert "loss_ld" in header


def test_cls_distillation_needs_the_same_classes(tiny_cfg, teacher_ckpt, tmp_path):
    cfg = tiny_cfg(tmp_path / "s", *_student_sets(teacher_ckpt, "distill.cls_weight=1"))
    cfg.model.num_classes = 3
    student = build_model(cfg.model)
    with pytest.raises(ValueError, match="same classes"):
        build_distiller(cfg.distill, student, torch.device("cpu"), None, ["a", "b", "c"])


def test_teacher_config_needs_its_model_section(tiny_cfg, teacher_ckpt, tmp_path):
    """distill.teacher_config is read by the config layer, which passes its model section."""
    sets = _student_sets(teacher_ckpt, f"distill.teacher_config={DEMO}")
    cfg = tiny_cfg(tmp_path / "s", *sets)
    with pytest.raises(ValueError, match="teacher_model="):
        Trainer(cfg)
    teacher_model = tiny_cfg(tmp_path / "t").model  # the teacher's own config
    trainer = Trainer(tiny_cfg(tmp_path / "s2", *sets), teacher_model=teacher_model)
    assert trainer.distiller is not None
    teacher_model.head.reg_max = 7  # another model than the checkpoint's
    with pytest.raises(ValueError, match="does not match the model"):
        Trainer(tiny_cfg(tmp_path / "s3", *sets), teacher_model=teacher_model)


def test_train_command_reads_the_teacher_config(shapes, teacher_ckpt, tmp_path):
    """`gfldet train` with distill.teacher_config: the command reads that config's model."""
    teacher_config = teacher_ckpt.parent / "config.yaml"  # the teacher run's own config
    sets = tiny_train_sets(
        shapes,
        tmp_path / "s",
        "train.max_iters=1",
        *_student_sets(teacher_ckpt, f"distill.teacher_config={teacher_config}"),
    )
    assert main(["train", "--config", DEMO, "--set", *sets]) == 0
    assert load_checkpoint(tmp_path / "s" / "latest.pth")["iter"] == 1


def test_a_teacher_inside_the_work_dir_is_refused_before_anything_moves(
    tiny_cfg, teacher_ckpt, tmp_path
):
    """The run would move (--overwrite), overwrite (latest.pth) or delete (keep_last) its own
    teacher: refused up front, the old run untouched."""
    work = tmp_path / "run"
    work.mkdir()
    teacher = work / "latest.pth"
    teacher.write_bytes(teacher_ckpt.read_bytes())
    before = sorted(p.name for p in work.iterdir())
    with pytest.raises(ValueError, match="distill.teacher_checkpoint .* is inside work_dir"):
        Trainer(tiny_cfg(work, *_student_sets(teacher)), overwrite=True)
    assert sorted(p.name for p in work.iterdir()) == before
    with pytest.raises(FileNotFoundError, match="distill.teacher_checkpoint"):
        Trainer(tiny_cfg(tmp_path / "other", *_student_sets(tmp_path / "missing.pth")))
    assert not (tmp_path / "other").exists()


def _kl_rows_by_hand(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """KL(softmax(teacher / t) || softmax(student / t)) of each row, averaged over its entries
    and x t², written out in float64."""
    ps = torch.softmax(student.double() / t, -1)
    pt = torch.softmax(teacher.double() / t, -1)
    return (pt * (pt.log() - ps.log())).mean(-1) * t * t


def test_ld_and_kd_normalisations_by_hand(tiny_cfg, teacher_ckpt, tmp_path):
    """loss_ld = weight x sum over positives and edges of KL x the positive's detached best
    score / 4, per 2 images (the reference's per GPU); loss_kd = cls_weight x the mean over
    positives of the class KL (MMDetection's)."""
    sets = _student_sets(
        teacher_ckpt, "distill.cls_weight=2", "distill.weight=0.25", "data.train.batch_size=4"
    )
    trainer = Trainer(tiny_cfg(tmp_path / "s", *sets))
    d, student = trainer.distiller, trainer.model
    images, targets = next(iter(trainer.train_loader))
    with torch.no_grad(), d._capture(student) as out:
        student(images, targets)
        got = d.losses(student, images, targets, out)
        _, t_cls, t_reg, _ = d.teacher_outputs(images, targets)
        points, strides = student.grid(out.sizes, images.device)
        assigned, _ = student.assign(points, strides, out.sizes, targets)
    pb, pa = (assigned >= 0).nonzero(as_tuple=True)
    assert len(pb) > 0
    n1 = student.head.box.reg_max + 1
    kl = _kl_rows_by_hand(out.reg[pb, pa].reshape(-1, n1), t_reg[pb, pa].reshape(-1, n1), 10.0)
    score = torch.sigmoid(out.cls[pb, pa].double()).amax(-1)  # GFL: the score is sigmoid(cls)
    assert images.shape[0] == 4
    per_two_images = 2 / images.shape[0]  # the reference's images per GPU
    want_ld = 0.25 * per_two_images * (kl.view(-1, 4) * score[:, None]).sum() / 4
    # float32 against float64 on two close distributions: agree to 1 %; a wrong constant (the
    # weight, / 4, T², the score) would be off by a factor.
    assert float(got["loss_ld"]) == pytest.approx(float(want_ld), rel=1e-2)
    kd = _kl_rows_by_hand(out.cls[pb, pa], t_cls[pb, pa], 2.0)  # cls_temperature's default
    assert float(got["loss_kd"]) == pytest.approx(float(2 * kd.sum() / len(pb)), rel=1e-2)
