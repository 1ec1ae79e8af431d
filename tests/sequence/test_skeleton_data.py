"""Skeleton-Graph (arXiv:2109.10257) synthetic data: adjacency, projection round trip, fixed bone lengths."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from honed.core.errors import InputError
from honed.sequence.skeleton_data import (FOCAL_PX, GTA_IM_LIMBS, IMAGE_SIZE, MOTIONS, body_pose, make_skeleton_windows,
                                          project, skeleton_adjacency, unproject)


def test_adjacency_is_symmetric_0_1_with_20_limbs_and_no_self_loops():
    A = skeleton_adjacency()
    assert A.shape == (21, 21)
    assert torch.equal(A, A.T)
    assert set(A.unique().tolist()) == {0.0, 1.0}
    assert int(A.sum()) == 2 * 20 and len(GTA_IM_LIMBS) == 20
    assert A.diagonal().sum() == 0
    assert A[13, 14] == 1 and A[0, 1] == 1 and A[0, 2] == 0
    # a tree: 21 joints, 20 edges, connected (the 20th power of A + I reaches everything)
    reach = torch.linalg.matrix_power(A + torch.eye(21), 20)
    assert (reach > 0).all()
    with pytest.raises(InputError):
        skeleton_adjacency(limbs=((0, 0),))


def test_projection_hand_example():
    p = torch.tensor([[1.0, -0.5, 2.0]])
    cx, cy = IMAGE_SIZE[0] / 2, IMAGE_SIZE[1] / 2
    torch.testing.assert_close(project(p), torch.tensor([[cx + FOCAL_PX / 2, cy - FOCAL_PX / 4]]))
    with pytest.raises(InputError):
        project(torch.tensor([[0.0, 0.0, -1.0]]))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_projection_unprojection_round_trip_on_synthetic_windows(seed):
    data = make_skeleton_windows(8, seed=seed, pixel_noise=0.0)
    pts = torch.cat((data.x3d, data.y3d), dim=1).double()
    back = unproject(project(pts), pts[..., 2])
    torch.testing.assert_close(back, pts)
    torch.testing.assert_close(project(data.x3d), data.x2d, atol=1e-3, rtol=0)


def test_windows_shapes_seeding_depth_and_motion_mix():
    a = make_skeleton_windows(60, seed=3)
    b = make_skeleton_windows(60, seed=3)
    c = make_skeleton_windows(60, seed=4)
    assert a.x2d.shape == (60, 5, 21, 2) and a.y3d.shape == (60, 10, 21, 3) and a.x3d.shape == (60, 5, 21, 3)
    assert torch.equal(a.x2d, b.x2d) and torch.equal(a.y3d, b.y3d)
    assert not torch.equal(a.y3d, c.y3d)
    assert (a.y3d[..., 2] > 1.0).all() and (a.x3d[..., 2] > 1.0).all()
    assert set(a.motion.tolist()) == set(range(len(MOTIONS)))
    start_depth = a.x3d[:, 0].mean(dim=1)[:, 2]  # person's first-frame depth sits near the 3-6 m camera distance
    assert 2.5 < float(start_depth.min()) and float(start_depth.max()) < 6.5


def test_bone_lengths_are_fixed_up_to_the_joint_jitter():
    data = make_skeleton_windows(200, seed=1)
    pts = torch.cat((data.x3d, data.y3d), dim=1)
    for i, j in GTA_IM_LIMBS:
        length = (pts[..., i, :] - pts[..., j, :]).norm(dim=-1)
        assert float(length.std()) < 0.012  # 5 mm jitter per joint -> ~7 mm per bone
    clean = body_pose(*(np.random.default_rng(0).uniform(-1, 1, (50, 2)) for _ in range(4)),
                      lean=np.random.default_rng(1).uniform(0, 0.4, 50))
    for i, j in GTA_IM_LIMBS:
        lengths = np.linalg.norm(clean[:, i] - clean[:, j], axis=-1)
        assert np.ptp(lengths) < 1e-12


def test_walking_clips_move_at_the_card_speeds():
    data = make_skeleton_windows(300, seed=2)
    walk = data.motion == 0
    pelvis = torch.cat((data.x3d, data.y3d), dim=1)[walk][:, :, 14]
    speed = (pelvis[:, 1:] - pelvis[:, :-1]).norm(dim=-1).mean(dim=1) * 5.0  # 5 fps
    assert 0.4 < float(speed.min()) and float(speed.max()) < 1.7


def test_bad_arguments_raise_one_line_errors():
    with pytest.raises(InputError):
        make_skeleton_windows(0, seed=0)
    with pytest.raises(InputError):
        make_skeleton_windows(5, seed=0, min_depth=4.0)
    with pytest.raises(InputError):
        unproject(torch.zeros(3, 2), torch.zeros(3))
