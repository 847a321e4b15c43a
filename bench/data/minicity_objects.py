"""MiniCity geometry primitives: a pinhole camera, label-layer canvas, and the street's objects.

The world is metric: X lateral (right +), Y height above the ground, Z depth. A point projects to
``x = vx + f·X/Z``, ``y = yh + f·(hc − Y)/Z``, so every object's size and position follow from where it
stands. Class identity is carried by shape and context — road at the bottom converging to the horizon,
sidewalks beside it, facades with window grids, poles on the curb carrying lights and signs, wheels under
vehicles, riders on two-wheelers — which is what lets a model recover the classes under another domain's
appearance. ``minicity_scene`` lays the street out with these; colour is ``minicity_style``'s business.
"""

from __future__ import annotations

import cv2
import numpy as np

from bench.data.labels import IGNORE

(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEG, TERRAIN, SKY,
 PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTO, BIKE) = range(19)
THINGS = (PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTO, BIKE)
# Part codes: sub-structure the renderer colours alike in every domain (glass, tyres, lamps, paint), so
# shape cues survive the palette shift.
BODY, GLASS, RUBBER, LAMP_R, LAMP_Y, LAMP_G, PAINT, TRIM, TRUNK, SKIN, DARK, FACE, METAL = range(13)
# Cityscapes ids of the non-evaluated regions drawn as ignore (they exercise the loaders' ignore handling).
UNLABELED, EGO, STATIC, PARKING, RAIL = 0, 1, 4, 9, 10
_CIRCLE = {n: [(float(np.cos(t)), float(np.sin(t))) for t in np.linspace(0, 2 * np.pi, n, endpoint=False)]
           for n in (8, 12)}
_SHIFT = 4  # cv2 fixed-point bits: sub-pixel vertices keep distant thin objects from flickering to nothing


class Camera:
    """Pinhole camera looking down the street; ``pt`` projects world (X, Y, Z) to pixel (x, y)."""

    def __init__(self, w: int, h: int, yh: float, hc: float, vx: float, focal: float = 0.9):
        self.f, self.yh, self.hc, self.vx, self.w, self.h = focal * w, yh, hc, vx, w, h

    def pt(self, X: float, Y: float, Z: float) -> tuple[float, float]:
        Z = max(Z, 0.3)  # clamp points behind/at the camera: their polygons just run off-canvas
        return self.vx + self.f * X / Z, self.yh + self.f * (self.hc - Y) / Z

    def side(self, X, z1, z2, y1, y2):
        """Vertical plane X = const (facades, vehicle sides)."""
        return [self.pt(X, y1, z1), self.pt(X, y1, z2), self.pt(X, y2, z2), self.pt(X, y2, z1)]

    def front(self, x1, x2, y1, y2, Z):
        """Vertical plane Z = const (facing the camera)."""
        return [self.pt(x1, y1, Z), self.pt(x2, y1, Z), self.pt(x2, y2, Z), self.pt(x1, y2, Z)]

    def ground(self, x1, x2, z1, z2, Y=0.0):
        """Horizontal plane Y = const."""
        return [self.pt(x1, Y, z1), self.pt(x2, Y, z1), self.pt(x2, Y, z2), self.pt(x1, Y, z2)]

    def disc(self, xc, yc, Z, r, n=12):
        return [self.pt(xc + r * c, yc + r * s, Z) for c, s in _CIRCLE[n]]


class Canvas:
    """Label layers drawn with the painter's algorithm (later draws occlude earlier).

    One int32 canvas holds ``element id · 16 + part`` so each primitive is a single cv2 call; the class and
    void id of a pixel follow from its element id (``cls``/``voids`` tables) when the scene is finished.
    """

    def __init__(self, w: int, h: int):
        self.code = np.zeros((h, w), np.int32)
        self.cls, self.voids = [SKY], [0]

    def new(self, cls: int, void: int = 0) -> int:
        self.cls.append(cls)
        self.voids.append(void)
        return len(self.cls) - 1

    def paint(self, draw, iid: int, part: int = BODY) -> None:
        draw(self.code, iid * 16 + part)

    def poly(self, pts, iid: int, part: int = BODY) -> None:
        h, w = self.code.shape
        xs, ys = [q[0] for q in pts], [q[1] for q in pts]
        if max(xs) < 0 or max(ys) < 0 or min(xs) > w or min(ys) > h:  # off-canvas: skip the cv2 call
            return
        # pt() clamps Z ≥ 0.3 m, so coordinates stay far inside int32 range after the fixed-point shift
        p = (np.array(pts, np.float64) * (1 << _SHIFT)).round().astype(np.int32)
        cv2.fillPoly(self.code, [p], iid * 16 + part, cv2.LINE_8, _SHIFT)

    def segment(self, cam: Camera, a, b, width_m: float, Z: float, iid: int, part: int = BODY) -> None:
        """A thick frontal line from a=(X, Y) to b (bike frames, limbs), at least one pixel wide."""
        p, q = cam.pt(a[0], a[1], Z), cam.pt(b[0], b[1], Z)
        t = max(1, round(width_m * cam.f / Z))
        cv2.line(self.code, (round(p[0]), round(p[1])), (round(q[0]), round(q[1])), iid * 16 + part, t,
                 cv2.LINE_8)

    def ellipse(self, c, axes, iid: int, part: int = BODY, thickness: int = -1) -> None:
        """Filled (or ``thickness``-px outline) axis-aligned ellipse with sub-pixel centre and axes."""
        s = 1 << _SHIFT
        cv2.ellipse(self.code, (round(c[0] * s), round(c[1] * s)), (round(axes[0] * s), round(axes[1] * s)), 0,
                    0, 360, iid * 16 + part, thickness, cv2.LINE_8, _SHIFT)

    def pattern(self, cam: Camera, pts, iid: int, plane: str, at: float, fn, part: int, min_px=1.5) -> None:
        """Mark ``part`` where ``fn(u, Y)`` holds on element ``iid`` lying in a vertical plane.

        The plane is X = ``at`` (``u`` = Z) or Z = ``at`` (``u`` = X); pixels are back-projected onto it,
        so window grids and fence posts keep their perspective. Skipped where a metre spans < ``min_px``.
        """
        p = np.asarray(pts)
        h, w = self.code.shape
        x0, y0 = max(int(p[:, 0].min()), 0), max(int(p[:, 1].min()), 0)
        x1, y1 = min(int(p[:, 0].max()) + 2, w), min(int(p[:, 1].max()) + 2, h)
        if x1 <= x0 or y1 <= y0:
            return
        region = self.code[y0:y1, x0:x1]
        mine = (region >> 4) == iid
        if not mine.any():
            return
        dx = np.arange(x0, x1, dtype=np.float32)[None] + np.float32(0.5 - cam.vx)
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] + np.float32(0.5 - cam.yh)
        if plane == "x":
            with np.errstate(divide="ignore", invalid="ignore"):
                Z = np.where(dx * at > 0, cam.f * at / np.where(dx == 0, 1, dx), np.inf)
            u = Z
        else:
            Z = np.full_like(dx, at)
            u = dx * at / cam.f
        Y = cam.hc - dy * Z / cam.f
        with np.errstate(invalid="ignore"):
            m = fn(u, Y) & mine & (cam.f / Z >= min_px)
        region[m] = iid * 16 + part


def _u(rng, a, b):
    return a + (b - a) * rng.random()


def _grid(period: float, width: float, offset: float = 0.0):
    """Boolean 1-D grid: within ``width`` after each multiple of ``period``."""
    return lambda v: np.mod(v - offset, period) < width


def _box(cv: Canvas, cam: Camera, x1, x2, z1, z2, y1, y2, iid, part=BODY) -> dict:
    """Visible faces of an axis-aligned box (side toward the camera axis, top if below the eye, front)."""
    faces = {}
    if x1 > 0:
        faces["side"] = ("x", x1, cam.side(x1, z1, z2, y1, y2))
    elif x2 < 0:
        faces["side"] = ("x", x2, cam.side(x2, z1, z2, y1, y2))
    if "side" in faces:
        cv.poly(faces["side"][2], iid, part)
    if y2 < cam.hc:
        cv.poly(cam.ground(x1, x2, z1, z2, y2), iid, part)
    faces["front"] = ("z", z1, cam.front(x1, x2, y1, y2, z1))
    cv.poly(faces["front"][2], iid, part)
    return faces


def _wheels(cv, cam, faces, x1, x2, z1, zs, r, iid) -> None:
    if "side" in faces:
        X = faces["side"][1]
        for zc in zs:
            cv.poly([cam.pt(X, r + r * sn, zc + r * c) for c, sn in _CIRCLE[12]], iid, RUBBER)
    for xa, xb in ((x1, x1 + 0.3), (x2 - 0.3, x2)):
        cv.poly(cam.front(xa, xb, 0, 2 * r * 0.8, z1 - 0.01), iid, RUBBER)


def car(cv, cam, rng, xc, z, cls=CAR) -> None:
    """Body box on wheels with a glass cabin; tail lights on the face toward the camera."""
    w, ln, hb, ht = _u(rng, 1.7, 1.95), _u(rng, 3.9, 4.8), _u(rng, 0.9, 1.1), _u(rng, 1.4, 1.6)
    x1, x2, iid = xc - w / 2, xc + w / 2, cv.new(cls)
    _box(cv, cam, x1 + 0.15, x2 - 0.15, z + 0.9, z + ln - 1.0, hb, ht, iid, GLASS)
    faces = _box(cv, cam, x1, x2, z, z + ln, 0.25, hb, iid)
    _wheels(cv, cam, faces, x1, x2, z, (z + 0.8, z + ln - 0.8), 0.33, iid)
    for xa in (x1 + 0.1, x2 - 0.4):
        cv.poly(cam.front(xa, xa + 0.3, hb - 0.3, hb - 0.12, z - 0.01), iid, LAMP_R)


def truck(cv, cam, rng, xc, z) -> None:
    """Cab and a taller, separate cargo box: the two-part silhouette is the truck's cue."""
    w, lc, hc, hx = _u(rng, 2.3, 2.5), _u(rng, 5.0, 8.0), _u(rng, 2.7, 3.0), _u(rng, 3.3, 3.9)
    x1, x2 = xc - w / 2, xc + w / 2
    cab = cv.new(TRUCK)
    f = _box(cv, cam, x1 + 0.05, x2 - 0.05, z + lc + 0.3, z + lc + 2.5, 0.4, hc, cab)
    if "side" in f:
        cv.pattern(cam, f["side"][2], cab, "x", f["side"][1], lambda u, Y: (Y > hc - 1.1) & (Y < hc - 0.2)
                   & (u > z + lc + 0.8), GLASS)
    cargo = cv.new(TRUCK)
    f = _box(cv, cam, x1, x2, z, z + lc, 0.5, hx, cargo)
    cv.pattern(cam, f["front"][2], cargo, "z", z, lambda u, Y: np.abs(u - xc) < 0.06, TRIM)
    _wheels(cv, cam, f, x1, x2, z, (z + 1.0, z + 2.3, z + lc + 2.0), 0.5, cargo)


def bus(cv, cam, rng, xc, z) -> None:
    """Long box with a continuous window band and a big rear window."""
    w, ln, h = 2.55, _u(rng, 10, 13), _u(rng, 3.0, 3.3)
    x1, x2, iid = xc - w / 2, xc + w / 2, cv.new(BUS)
    f = _box(cv, cam, x1, x2, z, z + ln, 0.3, h, iid)
    if "side" in f:
        cv.pattern(cam, f["side"][2], iid, "x", f["side"][1],
                   lambda u, Y: (Y > 1.3) & (Y < h - 0.4) & ~_grid(1.6, 0.15, z)(u), GLASS)
    cv.poly(cam.front(x1 + 0.2, x2 - 0.2, 1.5, h - 0.35, z - 0.01), iid, GLASS)
    _wheels(cv, cam, f, x1, x2, z, (z + 2.2, z + ln - 2.2), 0.5, iid)
    for xa in (x1 + 0.15, x2 - 0.45):
        cv.poly(cam.front(xa, xa + 0.3, 0.6, 0.9, z - 0.01), iid, LAMP_R)


def _train_windows(h, start):
    return lambda u, Y: ((Y > 1.3) & (Y < h - 0.8) & ~_grid(2.2, 0.3, start)(u)) | \
        ((Y > 0.5) & (Y < h - 0.7) & _grid(7.0, 1.2, start + 3)(u))  # window band + doors


def rails(cv, cam, xc: float | None = None, z: float | None = None) -> None:
    """Rail-track strip (Cityscapes 'rail track', an ignore id) along the street at ``xc`` or across at ``z``."""
    rail = cv.new(IGNORE, RAIL)
    if z is not None:
        cv.poly(cam.ground(-300, 300, z - 0.3, z + 3.3), rail)
        for zr in (z + 0.7, z + 2.2):
            cv.poly(cam.ground(-300, 300, zr, zr + 0.08), rail, METAL)
        return
    cv.poly(cam.ground(xc - 1.0, xc + 1.0, 0.5, 400), rail)
    for xr in (xc - 0.72, xc + 0.65):
        cv.poly(cam.ground(xr, xr + 0.07, 0.5, 400), rail, METAL)


def train(cv, cam, rng, xc, z, crossing: tuple[float, float] | None = None) -> None:
    """Very long box (tram/train) along the street, or a long frontal side crossing it at depth ``z``."""
    h, iid = _u(rng, 3.4, 3.8), cv.new(TRAIN)
    if crossing:
        pts = cam.front(crossing[0], crossing[1], 0.3, h, z)
        cv.poly(pts, iid)
        cv.pattern(cam, pts, iid, "z", z, _train_windows(h, crossing[0]), GLASS)
        return
    x1, x2 = xc - 1.4, xc + 1.4
    f = _box(cv, cam, x1, x2, z, z + _u(rng, 22, 45), 0.3, h, iid)
    if "side" in f:
        cv.pattern(cam, f["side"][2], iid, "x", f["side"][1], _train_windows(h, z), GLASS)
    cv.poly(cam.front(x1 + 0.25, x2 - 0.25, 1.3, h - 0.4, z - 0.01), iid, GLASS)


def person(cv, cam, rng, x, z, cls=PERSON, seat: float | None = None, facing: float = 1.0) -> None:
    """Frontal walker (legs, torso, arms, head) or, with ``seat`` height, a rider leaning forward."""
    h, iid = _u(rng, 1.6, 1.95), cv.new(cls)
    s = h / 1.75
    hip = seat if seat is not None else 0.95 * s
    lean = 0.25 * facing if seat is not None else 0.0
    sh = hip + 0.55 * s
    if seat is None:
        st = _u(rng, 0.05, 0.28) * s
        for d in (-1, 1):
            cv.poly(cam.front(x + d * 0.04 - 0.07, x + d * 0.04 + 0.07, 0, hip, z)[:2]
                    + [cam.pt(x + d * 0.1 + 0.07, hip, z), cam.pt(x + d * 0.1 - 0.07, hip, z)], iid, DARK)
            cv.poly([cam.pt(x + d * st - 0.07, 0, z), cam.pt(x + d * st + 0.07, 0, z),
                     cam.pt(x + d * 0.02 + 0.08, hip, z), cam.pt(x + d * 0.02 - 0.08, hip, z)], iid, DARK)
    else:
        cv.segment(cam, (x, hip), (x + 0.3 * facing, hip - 0.45), 0.14, z, iid, DARK)
    cv.poly([cam.pt(x - 0.17 * s, hip, z), cam.pt(x + 0.17 * s, hip, z),
             cam.pt(x + lean + 0.21 * s, sh, z), cam.pt(x + lean - 0.21 * s, sh, z)], iid)
    for d in (-1, 1):
        hand = (x + lean + 0.55 * facing, hip + 0.2) if seat is not None else (x + d * 0.3 * s, hip - 0.05)
        cv.segment(cam, (x + lean + d * 0.18 * s, sh - 0.05), hand, 0.09, z, iid)
    r = 0.12 * s
    cv.poly(cam.disc(x + lean, sh + r + 0.03, z, r), iid, SKIN)


def cyclist(cv, cam, rng, x, z) -> None:
    """Bicycle (thin rings and frame) or motorcycle (solid wheels, bulky body) seen side-on, with a rider."""
    facing = 1.0 if rng.random() < 0.5 else -1.0
    if rng.random() < 0.5:
        iid, r = cv.new(BIKE), 0.34
        hubs = (x - 0.55 * facing, x + 0.55 * facing)
        for hx in hubs:
            ax = r * cam.f / z
            # rims in the frame's colour with a thin tyre: v2 drew rubber-only rings and 1-px frames, which at
            # MiniCity's size read as road (bicycle IoU 0 for every row, the oracle too)
            ring = max(2, round(0.16 * cam.f / z))
            cv.ellipse(cam.pt(hx, r, z), (ax, ax), iid, BODY, thickness=ring)
            cv.ellipse(cam.pt(hx, r, z), (ax, ax), iid, RUBBER, thickness=max(1, ring // 3))
        seat, crank = (x - 0.15 * facing, 0.95), (x, r)
        for a, b in ((hubs[0], crank), (crank, seat), (seat, (x + 0.45 * facing, 1.0)),
                     ((x + 0.45 * facing, 1.0), (hubs[1], r)), ((hubs[0], r), seat)):
            a = a if isinstance(a, tuple) else (a, r)
            cv.segment(cam, a, b, 0.12, z, iid)
        person(cv, cam, rng, x - 0.15 * facing, z - 0.05, RIDER, seat=0.95, facing=facing)
    else:
        iid, r = cv.new(MOTO), 0.32
        for hx in (x - 0.7 * facing, x + 0.7 * facing):
            cv.poly(cam.disc(hx, r, z, r), iid, RUBBER)
        body = [(-0.75, 0.5), (-0.8, 0.75), (-0.1, 0.82), (0.35, 0.98), (0.6, 0.95), (0.7, 0.5), (0.2, 0.3),
                (-0.35, 0.3)]
        cv.poly([cam.pt(x + bx * facing, by, z) for bx, by in body], iid)
        cv.poly([cam.pt(x + bx * facing, by, z) for bx, by in ((-0.3, 0.3), (0.2, 0.3), (0.1, 0.6), (-0.2, 0.6))],
                iid, DARK)
        person(cv, cam, rng, x - 0.2 * facing, z - 0.05, RIDER, seat=0.85, facing=facing)


def pole(cv, cam, rng, x, z, side: float) -> None:
    """Curb pole carrying a traffic light, a traffic sign, both, a mast arm over the road, or a street lamp."""
    kind = rng.choice(["light", "sign", "both", "mast", "lamp"], p=[0.25, 0.3, 0.15, 0.1, 0.2])
    h = {"light": _u(rng, 3.2, 4.2), "sign": _u(rng, 2.6, 3.4), "both": _u(rng, 3.6, 4.4),
         "mast": _u(rng, 5.5, 6.5), "lamp": _u(rng, 6, 9)}[kind]
    wdt, iid = _u(rng, 0.13, 0.2), cv.new(POLE)
    cv.poly(cam.front(x - wdt, x + wdt, 0, h, z), iid)
    if kind in ("mast", "lamp"):  # arm reaching over the road (side = −1 on the left curb, +1 on the right)
        reach = _u(rng, 3, 6) if kind == "mast" else 1.5
        xe = x - side * reach
        cv.poly(cam.front(min(x, xe), max(x, xe), h - 0.25, h - 0.1, z), iid)
        if kind == "lamp":
            cv.poly(cam.front(xe - 0.35, xe + 0.35, h - 0.35, h - 0.15, z), iid, METAL)
            return
        traffic_light(cv, cam, rng, xe, h - 1.05, z)
        return
    if kind in ("light", "both"):
        traffic_light(cv, cam, rng, x, h - 0.95, z)
    if kind in ("sign", "both"):
        sign(cv, cam, rng, x, (h - 0.2) if kind == "sign" else 2.4, z)


def traffic_light(cv, cam, rng, x, y0, z) -> None:
    """Housing with three lamps (one lit) when facing the camera; a blank back otherwise."""
    iid = cv.new(LIGHT)
    cv.poly(cam.front(x - 0.25, x + 0.25, y0, y0 + 1.1, z - 0.05), iid)
    if rng.random() < 0.75:
        lit = int(rng.integers(3))
        for k, lamp in enumerate((LAMP_G, LAMP_Y, LAMP_R)):
            cv.poly(cam.disc(x, y0 + 0.2 + 0.35 * k, z - 0.06, 0.12, n=8), iid, lamp if k == lit else DARK)


def sign(cv, cam, rng, x, ytop, z) -> None:
    """Round, triangular, square or wide direction sign: a border with a light face."""
    iid, kind = cv.new(SIGN), int(rng.integers(4))
    zz = z - 0.05
    if kind == 0:
        cv.poly(cam.disc(x, ytop - 0.5, zz, 0.5), iid)
        cv.poly(cam.disc(x, ytop - 0.5, zz - 0.01, 0.34), iid, FACE)
    elif kind == 1:
        cv.poly([cam.pt(x - 0.6, ytop - 1.0, zz), cam.pt(x + 0.6, ytop - 1.0, zz), cam.pt(x, ytop, zz)], iid)
        cv.poly([cam.pt(x - 0.36, ytop - 0.87, zz - 0.01), cam.pt(x + 0.36, ytop - 0.87, zz - 0.01),
                 cam.pt(x, ytop - 0.27, zz - 0.01)], iid, FACE)
    else:
        hw, hh = (0.45, 0.9) if kind == 2 else (0.9, 0.65)
        cv.poly(cam.front(x - hw, x + hw, ytop - hh, ytop, zz), iid)
        cv.poly(cam.front(x - hw + 0.08, x + hw - 0.08, ytop - hh + 0.08, ytop - 0.08, zz - 0.01), iid, FACE)


def tree(cv, cam, rng, x, z) -> None:
    """Trunk and an elliptical crown; both vegetation, as Cityscapes annotates them."""
    iid, th, r = cv.new(VEG), _u(rng, 2.0, 3.5), _u(rng, 1.3, 2.8)
    cv.poly(cam.front(x - 0.15, x + 0.15, 0, th + 0.5, z), iid, TRUNK)
    cv.ellipse(cam.pt(x, th + r * 0.8, z), (r * cam.f / z, r * 0.9 * cam.f / z), iid)
