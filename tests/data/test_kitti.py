"""KITTI-format files: what is written reads back; malformed files name the file and line."""
import numpy as np
import pytest

from honed.core.errors import InputError
from honed.data.kitti import (KittiObject, read_calib, read_labels, read_velodyne, write_calib, write_labels,
                              write_velodyne)


def test_labels_round_trip_with_and_without_scores(tmp_path):
    objects = [KittiObject("Car", 0.0, 1, -1.57, (10.5, 20.0, 110.25, 80.0), (1.5, 1.6, 3.9), (2.0, 1.5, 20.0), -1.5),
               KittiObject("Pedestrian", 0.3, 2, 0.2, (5.0, 6.0, 9.0, 30.0), (1.8, 0.6, 0.8), (-3.0, 1.7, 9.0), 0.1, 0.875)]
    write_labels(tmp_path / "000001.txt", objects)
    text = (tmp_path / "000001.txt").read_text().splitlines()
    assert text[0] == "Car 0.00 1 -1.57 10.50 20.00 110.25 80.00 1.50 1.60 3.90 2.00 1.50 20.00 -1.50"
    assert read_labels(tmp_path / "000001.txt") == objects


def test_calib_and_velodyne_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    calib = {"P2": rng.normal(size=(3, 4)), "R0_rect": np.eye(3), "Tr_velo_to_cam": rng.normal(size=(3, 4))}
    write_calib(tmp_path / "c.txt", calib)
    back = read_calib(tmp_path / "c.txt")
    assert set(back) == set(calib) and all(np.allclose(back[k], calib[k], rtol=1e-11) for k in calib)
    points = rng.normal(size=(100, 4)).astype(np.float32)
    write_velodyne(tmp_path / "p.bin", points)
    assert (tmp_path / "p.bin").stat().st_size == 100 * 16
    assert np.array_equal(read_velodyne(tmp_path / "p.bin"), points)


@pytest.mark.parametrize("line, words", [
    ("Car 0 0 0 1 2 3", "15 or 16 fields"),
    ("Car 0 0 0 1 2 3 4 1 1 1 0 0 x 0", "must be numbers"),
    ("Car 0 0.5 0 1 2 3 4 1 1 1 0 0 5 0", "occluded be an integer"),
    ("Car 0 0 0 9 2 3 4 1 1 1 0 0 5 0", "x1 <= x2"),
    ("Car 0 0 0 1 2 3 4 1 nan 1 0 0 5 0", "NaN"),
])
def test_a_malformed_label_line_names_file_and_line(tmp_path, line, words):
    path = tmp_path / "bad.txt"
    path.write_text("Car 0 0 0 1 2 3 4 1 1 1 0 0 5 0\n" + line + "\n")
    with pytest.raises(InputError, match=words) as err:
        read_labels(path)
    assert f"{path}:2" in str(err.value)


def test_malformed_calib_and_point_files(tmp_path):
    (tmp_path / "c.txt").write_text("P2: 1 2 3\n")
    with pytest.raises(InputError, match="P2 needs 12 numbers"):
        read_calib(tmp_path / "c.txt")
    (tmp_path / "p.bin").write_bytes(b"\x00" * 17)
    with pytest.raises(InputError, match="whole number"):
        read_velodyne(tmp_path / "p.bin")
    with pytest.raises(InputError, match=r"\(N, 4\)"):
        write_velodyne(tmp_path / "q.bin", np.zeros((3, 3)))
