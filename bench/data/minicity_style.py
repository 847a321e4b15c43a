"""MiniCity appearance: render a scene's label layers as a GTA5-like, SYNTHIA-like or Cityscapes-like image.

The domain shift lives here. Both synthetic sources are flat per-class colours with a little per-element
jitter and sharp edges; each has its own palette. The real-like target moves several classes' colours onto
*other* classes' source colours (sidewalk → source road, terrain → source vegetation, wall → source
building, truck ↔ bus, person ↔ rider, motorcycle ↔ bicycle, sign → source car, ...), paints cars in
arbitrary colours, and adds texture, cast shadows, haze, lighting / white-balance changes, blur and sensor
noise. Part colours (glass, tyres, lamps, road paint, skin) are shared by all domains, so shape cues carry
over while colour cues mislead: a source-only model confuses exactly the pulled classes, a target-label
oracle learns them from shape and context.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from bench.data.minicity_objects import CAR, SKY

_F = np.float32


def _pal(rows) -> np.ndarray:
    return np.array(rows, _F)


# Per-trainId RGB: road sidewalk building wall fence pole light sign veg terrain sky person rider car truck
# bus train motorcycle bicycle.
GTA5_PALETTE = _pal([
    (85, 85, 90), (165, 155, 140), (150, 105, 85), (195, 185, 150), (125, 100, 70), (115, 120, 130),
    (35, 40, 35), (200, 40, 40), (60, 125, 45), (160, 170, 90), (120, 170, 230), (175, 55, 55),
    (55, 65, 175), (35, 95, 165), (205, 140, 40), (225, 200, 40), (165, 165, 185), (100, 40, 120),
    (40, 160, 150)])
SYNTHIA_PALETTE = _pal([
    (110, 100, 95), (190, 180, 170), (120, 120, 140), (170, 150, 120), (90, 90, 60), (150, 150, 150),
    (50, 50, 40), (230, 200, 30), (40, 100, 60), (130, 150, 70), (160, 200, 240), (200, 120, 50),
    (90, 40, 140), (150, 40, 40), (100, 100, 110), (40, 120, 200), (180, 180, 100), (70, 70, 75),
    (180, 60, 160)])
CITYSCAPES_PALETTE = _pal([
    (110, 105, 112),  # road: a little lighter than the source's
    (90, 88, 94),  # sidewalk → source road
    (160, 128, 110),  # building
    (150, 108, 88),  # wall → source building
    (185, 172, 140),  # fence → source wall
    (95, 98, 105),  # pole
    (30, 30, 30),  # traffic light
    (35, 90, 165),  # sign border → source car
    (50, 100, 45),  # vegetation: darker
    (66, 126, 48),  # terrain → source vegetation
    (140, 180, 225),  # sky
    (150, 50, 60),  # person: darker
    (172, 58, 55),  # rider → source person
    (35, 95, 165),  # car: overridden per car by CAR_COLOURS
    (222, 196, 45),  # truck → source bus
    (215, 190, 55),  # bus
    (152, 165, 95),  # train → source terrain
    (42, 158, 148),  # motorcycle → source bicycle
    (100, 42, 118),  # bicycle → source motorcycle
])
CAR_COLOURS = _pal([(25, 25, 28), (215, 215, 210), (160, 162, 168), (35, 95, 165), (35, 95, 165), (150, 30, 30),
                    (95, 95, 100), (120, 105, 80)])
# Ignore regions by Cityscapes id: unlabeled, ego vehicle, static, parking, rail track (others unused).
VOID_COLOURS = np.zeros((256, 3), _F)
VOID_COLOURS[[0, 1, 4, 9, 10]] = [(120, 110, 100), (28, 30, 34), (105, 115, 100), (110, 105, 110), (95, 82, 70)]
# Part codes (minicity_objects): BODY GLASS RUBBER LAMP_R LAMP_Y LAMP_G PAINT TRIM TRUNK SKIN DARK FACE METAL.
PART_COLOUR = _pal([(0, 0, 0), (45, 55, 70), (20, 20, 22), (230, 40, 30), (240, 190, 40), (40, 220, 110),
                    (235, 235, 230), (0, 0, 0), (95, 70, 50), (215, 170, 140), (40, 40, 48), (235, 235, 235),
                    (170, 170, 175), (0, 0, 0), (0, 0, 0), (0, 0, 0)])
PART_ALPHA = np.array([0, 0.85, 1, 1, 1, 1, 0.9, 0.35, 1, 1, 0.9, 1, 1, 0, 0, 0], _F)  # TRIM darkens
# Target texture amplitude (fine, coarse) per trainId, index 19 = ignore regions.
TEXTURE = np.array([
    (7, 6), (6, 9), (6, 12), (6, 10), (8, 6), (3, 3), (2, 2), (3, 3), (16, 22), (11, 16), (2, 5), (5, 5),
    (5, 5), (3, 4), (4, 5), (4, 5), (4, 5), (4, 4), (4, 4), (8, 8)], _F)


@dataclass(frozen=True)
class Style:
    """How one domain turns label layers into pixels. Ranges are sampled per image."""

    palette: np.ndarray
    jitter: float = 0.08  # per-element brightness jitter (std, relative)
    tint: float = 0.03  # per-element per-channel jitter (std, relative)
    car_colours: np.ndarray | None = None  # random body colour per car instead of the palette's
    texture: float = 0.0  # scale of TEXTURE
    blur: tuple[float, float] = (0.0, 0.0)  # Gaussian sigma (px)
    noise: tuple[float, float] = (0.0, 0.0)  # sensor noise std (0–255 units)
    gain: tuple[float, float] = (0.92, 1.08)
    white_balance: float = 0.02  # per-channel gain std
    gamma: tuple[float, float] = (1.0, 1.0)
    p_shadow: float = 0.0
    haze: tuple[float, float] = (0.0, 0.0)  # blend toward a haze colour near the horizon
    vignette: float = 0.0


STYLES: dict[str, Style] = {
    "gta5": Style(GTA5_PALETTE),
    "synthia": Style(SYNTHIA_PALETTE, jitter=0.08, tint=0.04, gain=(0.8, 1.15), white_balance=0.05),
    "cityscapes": Style(CITYSCAPES_PALETTE, jitter=0.1, tint=0.05, car_colours=CAR_COLOURS, texture=1.0,
                        blur=(0.5, 1.1), noise=(3, 7), gain=(0.75, 1.15), white_balance=0.06, gamma=(0.85, 1.2),
                        p_shadow=0.5, haze=(0.05, 0.3), vignette=0.25),
}


def _smooth_noise(rng, shape, sigma: float) -> np.ndarray:
    n = cv2.GaussianBlur(rng.standard_normal(shape, dtype=_F), (0, 0), sigma)
    return n / (n.std() + 1e-6)


def render(scene, style: Style, rng: np.random.Generator) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` for ``scene`` (a ``minicity_scene.Scene``) in ``style``."""
    h, w = scene.label.shape
    cls, n = scene.inst_cls, len(scene.inst_cls)
    real = cls < len(style.palette)
    base = np.where(real[:, None], style.palette[np.minimum(cls, len(style.palette) - 1)],
                    VOID_COLOURS[scene.inst_void])
    if style.car_colours is not None:
        cars = np.flatnonzero(cls == CAR)
        base[cars] = style.car_colours[rng.integers(len(style.car_colours), size=len(cars))]
    base = base * (1 + style.jitter * rng.standard_normal((n, 1), dtype=_F))
    base = base * (1 + style.tint * rng.standard_normal((n, 3), dtype=_F))
    img = base.astype(_F)[scene.inst]
    a = PART_ALPHA[scene.part][..., None]
    img = img * (1 - a) + a * PART_COLOUR[scene.part]
    rows = np.arange(h, dtype=_F)[:, None]
    sky = (scene.label == SKY)[..., None]
    img = np.where(sky, img * (0.85 + 0.25 * np.clip(rows / max(scene.horizon, 1), 0, 1))[..., None], img)
    if style.texture:
        tex = TEXTURE[np.minimum(scene.label, 19)] * style.texture
        fine, coarse = rng.standard_normal((h, w), dtype=_F), _smooth_noise(rng, (h, w), 2.0)
        img += (tex[..., 0] * fine + tex[..., 1] * coarse)[..., None]
    if rng.random() < style.p_shadow:  # a building's shadow over one side of the street
        s, yh = rng.choice([-1, 1]), scene.horizon
        x0 = w / 2 + s * rng.uniform(-0.1, 0.3) * w
        pts = np.array([[x0, h + 2], [w / 2 + s * 2 * w, h + 2], [w / 2 + s * 2 * w, yh + 1],
                        [w / 2 + s * rng.uniform(0, 0.1) * w, yh + 1]], np.int32)
        m = cv2.fillPoly(np.zeros((h, w), np.uint8), [pts], 1).astype(bool) & ~sky[..., 0]
        img[m] *= rng.uniform(0.5, 0.75)
    if style.haze[1] > 0:  # aerial perspective: far things (near the horizon row) fade toward the sky
        k = rng.uniform(*style.haze) * np.exp(-np.abs(rows - scene.horizon) / (0.12 * h))
        haze = np.array([200, 205, 210], _F) * (1 + 0.05 * rng.standard_normal(3, dtype=_F))
        img = np.where(sky, img, img * (1 - k[..., None]) + k[..., None] * haze)
    gain = rng.uniform(*style.gain) * (1 + style.white_balance * rng.standard_normal(3, dtype=_F))
    img = img * gain
    if style.vignette:
        yy, xx = (rows - h / 2) / (h / 2), (np.arange(w, dtype=_F)[None] - w / 2) / (w / 2)
        img *= (1 - style.vignette * 0.5 * (xx**2 + yy**2))[..., None]
    if style.gamma != (1.0, 1.0):
        img = 255 * (np.clip(img, 0, 255) / 255) ** rng.uniform(*style.gamma)
    if style.blur[1] > 0:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(*style.blur))
    if style.noise[1] > 0:
        img += rng.uniform(*style.noise) * rng.standard_normal(img.shape, dtype=_F)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)
