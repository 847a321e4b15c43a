"""MiniCity street layout: one seeded scene → trainId label map plus the layers the renderer needs.

A scene is a street seen from a car: road to the horizon with lane markings, sidewalks and grass strips
beside it, facades (or park edges) behind them, an optional cross street, a far backdrop, walls and fences
along the building line, and street objects — poles with lights and signs, trees, vehicles in lanes,
pedestrians, cyclists — drawn far to near. ``SceneSpec`` sets each domain's viewpoint and how often each
class occurs; the geometry itself is shared, so only appearance and frequencies differ between domains.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from bench.data import minicity_objects as ob
from bench.data.labels import IGNORE
from bench.data.minicity_objects import (
    BUILDING,
    FENCE,
    GLASS,
    PAINT,
    ROAD,
    SIDEWALK,
    TERRAIN,
    TRIM,
    VEG,
    WALL,
    Camera,
    Canvas,
    _grid,
    _u,
)


@dataclass(frozen=True)
class SceneSpec:
    """Per-domain viewpoint and class frequencies (counts are inclusive ranges, p_* probabilities)."""

    horizon: tuple[float, float] = (0.40, 0.50)  # horizon row as a fraction of the image height
    cam_height: tuple[float, float] = (1.3, 1.8)  # metres
    focal: tuple[float, float] = (0.9, 0.9)  # focal length as a fraction of the image width (field of view)
    road_half: tuple[float, float] = (2.5, 7.5)  # metres from the axis to each curb
    sidewalk: tuple[float, float] = (1.8, 4.5)  # sidewalk width, metres
    cars: tuple[int, int] = (1, 5)
    persons: tuple[int, int] = (0, 4)
    cyclists: tuple[int, int] = (0, 2)
    p_truck: float = 0.45
    p_bus: float = 0.35
    p_train: float = 0.25
    p_wall: float = 0.5
    p_fence: float = 0.5
    p_terrain: float = 0.55
    p_trees: float = 0.6
    poles: tuple[int, int] = (2, 5)
    p_static: float = 0.3
    p_parking: float = 0.25
    p_ego: float = 0.0  # Cityscapes' own car bonnet at the bottom (ignore)
    p_unlabeled: float = 0.0


SPECS: dict[str, SceneSpec] = {
    "gta5": SceneSpec(),
    # SYNTHIA-like: higher camera, horizon higher in the frame; few trucks/trains (ignored in its protocol).
    "synthia": SceneSpec(horizon=(0.26, 0.38), cam_height=(2.5, 5.0), cars=(1, 6), persons=(1, 6),
                         p_truck=0.08, p_train=0.05, p_terrain=0.3),
    # Cityscapes-like: a lower, wider-angle camera, narrower roads and wider sidewalks, busier streets (more cars
    # and people), fewer trucks, ego bonnet, void regions.
    "cityscapes": SceneSpec(horizon=(0.42, 0.48), cam_height=(1.2, 1.6), focal=(0.75, 0.95), road_half=(2.5, 6.0),
                            sidewalk=(2.2, 5.0), cars=(3, 9), persons=(2, 9), cyclists=(0, 3), p_truck=0.15,
                            p_bus=0.25, p_train=0.15, p_static=0.6, p_parking=0.4, p_ego=1.0, p_unlabeled=0.3),
}


@dataclass
class Scene:
    """Label layers of one scene. ``inst`` numbers every drawn element; ``inst_cls`` gives its trainId."""

    label: np.ndarray  # [H, W] uint8 trainIds, 255 = ignore
    void: np.ndarray  # [H, W] uint8 Cityscapes id of ignore pixels (0, 1, 4, 9, 10)
    inst: np.ndarray  # [H, W] uint16 element id
    part: np.ndarray  # [H, W] uint8 part code (minicity_objects.BODY, GLASS, ...)
    inst_cls: np.ndarray  # [n] uint8 trainId per element id
    inst_void: np.ndarray  # [n] uint8 void id per element id
    horizon: float


def _free(taken: list[tuple[float, float]], z1: float, z2: float) -> bool:
    return all(z2 < a or z1 > b for a, b in taken)


class _Street:
    """Cross-section of the street in metres and the helpers that place things on it."""

    def __init__(self, rng, spec: SceneSpec):
        self.xl, self.xr = -_u(rng, *spec.road_half), _u(rng, *spec.road_half)
        self.edge = {-1: self.xl, 1: self.xr}
        self.sw = {s: (_u(rng, *spec.sidewalk) if rng.random() > 0.1 else 0.3) for s in (-1, 1)}
        self.grass = {s: (_u(rng, 1.0, 4.5) if rng.random() < spec.p_terrain else 0.0) for s in (-1, 1)}
        self.zend = _u(rng, 45, 160)
        self.cross = (_u(rng, 14, 45), _u(rng, 8, 14)) if rng.random() < 0.4 else None
        lanes = np.arange(self.xl + 1.7, self.xr - 1.0, 3.3)
        self.lanes = [float(x) for x in lanes] or [0.0]
        self.taken: dict[float, list] = {x: [] for x in self.lanes}

    def out(self, s: int) -> float:
        """Distance from the axis to the outer sidewalk edge on side ``s``."""
        return abs(self.edge[s]) + self.sw[s]

    def bline(self, s: int) -> float:
        return self.out(s) + self.grass[s]

    def in_cross(self, z1: float, z2: float, pad: float = 0.0) -> bool:
        return self.cross is not None and not (z2 < self.cross[0] - pad or z1 > sum(self.cross) + pad)

    def lane_slot(self, rng, length: float, zmin=6.0, zmax=70.0):
        """A lane and depth with ``length`` metres free, or None after a few tries."""
        for _ in range(8):
            x = self.lanes[int(rng.integers(len(self.lanes)))]
            z = _u(rng, zmin + (4 if abs(x) < 1.5 else 0), zmax)
            if _free(self.taken[x], z - 2, z + length + 2) and not self.in_cross(z, z + length, 1):
                self.taken[x].append((z - 2, z + length + 2))
                return x, z
        return None


def _ground(cv: Canvas, cam: Camera, st: _Street, rng, spec: SceneSpec) -> None:
    cv.poly(cam.ground(-600, 600, 0.5, 3000), cv.new(TERRAIN))
    cv.poly(cam.ground(st.xl, st.xr, 0.5, 3000), cv.new(ROAD))
    for s in (-1, 1):
        e = st.edge[s]
        cv.poly(cam.ground(e, e + s * st.sw[s], 0.5, 3000), cv.new(SIDEWALK))
        if st.grass[s]:
            cv.poly(cam.ground(s * st.out(s), s * st.bline(s), 0.5, 3000), cv.new(TERRAIN))
    paint = cv.new(ROAD)
    for xb in st.lanes[1:]:
        xb -= 1.65
        for z0 in np.arange(_u(rng, 1, 9), 100, 9.0):
            cv.poly(cam.ground(xb - 0.08, xb + 0.08, z0, z0 + 3), paint, PAINT)
    if st.cross:
        zc, wc = st.cross
        for s in (-1, 1):
            cv.poly(cam.ground(st.edge[s], s * 600, zc - 3, zc + wc + 3), cv.new(SIDEWALK))
        cv.poly(cam.ground(-600, 600, zc, zc + wc), cv.new(ROAD))
        if rng.random() < 0.6:  # zebra crossing
            for x in np.arange(st.xl + 0.3, st.xr - 0.4, 1.0):
                cv.poly(cam.ground(x, x + 0.5, zc - 3.5, zc - 0.5), paint, PAINT)
    if rng.random() < spec.p_parking:  # parking bay along one curb: a Cityscapes ignore id
        s = 1 if rng.random() < 0.5 else -1
        z1 = _u(rng, 2, 20)
        cv.poly(cam.ground(st.edge[s] - s * 2.2, st.edge[s], z1, z1 + _u(rng, 10, 40)), cv.new(IGNORE, ob.PARKING))


def _facade_windows(fh, pw, ww, top, start):
    return lambda u, Y: (np.mod(Y - 0.9, fh) < fh * 0.45) & (Y > 0.9) & (Y < top - 0.8) & (
        np.mod(u - start, pw) < ww)


def _building(cv, cam, rng, s, xb, z1, z2):
    """Facade along the street (side face) plus its near gable, both with a perspective window grid."""
    iid, h = cv.new(BUILDING), _u(rng, 6, 30)
    win = _facade_windows(_u(rng, 2.8, 3.6), _u(rng, 2.2, 3.6), _u(rng, 0.8, 1.5), h, z1)
    front = cam.front(min(s * xb, s * (xb + 25)), max(s * xb, s * (xb + 25)), 0, h, z1)
    cv.poly(front, iid)
    side = cam.side(s * xb, z1, z2, 0, h)
    cv.poly(side, iid)
    if rng.random() < 0.9:
        cv.pattern(cam, side, iid, "x", s * xb, win, GLASS, min_px=1.2)
        cv.pattern(cam, front, iid, "z", z1, win, GLASS, min_px=1.2)


def _park_edge(cv, cam, rng, s, xb, z1, z2):
    """A wall of foliage with a bumpy top where a facade would be."""
    iid, zs = cv.new(VEG), np.linspace(z1, z2, 6)
    top = [cam.pt(s * xb, _u(rng, 4, 11), z) for z in zs]
    cv.poly([cam.pt(s * xb, 0, z1)] + top + [cam.pt(s * xb, 0, z2)], iid)


def _backdrop(cv, cam, rng, st) -> None:
    z, half = st.zend, max(st.bline(-1), st.bline(1)) + 40
    r = rng.random()
    if r < 0.55:
        for x0 in np.arange(-half, half, 18.0):
            iid, h = cv.new(BUILDING), _u(rng, 8, 35)
            pts = cam.front(x0, x0 + 18, 0, h, z)
            cv.poly(pts, iid)
            cv.pattern(cam, pts, iid, "z", z, _facade_windows(3.2, 3.0, 1.2, h, x0), GLASS, min_px=1.2)
    elif r < 0.85:
        xs = np.linspace(-half, half, 14)
        cv.poly([cam.pt(-half, 0, z)] + [cam.pt(x, _u(rng, 5, 13), z) for x in xs] + [cam.pt(half, 0, z)],
                cv.new(VEG))


def _sides(cv, cam, rng, st, spec, layer: list) -> None:
    """Facades / park edges along both sides; returned in ``layer`` as (near z, draw) for depth sorting."""
    for s in (-1, 1):
        z = -2.0
        while z < st.zend:
            ln = _u(rng, 8, 30)
            z1, z2 = z, min(z + ln, st.zend)
            z = z2
            if st.in_cross(z1, z2, 3) or rng.random() < 0.08:
                continue
            xb = st.bline(s) + (_u(rng, 0, 2.5) if rng.random() < 0.4 else 0)
            fn = _park_edge if rng.random() < 0.15 else _building
            layer.append((z1, partial(fn, cv, cam, rng, s, xb, z1, z2)))


def _barriers(cv, cam, rng, st, spec) -> None:
    """Walls (plain, capped) and fences (posts, rails, lattice) standing on the building line or curb."""
    for s in (-1, 1):
        for cls, p in ((WALL, spec.p_wall), (FENCE, spec.p_fence)):
            if rng.random() >= p:
                continue
            x = s * ((st.bline(s) if rng.random() < 0.6 else st.out(s)) - 0.15)
            z1 = _u(rng, -2, 25)
            z2 = min(z1 + _u(rng, 8, 45), st.zend)
            if st.cross and z1 < st.cross[0] < z2:
                z2 = st.cross[0] - 3.5
            if z2 <= z1 + 2:
                continue
            h = _u(rng, 0.8, 2.8) if cls == WALL else _u(rng, 1.0, 2.2)
            iid, pts = cv.new(cls), cam.side(x, z1, z2, 0, h)
            cv.poly(pts, iid)
            if cls == WALL:
                cv.pattern(cam, pts, iid, "x", x, lambda u, Y, h=h: Y > h - 0.15, TRIM)
            else:
                step = _u(rng, 1.5, 2.6)
                cv.pattern(cam, pts, iid, "x", x, lambda u, Y, h=h, step=step: _grid(step, 0.12)(u)
                           | (np.abs(Y - h + 0.1) < 0.08) | (np.abs(Y - 0.3) < 0.08)
                           | (np.mod(u + Y, 0.5) < 0.1) | (np.mod(u - Y, 0.5) < 0.1), TRIM, min_px=1.0)
        if st.grass[s] > 1.5 and rng.random() < 0.3:  # hedge on the grass strip
            z1 = _u(rng, 0, 30)
            cv.poly(cam.side(s * (st.out(s) + 0.5), z1, z1 + _u(rng, 5, 25), 0, _u(rng, 0.7, 1.5)), cv.new(VEG))


def _objects(cv, cam, rng, st: _Street, spec: SceneSpec, layer: list) -> list:
    """Street objects as (depth, draw) pairs, drawn far to near; cross-street ones go to ``layer``."""
    objs = []

    def add(z, fn, *args, into=objs, **kw):
        into.append((z, partial(fn, cv, cam, rng, *args, **kw)))

    for s in (-1, 1):
        if rng.random() < spec.p_trees:
            x = s * (st.out(s) + st.grass[s] / 2) if st.grass[s] else s * (st.out(s) - 0.5)
            for z in np.arange(_u(rng, 3, 10), min(st.zend, 90), _u(rng, 7, 15)):
                if not st.in_cross(z, z, 2):
                    add(z, ob.tree, x, z)
    for _ in range(int(rng.integers(spec.poles[0], spec.poles[1] + 1))):
        s = 1 if rng.random() < 0.5 else -1
        z = st.cross[0] - 1 if st.cross and rng.random() < 0.3 else _u(rng, 4, 40)
        add(z, ob.pole, s * (abs(st.edge[s]) + 0.4), z, side=s)
    if rng.random() < spec.p_static:
        for _ in range(int(rng.integers(1, 4))):
            s, z = (1 if rng.random() < 0.5 else -1), _u(rng, 3, 30)
            x = s * (abs(st.edge[s]) + _u(rng, 0.3, max(st.sw[s], 0.4)))
            add(z, lambda c, k, r, x, z: c.poly(k.front(x - 0.35, x + 0.35, 0, _u(r, 0.8, 1.3), z),
                                                c.new(IGNORE, ob.STATIC)), x, z)
    if rng.random() < spec.p_train:
        if st.cross and rng.random() < 0.6:
            zc = st.cross[0] + 1.5
            ob.rails(cv, cam, z=zc)
            # stands in the cross street: behind nearer facades, in front of farther ones
            add(zc, ob.train, 0.0, zc, crossing=(-st.bline(-1) - 30, st.bline(1) + 30), into=layer)
        elif (slot := st.lane_slot(rng, 45, 8, 40)) is not None:
            ob.rails(cv, cam, xc=slot[0])
            add(slot[1], ob.train, *slot)
    for p, fn, ln in ((spec.p_truck, ob.truck, 11), (spec.p_bus, ob.bus, 13)):
        if rng.random() < p and (slot := st.lane_slot(rng, ln, 8, 55)) is not None:
            add(slot[1], fn, *slot)
    for _ in range(int(rng.integers(spec.cars[0], spec.cars[1] + 1))):
        if rng.random() < 0.35:  # parked along a curb, seen side-on in perspective
            s, z = (1 if rng.random() < 0.5 else -1), _u(rng, 3, 40)
            add(z, ob.car, st.edge[s] - s * 1.1, z)
        elif (slot := st.lane_slot(rng, 5)) is not None:
            add(slot[1], ob.car, *slot)
    for _ in range(int(rng.integers(spec.persons[0], spec.persons[1] + 1))):
        s, z = (1 if rng.random() < 0.5 else -1), _u(rng, 3, 45)
        if st.cross and rng.random() < 0.2:
            x, z = _u(rng, st.xl, st.xr), st.cross[0] - _u(rng, 0.5, 3)
        else:
            x = s * (abs(st.edge[s]) + _u(rng, 0.3, max(st.sw[s] - 0.3, 0.4)))
        add(z, ob.person, x, z)
    for _ in range(int(rng.integers(spec.cyclists[0], spec.cyclists[1] + 1))):
        s, z = (1 if rng.random() < 0.5 else -1), _u(rng, 4, 35)
        add(z, ob.cyclist, st.edge[s] - s * _u(rng, 0.8, 1.6), z)
    return objs


def make_scene(spec: SceneSpec, rng: np.random.Generator, size: tuple[int, int] = (256, 128)) -> Scene:
    """Lay out and rasterise one street scene of ``size`` = (W, H); deterministic given ``rng``'s state."""
    w, h = size
    cam = Camera(w, h, _u(rng, *spec.horizon) * h, _u(rng, *spec.cam_height), w / 2 + _u(rng, -0.1, 0.1) * w,
                 _u(rng, *spec.focal))
    cv, st = Canvas(w, h), _Street(rng, spec)
    _ground(cv, cam, st, rng, spec)
    _backdrop(cv, cam, rng, st)
    layer: list = []
    _sides(cv, cam, rng, st, spec, layer)
    objs = _objects(cv, cam, rng, st, spec, layer)  # may lay rails, so it runs before anything stands
    for _, draw in sorted(layer, key=lambda o: -o[0]):
        draw()
    _barriers(cv, cam, rng, st, spec)
    for _, draw in sorted(objs, key=lambda o: -o[0]):
        draw()
    if rng.random() < spec.p_ego:  # the recording car's bonnet, as in every Cityscapes frame
        cv.ellipse((w / 2, h * 1.25), (w * 0.75, h * 0.33), cv.new(IGNORE, ob.EGO))
    if rng.random() < spec.p_unlabeled:  # an unannotated corner
        a, b = int(_u(rng, 0.05, 0.2) * h), int(_u(rng, 0.05, 0.2) * w)
        x0 = 0 if rng.random() < 0.5 else w - 1
        pts = [(x0, h - a), (x0, h), (abs(x0 - b), h)]
        cv.poly(pts, cv.new(IGNORE, ob.UNLABELED))
    inst_cls, inst_void = np.array(cv.cls, np.uint8), np.array(cv.voids, np.uint8)
    inst = (cv.code >> 4).astype(np.uint16)
    return Scene(inst_cls[inst], inst_void[inst], inst, (cv.code & 15).astype(np.uint8), inst_cls, inst_void,
                 cam.yh)
