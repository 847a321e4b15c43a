"""MiniCity appearance: render a scene's label layers as a GTA5-like, SYNTHIA-like or Cityscapes-like image.

The domain shift lives here, and it is a *covariate* shift, as GTA5 → Cityscapes is: every class keeps its
identity and is drawn from one canonical material colour (``CANONICAL``, the GTA5-like source's flat look);
each domain changes how the whole picture looks. A domain's ``Look`` is one global colour transform (white
balance, saturation, tone curve, contrast, black level) applied to every pixel, so P(class | content) is the
same in all domains. The real-like target adds texture per material, cast shadows, haze, per-image lighting
and white balance, vignetting, lens blur and sensor noise; its scenes (``minicity_scene``) are busier, with
another camera and street widths. No class is ever painted in another class's source colour: that would be
a conditional shift no unlabelled-target method can learn (generator version 1 did it, and every method
scored like source-only). Cars and their parts (glass, tyres, lamps) vary per element in every domain.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from bench.data.minicity_objects import CAR, SKY

_F = np.float32


def _pal(rows) -> np.ndarray:
    return np.array(rows, _F)


# Canonical material colour per trainId (the GTA5-like source draws exactly these): road sidewalk building wall
# fence pole light sign veg terrain sky person rider car truck bus train motorcycle bicycle.
# Chosen so the class means (parts included) stay apart in colour: a global look must not make two classes alike.
CANONICAL = _pal([
    (75, 72, 66), (165, 155, 140), (150, 105, 85), (195, 195, 205), (150, 125, 45), (115, 120, 130),
    (35, 40, 35), (200, 40, 40), (60, 125, 45), (160, 170, 90), (120, 170, 230), (200, 45, 95),
    (55, 65, 175), (35, 95, 165), (205, 140, 40), (225, 200, 40), (210, 70, 160), (100, 40, 120),
    (40, 160, 150)])
CAR_COLOURS = _pal([(25, 25, 28), (215, 215, 210), (160, 162, 168), (35, 95, 165), (35, 95, 165), (150, 30, 30),
                    (95, 95, 100), (120, 105, 80)])  # canonical body colours; every domain draws cars from them
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


_LUMA = np.array([0.299, 0.587, 0.114], _F)


@dataclass(frozen=True)
class Look:
    """A domain's global colour transform of canonical colours (what a camera and its processing do)."""

    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)  # white balance, per channel
    hue: float = 0.0  # rotation of every colour about the grey axis, degrees
    saturation: float = 1.0  # 0 = grey, 1 = unchanged
    gamma: float = 1.0  # tone curve on [0, 1]: < 1 lifts mid-tones
    contrast: float = 1.0  # around mid-grey
    lift: float = 0.0  # black level added (0–255 units)


def _hue_rotation(degrees: float) -> np.ndarray:
    """3×3 rotation about the (1, 1, 1) grey axis (Rodrigues), so greys stay grey."""
    t = np.deg2rad(degrees)
    k = np.full((3, 3), 1 / 3)
    skew = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]]) / np.sqrt(3)
    return (np.cos(t) * np.eye(3) + np.sin(t) * skew + (1 - np.cos(t)) * k).astype(_F)


def apply_look(rgb: np.ndarray, look: Look) -> np.ndarray:
    """``rgb`` (float, 0–255, last axis RGB) through ``look``; one fixed map for every pixel of the domain."""
    x = np.asarray(rgb, _F) * np.asarray(look.gains, _F)
    if look.hue:
        x = x @ _hue_rotation(look.hue).T
    lum = (x @ _LUMA)[..., None]
    x = lum + look.saturation * (x - lum)
    x = 255 * (np.clip(x, 0, 255) / 255) ** look.gamma
    return 128 + look.contrast * (x - 128) + look.lift


@dataclass(frozen=True)
class Style:
    """How one domain turns label layers into pixels. Ranges are sampled per image."""

    look: Look = Look()
    jitter: float = 0.08  # per-element brightness jitter (std, relative)
    tint: float = 0.03  # per-element per-channel jitter (std, relative)
    texture: float = 0.0  # scale of TEXTURE
    blur: tuple[float, float] = (0.0, 0.0)  # Gaussian sigma (px)
    noise: tuple[float, float] = (0.0, 0.0)  # sensor noise std (0–255 units)
    gain: tuple[float, float] = (0.92, 1.08)
    white_balance: float = 0.02  # per-channel gain std
    gamma: tuple[float, float] = (1.0, 1.0)
    p_shadow: float = 0.0
    haze: tuple[float, float] = (0.0, 0.0)  # blend toward a haze colour near the horizon
    vignette: float = 0.0
    sky: tuple[float, float, float] | None = None  # this image's sky material (``weather_sky``); None: canonical

    @property
    def palette(self) -> np.ndarray:
        """The domain's mean colour of each class's material (its ``look`` of ``CANONICAL``)."""
        return apply_look(CANONICAL, self.look)


# The target's camera: warmer white balance, every hue turned 12°, paler colours, lifted shadows, lower contrast —
# a strong but global change (affine up to the tone curve), as a real camera's processing is against a game's.
CITYSCAPES_LOOK = Look(gains=(1.1, 1.0, 0.85), hue=-12.0, saturation=0.8, gamma=0.9, contrast=0.9, lift=8.0)
STYLES: dict[str, Style] = {
    "gta5": Style(),
    "synthia": Style(Look(gains=(0.95, 1.0, 1.08), saturation=1.2, contrast=1.1), jitter=0.08, tint=0.04,
                     gain=(0.8, 1.15), white_balance=0.05),
    "cityscapes": Style(CITYSCAPES_LOOK, jitter=0.1, tint=0.05, texture=1.0, blur=(0.5, 1.1), noise=(3, 7),
                        gain=(0.75, 1.15), white_balance=0.06, gamma=(0.85, 1.2), p_shadow=0.4, haze=(0.03, 0.2),
                        vignette=0.25),
}


# A synthetic source's weather (``minicity.source_weather``): GTA5 renders clear to overcast skies, at day to dusk
# light, where the canonical look has one blue. Overcast stays bluish so it is not wall's grey-white.
CLEAR_SKY, OVERCAST_SKY = CANONICAL[SKY], _pal((165, 175, 185))
WEATHER_LIGHT = (0.7, 1.05)


def weather_sky(rng: np.random.Generator) -> tuple[float, float, float]:
    """One image's sky colour: a uniform blend of clear and overcast, times a uniform day-to-dusk light."""
    u, light = rng.uniform(0, 1), rng.uniform(*WEATHER_LIGHT)
    return tuple(float(c) for c in light * ((1 - u) * CLEAR_SKY + u * OVERCAST_SKY))


def _smooth_noise(rng, shape, sigma: float) -> np.ndarray:
    n = cv2.GaussianBlur(rng.standard_normal(shape, dtype=_F), (0, 0), sigma)
    return n / (n.std() + 1e-6)


def render(scene, style: Style, rng: np.random.Generator) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` for ``scene`` (a ``minicity_scene.Scene``) in ``style``."""
    h, w = scene.label.shape
    cls, n = scene.inst_cls, len(scene.inst_cls)
    real = cls < len(CANONICAL)
    base = np.where(real[:, None], CANONICAL[np.minimum(cls, len(CANONICAL) - 1)], VOID_COLOURS[scene.inst_void])
    cars = np.flatnonzero(cls == CAR)
    base[cars] = CAR_COLOURS[rng.integers(len(CAR_COLOURS), size=len(cars))]
    if style.sky is not None:
        base[cls == SKY] = style.sky
    base = base * (1 + style.jitter * rng.standard_normal((n, 1), dtype=_F))
    base = base * (1 + style.tint * rng.standard_normal((n, 3), dtype=_F))
    img = base.astype(_F)[scene.inst]
    a = PART_ALPHA[scene.part][..., None]
    img = img * (1 - a) + a * PART_COLOUR[scene.part]
    if style.look != Look():
        img = apply_look(img, style.look)  # the domain's camera: one map for all classes, parts and voids
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
