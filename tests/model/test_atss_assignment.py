"""ATSS: the vectorised, batched assigner against a plain per-gt loop of the paper's five steps."""

import pytest
import torch
from torchvision.ops import box_iou

from gfldet.model.atss import _grid_candidates, _nearest_candidates, atss_assign
from gfldet.model.box_ops import grid_points, square_anchors

pytestmark = pytest.mark.usefixtures("one_thread")


def reference_atss(anchors, num_level, gts, topk=9):
    """Straight from the paper, one gt at a time."""
    a = anchors.shape[0]
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    best_iou = torch.full((a,), -1.0, dtype=torch.float64)
    assigned = torch.full((a,), -1, dtype=torch.long)
    for g, box in enumerate(gts.tolist()):
        x1, y1, x2, y2 = box
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        ious = []
        for an in anchors.tolist():
            iw = max(0.0, min(x2, an[2]) - max(x1, an[0]))
            ih = max(0.0, min(y2, an[3]) - max(y1, an[1]))
            inter = iw * ih
            union = (x2 - x1) * (y2 - y1) + (an[2] - an[0]) * (an[3] - an[1]) - inter
            ious.append(inter / union if union > 0 else 0.0)
        ious = torch.tensor(ious, dtype=torch.float64)
        cand, start = [], 0
        for n in num_level:
            d = [
                ((centers[i, 0] - cx) ** 2 + (centers[i, 1] - cy) ** 2).item()
                for i in range(start, start + n)
            ]
            order = sorted(range(n), key=lambda i: (d[i], i))[: min(topk, n)]
            cand += [start + i for i in order]
            start += n
        cious = ious[cand]
        thr = cious.mean() + (cious.std() if len(cand) > 1 else 0.0)
        for i in cand:
            px, py = centers[i].tolist()
            inside = min(px - x1, py - y1, x2 - px, y2 - py) > 0.01
            if ious[i] >= thr and inside and ious[i] > best_iou[i]:
                best_iou[i], assigned[i] = ious[i], g
    return assigned


def make_anchors(sizes, strides):
    points, s = grid_points(sizes, strides)
    return square_anchors(points, s, 8.0), [h * w for h, w in sizes], sizes


@pytest.fixture(params=["grid", "all_pairs"])
def assign(request):
    """atss_assign as the detector calls it (grid shapes given: windowed candidate search) and
    for an arbitrary anchor layout (every anchor-gt distance)."""

    def run(anchors, num_level, sizes, gts, valid=None, topk=9):
        shapes = sizes if request.param == "grid" else None
        return atss_assign(anchors, num_level, gts, valid, topk, shapes)

    run.grid = request.param == "grid"
    return run


def random_gts(gen, n, extent):
    xy = torch.rand(n, 2, generator=gen) * extent
    wh = torch.rand(n, 2, generator=gen) * extent / 2 + 2
    return torch.cat([xy, xy + wh], 1)


def test_matches_the_reference_on_random_cases(assign):
    anchors, num_level, sizes = make_anchors([(8, 8), (4, 4), (2, 2), (1, 1)], [8, 16, 32, 64])
    gen = torch.Generator().manual_seed(0)
    for trial in range(12):
        gts = random_gts(gen, 1 + trial % 6, 64.0)
        got, ious = assign(anchors, num_level, sizes, gts)
        expect = reference_atss(anchors.double(), num_level, gts.double())
        assert torch.equal(got, expect), f"trial {trial}"
        assert (ious[got < 0] == 0).all() and (ious[got >= 0] > 0).all()


def test_batched_assignment_equals_assignment_per_image(assign):
    anchors, num_level, sizes = make_anchors([(8, 10), (4, 5), (2, 3)], [8, 16, 32])
    gen = torch.Generator().manual_seed(1)
    per_image = [random_gts(gen, n, 70.0) for n in (3, 0, 5, 1)]
    g = max(len(x) for x in per_image)
    boxes = torch.zeros(4, g, 4)
    valid = torch.zeros(4, g, dtype=torch.bool)
    for i, x in enumerate(per_image):
        boxes[i, : len(x)] = x
        valid[i, : len(x)] = True
    batched, _ = assign(anchors, num_level, sizes, boxes, valid)
    for i, x in enumerate(per_image):
        single, _ = assign(anchors, num_level, sizes, x)
        assert torch.equal(batched[i], single)
    assert (batched[1] == -1).all()


def test_an_image_without_gts_has_no_positive(assign):
    anchors, num_level, sizes = make_anchors([(4, 4)], [8])
    got, ious = assign(anchors, num_level, sizes, torch.zeros(0, 4))
    assert got.shape == (16,) and (got == -1).all() and (ious == 0).all()


def test_a_gt_smaller_than_every_anchor_matches_the_reference(assign):
    anchors, num_level, sizes = make_anchors([(8, 8), (4, 4)], [8, 16])
    gts = torch.tensor([[22.0, 22.0, 26.0, 26.0], [3.0, 40.0, 9.0, 44.0]])  # 4-6 px vs 64 px
    got, _ = assign(anchors, num_level, sizes, gts)
    assert torch.equal(got, reference_atss(anchors.double(), num_level, gts.double()))
    # Every level-0 candidate has the same IoU as the anchor at the centre, the level-1 ones
    # a quarter of it: mean + std lies above all of them, so ATSS gives the gt no positive.
    assert (got == 0).sum() == 0


def test_gt_with_centre_outside_every_candidate_has_no_positive(assign):
    anchors, num_level, sizes = make_anchors([(4, 4)], [8])  # anchor centres at 0, 8, 16, 24
    gts = torch.tensor([[9.0, 9.0, 15.0, 15.0]])  # no anchor centre strictly inside
    got, _ = assign(anchors, num_level, sizes, gts)
    assert (got == -1).all()


def test_two_gts_competing_for_one_anchor_take_the_higher_iou(assign):
    anchors, num_level, sizes = make_anchors([(1, 1)], [8])  # one anchor [-32, -32, 32, 32]
    gts = torch.tensor([[-20.0, -20.0, 20.0, 20.0], [-30.0, -30.0, 30.0, 30.0]])
    got, ious = assign(anchors, num_level, sizes, gts)
    assert got.tolist() == [1]
    assert ious.item() == (60.0 * 60.0) / (64.0 * 64.0)


def test_a_level_with_fewer_anchors_than_topk_matches_the_reference(assign):
    anchors, num_level, sizes = make_anchors([(6, 6), (2, 2), (1, 1)], [8, 16, 32])
    gts = torch.tensor([[4.0, 4.0, 40.0, 30.0], [0.0, 10.0, 20.0, 46.0]])
    got, _ = assign(anchors, num_level, sizes, gts)
    assert torch.equal(got, reference_atss(anchors.double(), num_level, gts.double()))


def test_degenerate_boxes_are_never_positive(assign):
    anchors, num_level, sizes = make_anchors([(4, 4)], [8])
    gts = torch.tensor([[8.0, 8.0, 8.0, 20.0], [5.0, 5.0, 5.0, 5.0]])
    got, _ = assign(anchors, num_level, sizes, gts)
    assert (got == -1).all()


def test_matches_reference_on_many_random_layouts(assign):
    """Random pyramids (some levels smaller than k), k, and gt sets with tiny, huge, partly
    outside and degenerate boxes; the batched call is checked against the loop per image."""
    gen = torch.Generator().manual_seed(7)
    checked_pos = 0
    for trial in range(40):
        num_levels = 1 + trial % 4
        h0, w0 = (
            int(torch.randint(1, 9, (1,), generator=gen)),
            int(torch.randint(1, 9, (1,), generator=gen)),
        )
        sizes = [(max(1, h0 >> i), max(1, w0 >> i)) for i in range(num_levels)]
        strides = [8 * 2**i for i in range(num_levels)]
        anchors, num_level, sizes = make_anchors(sizes, strides)
        topk = [1, 3, 9, 12][trial % 4]
        extent = 8.0 * max(h0, w0)
        images = []
        for _ in range(3):
            n = int(torch.randint(0, 7, (1,), generator=gen))
            gts = random_gts(gen, n, extent)
            if n >= 2:
                gts[0, 2] = gts[0, 0]  # zero width
                gts[1] = gts[1] * torch.tensor([1.0, 1.0, 4.0, 4.0])  # large, partly outside
            if assign.grid:  # the data pipeline clips boxes to the image (the grid's extent)
                gts = gts.clamp(min=0).minimum(torch.tensor([w0, h0, w0, h0]) * 8.0)
            images.append(gts)
        g = max(1, max(len(x) for x in images))
        boxes, valid = torch.zeros(3, g, 4), torch.zeros(3, g, dtype=torch.bool)
        for i, x in enumerate(images):
            boxes[i, : len(x)], valid[i, : len(x)] = x, True
        batched, ious = assign(anchors, num_level, sizes, boxes, valid, topk)
        for i, x in enumerate(images):
            expect = reference_atss(anchors.double(), num_level, x.double(), topk)
            assert torch.equal(batched[i], expect), (trial, i)
            checked_pos += int((expect >= 0).sum())
            if len(x):
                from_box = box_iou(anchors, x)[torch.arange(len(anchors)), batched[i].clamp(min=0)]
                torch.testing.assert_close(ious[i][batched[i] >= 0], from_box[batched[i] >= 0])
            assert (ious[i][batched[i] < 0] == 0).all()
    assert checked_pos > 30  # the cases do exercise positives (47 with this seed)


@pytest.mark.parametrize(
    "h", [h if h <= 4 else pytest.param(h, marks=pytest.mark.slow) for h in range(1, 11)]
)
def test_grid_window_finds_the_nearest_locations_ties_included(h):
    """The windowed search of step 2 returns exactly the all-anchors search's candidates, in
    order, on grids of every shape (1- and 2-wide included; h rows, the taller grids in the
    full suite only), for every k <= 9, for centres up to 3 strides outside the grid, half of
    them on the half-stride lattice where distances tie."""
    gen = torch.Generator().manual_seed(3 + h)
    for w in range(1, 11):
        centers, _ = grid_points([(h, w)], [8])
        u = torch.rand(120, 2, generator=gen)
        c = (u * torch.tensor([w + 5.0, h + 5.0]) - 3) * 8  # -3 .. size + 2 steps
        c[:60] = (c[:60] / 4).round() * 4
        for k in range(1, 10):
            got, _ = _grid_candidates(centers, [(h, w)], c, k, None)
            expect, _ = _nearest_candidates(centers, [h * w], c, k, None)
            assert torch.equal(got, expect), (h, w, k)


def test_grid_window_finds_the_nearest_valid_locations():
    """As above, with each centre allowed only a top-left rectangle of the grid (its image's
    padded size in a larger batch): the same valid candidates in the same order, and as many
    as the rectangle holds when that is fewer than k."""
    gen = torch.Generator().manual_seed(4)
    for h in range(1, 9):
        for w in range(1, 9):
            centers, _ = grid_points([(h, w)], [8])
            n = 60
            vh = torch.randint(1, h + 1, (n,), generator=gen)
            vw = torch.randint(1, w + 1, (n,), generator=gen)
            u = torch.rand(n, 2, generator=gen)
            c = u * torch.stack([vw, vh], 1) * 8 + (torch.rand(n, 2, generator=gen) - 0.5) * 8
            c[:30] = (c[:30] / 4).round() * 4
            rows = torch.arange(h)[None, :, None] < vh[:, None, None]
            cols = torch.arange(w)[None, None, :] < vw[:, None, None]
            valid = (rows & cols).reshape(n, h * w)
            for k in (1, 4, 9):
                got, got_ok = _grid_candidates(centers, [(h, w)], c, k, valid)
                expect, expect_ok = _nearest_candidates(centers, [h * w], c, k, valid)
                assert torch.equal(got_ok, expect_ok), (h, w, k)
                assert torch.equal(got[got_ok], expect[expect_ok]), (h, w, k)
                assert torch.equal(got_ok.sum(0), (vh * vw).clamp(max=k)), (h, w, k)


def test_grid_shapes_must_match_the_anchor_counts():
    anchors, num_level, sizes = make_anchors([(4, 4), (2, 2)], [8, 16])
    with pytest.raises(ValueError, match="level_shapes"):
        atss_assign(anchors, num_level, torch.tensor([[0.0, 0, 9, 9]]), None, 9, [(4, 4), (2, 3)])


def test_grid_search_in_float64_matches_float32():
    anchors, num_level, sizes = make_anchors([(8, 8), (4, 4), (2, 2)], [8, 16, 32])
    gts = random_gts(torch.Generator().manual_seed(5), 6, 64.0).clamp(max=64.0)
    a32, i32 = atss_assign(anchors, num_level, gts, None, 9, sizes)
    a64, i64 = atss_assign(anchors.double(), num_level, gts.double(), None, 9, sizes)
    assert torch.equal(a32, a64) and (a32 >= 0).any()
    torch.testing.assert_close(i64.float(), i32)
