"""Outer contours of binary masks as simplified polygons, in pure numpy/Python.

Components are found from row runs (a few hundred per mask, so the Python loops stay short), each outer boundary
is traced with Moore-neighbour tracing from the component's top-left pixel, then simplified with Douglas-Peucker.
Masks are traced at model resolution, where they are small; callers scale the vertices to frame pixels.
"""

from __future__ import annotations

import numpy as np

# Clockwise 8-neighbourhood starting west, as (dy, dx), for image coordinates (y down).
_DIRS = ((0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1))
_DIR_INDEX = {d: i for i, d in enumerate(_DIRS)}


def _runs(binary: np.ndarray) -> list[tuple[int, int, int]]:
    """(row, first col, last col) of each horizontal run of True, in raster order."""
    padded = np.zeros((binary.shape[0], binary.shape[1] + 2), np.int8)
    padded[:, 1:-1] = binary
    edges = np.diff(padded, axis=1)
    ys, xs = np.nonzero(edges)
    kinds = edges[ys, xs]
    starts = xs[kinds == 1]
    ends = xs[kinds == -1] - 1
    rows = ys[kinds == 1]
    return list(zip(rows.tolist(), starts.tolist(), ends.tolist()))


def components(binary: np.ndarray) -> list[tuple[int, int, int]]:
    """8-connected components as (top row, leftmost col of that row, pixel count), in raster order of their start."""
    runs, roots = _run_roots(binary)
    area: dict[int, int] = {}
    for (_, x0, x1), root in zip(runs, roots):
        area[root] = area.get(root, 0) + x1 - x0 + 1
    return [(runs[r][0], runs[r][1], a) for r, a in sorted(area.items())]


def label_components(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components as a label image (0: background, 1..n in raster order of their start) and each
    component's pixel count (index 0 unused): what the overlay outlines, as a map to compare two masks by."""
    runs, roots = _run_roots(binary)
    ids = {root: i + 1 for i, root in enumerate(sorted(set(roots)))}
    labels = np.zeros(binary.shape, np.int32)
    areas = np.zeros(len(ids) + 1, np.int64)
    for (y, x0, x1), root in zip(runs, roots):
        labels[y, x0 : x1 + 1] = ids[root]
        areas[ids[root]] += x1 - x0 + 1
    return labels, areas


def _run_roots(binary: np.ndarray) -> tuple[list[tuple[int, int, int]], list[int]]:
    """The row runs and, for each, the index of the first run of its 8-connected component."""
    runs = _runs(binary)
    parent = list(range(len(runs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    prev_lo = prev_hi = 0  # runs of the previous row are runs[prev_lo:prev_hi]
    row_start = 0
    for i, (y, x0, x1) in enumerate(runs):
        if i == 0 or y != runs[i - 1][0]:
            prev_lo, prev_hi = (row_start, i) if i and runs[i - 1][0] == y - 1 else (i, i)
            row_start = i
        for j in range(prev_lo, prev_hi):
            _, p0, p1 = runs[j]
            if p0 <= x1 + 1 and p1 >= x0 - 1:  # overlapping or diagonal touch
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)  # the earlier run stays the root: it is the top-left start
    return runs, [find(i) for i in range(len(runs))]


def trace_outer(binary: np.ndarray, y0: int, x0: int, max_steps: int) -> list[tuple[int, int]]:
    """Moore-neighbour trace of the outer boundary starting at the component's top-left pixel; (x, y) vertices."""
    h, w = binary.shape
    flat = np.zeros((h + 2) * (w + 2), np.uint8)  # one pixel of padding: no bounds checks in the loop
    flat.reshape(h + 2, w + 2)[1:-1, 1:-1] = binary
    grid = flat.tobytes()
    stride = w + 2
    offsets = [dy * stride + dx for dy, dx in _DIRS]
    start = (y0 + 1) * stride + (x0 + 1)
    cur, back = start, 0  # we arrive from the west, which is background for a top-left pixel
    path = [cur]
    second = -1
    for _ in range(max_steps):
        for k in range(1, 9):
            d = (back + k) % 8
            nxt = cur + offsets[d]
            if grid[nxt]:
                break
        else:
            break  # isolated pixel
        if cur == start and nxt == second:
            path.pop()  # the start pixel was appended again when we came back to it
            break
        if second < 0:
            second = nxt
        bg = cur + offsets[(back + k - 1) % 8]  # last background pixel checked becomes the backtrack
        by, bx = divmod(bg, stride)
        ny, nx = divmod(nxt, stride)
        back = _DIR_INDEX[(by - ny, bx - nx)]
        cur = nxt
        path.append(cur)
    return [(p % stride - 1, p // stride - 1) for p in path]


def _farthest(xs: list[int], ys: list[int], a: int, b: int) -> tuple[int, float]:
    """Index in (a, b) farthest from the chord a-b (b may wrap to 0), and that distance."""
    n = len(xs)
    ax, ay, bx, by = xs[a], ys[a], xs[b % n], ys[b % n]
    dx, dy = bx - ax, by - ay
    if b - a > 48:  # long spans: one vectorized pass beats the Python loop
        px = np.asarray(xs[a + 1 : b], np.float64)
        py = np.asarray(ys[a + 1 : b], np.float64)
        if dx or dy:
            dist = np.abs(dx * (py - ay) - dy * (px - ax)) / float(np.hypot(dx, dy))
        else:
            dist = np.hypot(px - ax, py - ay)
        i = int(np.argmax(dist))
        return a + 1 + i, float(dist[i])
    best, best_d = a + 1, -1.0
    norm = (dx * dx + dy * dy) ** 0.5
    for i in range(a + 1, b):
        if norm:
            d = abs(dx * (ys[i] - ay) - dy * (xs[i] - ax)) / norm
        else:
            d = ((xs[i] - ax) ** 2 + (ys[i] - ay) ** 2) ** 0.5
        if d > best_d:
            best, best_d = i, d
    return best, best_d


def simplify(points: list[tuple[int, int]], epsilon: float) -> list[tuple[int, int]]:
    """Douglas-Peucker on a closed polygon (iterative)."""
    n = len(points)
    if n < 4:
        return points
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    # Split the closed ring at the point farthest from the first, then simplify both open halves.
    far = max(range(n), key=lambda i: (xs[i] - xs[0]) ** 2 + (ys[i] - ys[0]) ** 2)
    keep = {0, far}
    stack = [(0, far), (far, n)]
    while stack:
        a, b = stack.pop()
        if b - a < 2:
            continue
        i, dist = _farthest(xs, ys, a, b)
        if dist > epsilon:
            keep.add(i)
            stack += [(a, i), (i, b)]
    return [points[i] for i in sorted(keep)]


def outer_contours(
    binary: np.ndarray, min_area: int = 1, max_count: int = 32, epsilon: float = 0.75
) -> list[list[tuple[int, int]]]:
    """Outer polygons of the largest components with at least `min_area` pixels, largest first."""
    comps = [c for c in components(binary) if c[2] >= min_area]
    comps.sort(key=lambda c: -c[2])
    return [simplify(trace_outer(binary, y, x, 4 * area + 8), epsilon) for y, x, area in comps[:max_count]]
