import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avdp_ros.geometry import (
    axis_angle_to_quat,
    interpolate_poses,
    matrix_to_quat,
    quat_angle,
    quat_conj,
    quat_mul,
    quat_to_axis_angle,
    quat_to_matrix,
    slerp,
)

rotvec = st.lists(st.floats(-3.0, 3.0), min_size=3, max_size=3).map(np.array)


@settings(max_examples=50, deadline=None)
@given(rotvec)
def test_axis_angle_round_trip(r):
    if np.linalg.norm(r) > np.pi - 1e-3:
        r = r / np.linalg.norm(r) * (np.pi - 1e-3)
    np.testing.assert_allclose(quat_to_axis_angle(axis_angle_to_quat(r)), r, atol=1e-9)


@settings(max_examples=50, deadline=None)
@given(rotvec, rotvec)
def test_matrix_and_product_agree(a, b):
    qa, qb = axis_angle_to_quat(a), axis_angle_to_quat(b)
    np.testing.assert_allclose(quat_to_matrix(quat_mul(qa, qb)), quat_to_matrix(qa) @ quat_to_matrix(qb), atol=1e-9)
    assert quat_angle(matrix_to_quat(quat_to_matrix(qa)), qa) < 1e-6
    assert quat_angle(quat_mul(qa, quat_conj(qa)), np.array([0, 0, 0, 1.0])) < 1e-6


@settings(max_examples=50, deadline=None)
@given(rotvec, rotvec, st.floats(0.0, 1.0))
def test_slerp_splits_the_arc(a, b, t):
    qa, qb = axis_angle_to_quat(a), axis_angle_to_quat(b)
    q = slerp(qa, qb, t)
    total = quat_angle(qa, qb)
    assert quat_angle(qa, q) == pytest.approx(t * total, abs=1e-6)
    assert quat_angle(q, qb) == pytest.approx((1 - t) * total, abs=1e-6)


def test_interpolate_poses_linear_and_clamped():
    stamps = np.array([0.0, 1.0, 3.0])
    q0, q1 = axis_angle_to_quat(np.zeros(3)), axis_angle_to_quat(np.array([0, 0, 1.0]))
    poses = np.array([[0, 0, 0, *q0], [1, 0, 0, *q1], [1, 2, 0, *q1]])
    out = interpolate_poses(stamps, poses, np.array([-1.0, 0.5, 2.0, 9.0]))
    np.testing.assert_allclose(out[:, :3], [[0, 0, 0], [0.5, 0, 0], [1, 1, 0], [1, 2, 0]], atol=1e-12)
    assert quat_angle(out[1, 3:], q0) == pytest.approx(0.5, abs=1e-9)
    with pytest.raises(ValueError, match="strictly increasing"):
        interpolate_poses(np.array([0.0, 0.0]), poses[:2], np.array([0.0]))
