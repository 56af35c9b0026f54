from __future__ import annotations

import numpy as np

from edge_runtime.core.contours import components, outer_contours, simplify


def test_rectangle_traces_to_its_four_corners() -> None:
    m = np.zeros((10, 12), bool)
    m[2:6, 3:9] = True
    assert outer_contours(m) == [[(3, 2), (8, 2), (8, 5), (3, 5)]]


def test_components_are_8_connected_and_sized() -> None:
    m = np.zeros((8, 8), bool)
    m[1, 1] = m[2, 2] = True  # diagonal neighbours: one component
    m[5:7, 5:8] = True
    assert components(m) == [(1, 1, 2), (5, 5, 6)]


def test_u_shape_is_one_component_with_a_concave_outline() -> None:
    m = np.zeros((10, 10), bool)
    m[2:8, 2:4] = m[2:8, 6:8] = m[6:8, 2:8] = True
    comps = components(m)
    assert len(comps) == 1 and comps[0][2] == int(m.sum())
    (poly,) = outer_contours(m)
    assert (4, 2) not in poly and len(poly) == 8  # the notch is followed, not bridged


def test_min_area_and_max_count() -> None:
    m = np.zeros((20, 20), bool)
    m[0, 0] = True
    m[5:10, 5:10] = True
    m[12:15, 12:15] = True
    assert len(outer_contours(m, min_area=2)) == 2
    (largest,) = outer_contours(m, min_area=1, max_count=1)
    assert (5, 5) in largest


def test_disc_outline_stays_on_the_boundary() -> None:
    yy, xx = np.mgrid[0:64, 0:64]
    m = (yy - 32) ** 2 + (xx - 30) ** 2 < 20**2
    (poly,) = outer_contours(m, epsilon=0.75)
    radii = [np.hypot(x - 30, y - 32) for x, y in poly]
    assert 8 <= len(poly) < 100
    assert min(radii) > 18 and max(radii) < 20


def test_simplify_keeps_corners_and_drops_collinear_points() -> None:
    square = [(0, 0), (1, 0), (2, 0), (2, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    assert sorted(simplify(square, 0.5)) == [(0, 0), (0, 2), (2, 0), (2, 2)]
