"""Generate the example inputs of the shipped workflows (deterministic, no network, no models).

    python example_inputs/make_inputs.py [OUT_DIR]      (default: this folder)

Needs the pack importable as ``comfyui_atelier`` (``pip install -e .`` from the pack folder) and, for the
keyboard labels, the Noto Sans CJK font (Debian/Ubuntu: ``apt-get install fonts-noto-cjk``).

Writes, at the top level of OUT_DIR (the pack copies these into ComfyUI's input folder on load):

- ``keyboard_skin_reference.png`` (keyboard_skin): a phone keyboard skin drawn with the pack's own Layout
  Compose (core.layout, layouts/t9_9key.json) and glyph renderer (core.glyph): background artwork,
  translucent key caps, Latin letter groups and Chinese keys (空格, 发送, 中/英, 删除, 分词, 符号). 1216x832, the workflow's
  latent size, so its Canny / OCR boxes line up with the generated image.
- ``style07_ref_1.png``, ``style07_ref_2.png`` (style_transfer): two 512x512 landscapes in one flat-colour,
  posterised print style (same palette, banded sky, layered ridges, paper grain).
- ``product_on_busy_background.png`` (remove_background): a shaded ceramic mug on a wooden table in front
  of a patterned fabric, with a plant, books and pencils around it; `product_scene()` also returns the
  mug's exact mask (the tests compare the matting against it).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

try:
    from comfyui_atelier.core.files import atomic_path
    from comfyui_atelier.core.glyph import font_dirs, render_glyphs
    from comfyui_atelier.core.layout import compose_layout, load_layout, shipped_layouts
except ImportError as exc:  # pragma: no cover - a hint for people running the script by hand
    raise SystemExit(f"make_inputs.py needs the pack installed as comfyui_atelier (pip install -e .): {exc}")

HERE = Path(__file__).resolve().parent
FONT = "NotoSansCJK-Regular.ttc#2"  # face 2 = Simplified Chinese shapes

KEYBOARD_SIZE = (1216, 832)  # keyboard_skin.json: EmptyLatentImage 1216x832
STYLE_SIZE = 512
PRODUCT_SIZE = (768, 768)

# t9_9key in Chinese mode: the 1-key splits syllables (分词) and the tall Enter key sends (发送)
KEYBOARD_RELABEL = {"@/.": "分词", "换行": "发送"}
# slot per differently shaped key, so no key cap is stretched out of shape
KEYBOARD_SLOTS = {"123": "wide_function_key", "空格": "space_key", "发送": "send_key"}


def _rgb(hex_: str) -> np.ndarray:
    h = hex_.lstrip("#")
    return np.array([int(h[i:i + 2], 16) for i in (0, 2, 4)], np.float32)


def _smooth_noise(shape, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Value noise in -1..1: random grid upsampled with cubic interpolation (scale = feature size in px)."""
    h, w = shape
    gh, gw = max(2, int(h / scale) + 2), max(2, int(w / scale) + 2)
    grid = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    big = cv2.resize(grid, (int(gw * scale), int(gh * scale)), interpolation=cv2.INTER_CUBIC)
    return np.clip(big[:h, :w], -1, 1)


def _fbm(shape, scale: float, rng, octaves: int = 4) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    amp, total = 1.0, 0.0
    for _ in range(octaves):
        out += amp * _smooth_noise(shape, max(2.0, scale), rng)
        total += amp
        amp *= 0.5
        scale /= 2
    return out / total


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _over(dst: np.ndarray, color, alpha: np.ndarray) -> np.ndarray:
    """dst float [H,W,3] with `color` ([3] or [H,W,3]) laid over it with alpha [H,W] in 0..1."""
    a = alpha[..., None].astype(np.float32)
    return dst * (1 - a) + np.asarray(color, np.float32) * a


def _aa_mask(h: int, w: int, draw, ss: int = 4) -> np.ndarray:
    """Anti-aliased float mask 0..1: `draw(mask_uint8, ss)` paints 255 at ss-times resolution."""
    big = np.zeros((h * ss, w * ss), np.uint8)
    draw(big, ss)
    return cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


# ---------------------------------------------------------------------------------------------
# keyboard skin

def keyboard_layout() -> dict:
    """layouts/t9_9key.json relabelled for a Chinese IME, validated by core.layout."""
    spec = json.loads(shipped_layouts()["t9_9key"].read_text(encoding="utf-8"))
    for r in spec["regions"]:
        if r.get("label"):
            r["label"] = KEYBOARD_RELABEL.get(r["label"], r["label"])
            r["slot"] = KEYBOARD_SLOTS.get(r["label"], r["slot"])
    spec["label_size"] = 56  # a little larger than the layout's 48: OCR reads the letter groups more surely
    return load_layout(spec)


def _keyboard_art(w: int, h: int) -> np.ndarray:
    """Background artwork: deep sea-blue dusk gradient, soft bokeh lights and flowing wave ribbons."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (yy / h * 0.75 + xx / w * 0.25)[..., None]
    top, mid, bottom = _rgb("#0b1d3a"), _rgb("#163f6b"), _rgb("#1f7a8c")
    img = np.where(t < 0.5, top + (mid - top) * (t / 0.5), mid + (bottom - mid) * ((t - 0.5) / 0.5))
    glow = np.exp(-(((xx - 0.78 * w) / (0.35 * w)) ** 2 + ((yy - 0.15 * h) / (0.35 * h)) ** 2))
    img = _over(img, _rgb("#ffb38a"), 0.35 * glow)
    for _ in range(26):  # bokeh
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.015, 0.06) * w
        d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / r
        disk = np.clip((1.0 - d) * 6, 0, 1) * (0.55 + 0.45 * np.clip(d, 0, 1))
        color = _rgb(rng.choice(["#ffd9b0", "#9fe7f5", "#ffffff", "#f7a6c8"]))
        img = _over(img, color, rng.uniform(0.10, 0.22) * disk)
    for k in range(5):  # wave ribbons across the lower half
        phase, amp, base = rng.uniform(0, 6.28), rng.uniform(0.03, 0.06) * h, (0.55 + 0.09 * k) * h
        curve = base + amp * np.sin(xx / w * (2.2 + 0.3 * k) * np.pi + phase)
        band = np.exp(-((yy - curve) / (0.012 * h + 0.004 * h * k)) ** 2)
        img = _over(img, _rgb("#bff3ff"), (0.20 - 0.025 * k) * band)
    return _to_u8(img)


def _key_cap(w: int, h: int, fill: str, fill_alpha: float, rim_alpha: float, radius: float) -> np.ndarray:
    """RGBA key cap element: translucent rounded rect, brighter top edge, thin light rim."""
    ss = 4
    r = int(radius * min(w, h))

    def body(m, s):
        rr = r * s
        cv2.rectangle(m, (rr, 0), (w * s - 1 - rr, h * s - 1), 255, -1)
        cv2.rectangle(m, (0, rr), (w * s - 1, h * s - 1 - rr), 255, -1)
        for cx, cy in ((rr, rr), (w * s - 1 - rr, rr), (rr, h * s - 1 - rr), (w * s - 1 - rr, h * s - 1 - rr)):
            cv2.circle(m, (cx, cy), rr, 255, -1)

    outer = _aa_mask(h, w, body, ss)
    inner = cv2.erode(outer, np.ones((5, 5), np.uint8))
    rim = np.clip(outer - inner, 0, 1)
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    shade = 1.0 + 0.20 * (1 - yy) ** 3  # light from above
    rgb = np.broadcast_to(_rgb(fill) * shade[..., None], (h, w, 3))
    rgb = _over(rgb, (255, 255, 255), rim * 0.8)
    alpha = np.clip(inner * fill_alpha * shade + rim * rim_alpha, 0, 1)
    return np.dstack([_to_u8(rgb), _to_u8(alpha * 255)])


def _toolbar_icons(img: np.ndarray, bar: tuple[int, int, int, int]) -> None:
    """Line icons on the function bar (logo, keyboard, emoji, voice, settings, collapse), drawn in place."""
    x0, y0, bw, bh = bar
    cy, s = y0 + bh // 2, max(8, bh // 4)
    col, th = (236, 246, 255), max(2, bh // 36)
    xs = [x0 + int(bw * f) for f in (0.06, 0.22, 0.38, 0.54, 0.70, 0.94)]
    aa = cv2.LINE_AA
    cv2.circle(img, (xs[0], cy), s + 4, (255, 179, 138), -1, aa)  # logo
    star = [(xs[0] + (0.8 if k % 2 == 0 else 0.34) * s * np.sin(k * np.pi / 5),
             cy - (0.8 if k % 2 == 0 else 0.34) * s * np.cos(k * np.pi / 5)) for k in range(10)]
    cv2.fillPoly(img, [np.int32(np.round(star))], (11, 29, 58), aa)
    cv2.rectangle(img, (xs[1] - s - 6, cy - s + 2), (xs[1] + s + 6, cy + s - 2), col, th, aa)  # keyboard
    for i in range(4):
        for j in range(2):
            cv2.circle(img, (xs[1] - s + 2 + i * (2 * s) // 3, cy - s // 3 + j * (2 * s) // 3), th, col, -1, aa)
    cv2.circle(img, (xs[2], cy), s, col, th, aa)  # emoji
    cv2.circle(img, (xs[2] - s // 3, cy - s // 4), th, col, -1, aa)
    cv2.circle(img, (xs[2] + s // 3, cy - s // 4), th, col, -1, aa)
    cv2.ellipse(img, (xs[2], cy + s // 8), (s // 2, s // 3), 0, 20, 160, col, th, aa)
    cv2.rectangle(img, (xs[3] - s // 3, cy - s), (xs[3] + s // 3, cy + s // 4), col, th, aa)  # microphone
    cv2.ellipse(img, (xs[3], cy), (s * 2 // 3, s * 2 // 3), 0, 0, 180, col, th, aa)
    cv2.line(img, (xs[3], cy + s * 2 // 3), (xs[3], cy + s), col, th, aa)
    for k in range(8):  # settings gear
        a = k * np.pi / 4
        cv2.line(img, (int(xs[4] + 0.7 * s * np.cos(a)), int(cy + 0.7 * s * np.sin(a))),
                 (int(xs[4] + 1.05 * s * np.cos(a)), int(cy + 1.05 * s * np.sin(a))), col, th + 2, aa)
    cv2.circle(img, (xs[4], cy), int(0.72 * s), col, th, aa)
    cv2.circle(img, (xs[4], cy), int(0.3 * s), col, th, aa)
    cv2.polylines(img, [np.int32([(xs[5] - s, cy - s // 3), (xs[5], cy + s // 3), (xs[5] + s, cy - s // 3)])],
                  False, col, th + 1, aa)  # collapse chevron


def keyboard_skin(width: int = KEYBOARD_SIZE[0], height: int = KEYBOARD_SIZE[1]) -> tuple[np.ndarray, list[dict]]:
    """The keyboard skin reference, uint8 [H, W, 3], and its label boxes (core.glyph format, output pixels)."""
    layout = keyboard_layout()
    sx, sy = width / layout["canvas"][0], height / layout["canvas"][1]

    def size_of(slot):
        r = next(r for r in layout["regions"] if r["slot"] == slot)
        return max(1, round(r["rect"][2] * sx)), max(1, round(r["rect"][3] * sy))

    elements = {
        "background": _keyboard_art(width, height),
        "function_bar": np.zeros((8, 8, 4), np.uint8),  # transparent: the artwork shows through
        "key": _key_cap(*size_of("key"), "#f2f8ff", 0.16, 0.55, 0.16),
        "function_key": _key_cap(*size_of("function_key"), "#0a1a33", 0.42, 0.45, 0.16),
        "wide_function_key": _key_cap(*size_of("wide_function_key"), "#0a1a33", 0.42, 0.45, 0.16),
        "space_key": _key_cap(*size_of("space_key"), "#f2f8ff", 0.20, 0.55, 0.16),
        "send_key": _key_cap(*size_of("send_key"), "#ff8a5c", 0.92, 0.6, 0.16),
    }
    img, _mask, labels = compose_layout(layout, width, height, elements)
    img = img.copy()
    bar = next(r for r in layout["regions"] if r["slot"] == "function_bar")["rect"]
    _toolbar_icons(img, (round(bar[0] * sx), round(bar[1] * sy), round(bar[2] * sx), round(bar[3] * sy)))
    for b in labels:
        b["font"] = FONT
    glyphs, _gmask, _info = render_glyphs(labels, width, height, font=FONT, dirs=font_dirs(),
                                          padding=0.04)
    # plain white legends: a drop shadow looked nicer but cost OCR confidence once quantised to 256 colours
    out = _over(img.astype(np.float32), (255, 255, 255), glyphs.astype(np.float32) / 255)
    return _to_u8(out), labels


# ---------------------------------------------------------------------------------------------
# style07: flat-colour posterised landscape prints

STYLE07_PALETTE = {"night": "#1d2545", "dusk": "#3b3a6e", "plum": "#7a4b80", "rose": "#c0607a",
                   "coral": "#ec7f6a", "peach": "#f6b27f", "cream": "#fbe6bd", "teal": "#2b5d6e",
                   "pine": "#1e3d45", "deep": "#142330", "moss": "#4c7a5c"}


def _ridge(w: int, rng, base: float, amp: float, scale: float, sharp: float = 0.0) -> np.ndarray:
    """A skyline y(x) (float [w]): smooth 1-D noise; sharp > 0 folds it into mountain peaks."""
    n = np.zeros(w, np.float32)
    a, total = 1.0, 0.0
    for _ in range(4):
        k = max(2, int(w / scale) + 2)
        grid = rng.uniform(-1, 1, (1, k)).astype(np.float32)
        n += a * cv2.resize(grid, (int(k * scale), 1), interpolation=cv2.INTER_CUBIC)[0, :w]
        total, a, scale = total + a, a * 0.5, scale / 2
    n /= total
    if sharp:
        n = (1 - sharp) * n + sharp * (1 - 2 * np.abs(n))
    return base - amp * n


def _fill_below(img: np.ndarray, ys: np.ndarray, color: str, ss: int = 4) -> None:
    """Fill everything below the skyline ys(x) with a flat colour (anti-aliased edge), in place."""
    h, w = img.shape[:2]
    yy = (np.arange(h * ss, dtype=np.float32)[:, None] + 0.5) / ss
    below = (yy >= np.interp(np.arange(w * ss) / ss, np.arange(w), ys)[None, :]).astype(np.float32)
    a = cv2.resize(below, (w, h), interpolation=cv2.INTER_AREA)
    img[:] = _over(img, _rgb(STYLE07_PALETTE[color]), a)


def _disc(img, cx, cy, r, color, ss: int = 4) -> None:
    h, w = img.shape[:2]
    a = _aa_mask(h, w, lambda m, s: cv2.circle(m, (int(cx * s), int(cy * s)), int(r * s), 255, -1), ss)
    img[:] = _over(img, _rgb(STYLE07_PALETTE[color]), a)


def _banded_sky(h: int, w: int, horizon: float, bands: list[str]) -> np.ndarray:
    """Posterised sky: the gradient from top to horizon quantised into flat bands (gently curved)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (yy + 0.04 * h * np.cos((xx / w - 0.5) * np.pi)) / horizon
    idx = np.clip((t * len(bands)).astype(int), 0, len(bands) - 1)
    pal = np.stack([_rgb(STYLE07_PALETTE[b]) for b in bands])
    return pal[idx]


def _print_frame(img: np.ndarray, margin: int) -> np.ndarray:
    """The cream paper margin every style07 print has."""
    out = img.copy()
    out[:margin], out[-margin:], out[:, :margin], out[:, -margin:] = (_rgb(STYLE07_PALETTE["cream"]),) * 4
    return out


def _pine(img, x, base, height, color) -> None:
    h, w = img.shape[:2]
    tiers = 4

    def draw(m, s):
        for k in range(tiers):
            top = base - height * (1 - k / tiers) - 0.05 * height
            bot = base - height * (1 - (k + 1.6) / tiers) * 0.9
            half = height * (0.12 + 0.07 * k)
            cv2.fillPoly(m, [np.int32([(x * s, top * s), ((x - half) * s, bot * s), ((x + half) * s, bot * s)])], 255)
        cv2.rectangle(m, (int((x - height * 0.03) * s), int((base - height * 0.15) * s)),
                      (int((x + height * 0.03) * s), int(base * s)), 255, -1)
    img[:] = _over(img, _rgb(STYLE07_PALETTE[color]), _aa_mask(h, w, draw))


def style07_ref(index: int, size: int = STYLE_SIZE) -> np.ndarray:
    """One of the two style07 references, uint8 [size, size, 3]: 1 = mountain lake at dusk, 2 = hills at moonrise."""
    h = w = size
    rng = np.random.default_rng(700 + index)
    sky_bands = ["night", "dusk", "plum", "rose", "coral", "peach"]
    if index == 1:
        horizon = 0.66 * h
        img = _banded_sky(h, w, horizon, sky_bands)
        _disc(img, 0.62 * w, 0.50 * h, 0.16 * w, "peach")
        _disc(img, 0.62 * w, 0.50 * h, 0.11 * w, "cream")
        for color, base, amp, scale, sharp in (("rose", 0.52, 0.12, 140, 0.7), ("plum", 0.58, 0.14, 110, 0.8),
                                               ("dusk", 0.64, 0.10, 80, 0.6)):
            _fill_below(img, _ridge(w, rng, base * h, amp * h, scale, sharp), color)
        img[int(horizon):] = _rgb(STYLE07_PALETTE["teal"])  # lake
        for k in range(9):  # sun reflection: flat dashes
            y = horizon + 6 + k * 0.022 * h
            half = (0.10 - 0.008 * k) * w
            x0 = 0.62 * w - half + rng.uniform(-6, 6)
            cv2.rectangle(img, (int(x0), int(y)), (int(x0 + 2 * half), int(y + 0.008 * h)),
                          _rgb(STYLE07_PALETTE["peach" if k % 2 else "cream"]).tolist(), -1)
        shore = _ridge(w, rng, 0.86 * h, 0.05 * h, 160)
        shore[: w // 3] -= np.linspace(0.12 * h, 0, w // 3)
        _fill_below(img, shore, "pine")
        for x, hh in ((0.07, 0.30), (0.15, 0.24), (0.22, 0.19), (0.86, 0.22), (0.93, 0.28)):
            _pine(img, x * w, np.interp(x * w, np.arange(w), shore) + 4, hh * h, "deep")
    else:
        horizon = 0.60 * h
        img = _banded_sky(h, w, horizon, sky_bands[:5] + ["coral"])
        _disc(img, 0.26 * w, 0.24 * h, 0.10 * w, "plum")
        _disc(img, 0.26 * w, 0.24 * h, 0.065 * w, "cream")
        for k in range(14):  # stars
            x, y = rng.uniform(0.05, 0.95) * w, rng.uniform(0.04, 0.3) * h
            _disc(img, x, y, rng.uniform(1.2, 2.4), "cream")
        for color, base, amp, scale in (("plum", 0.56, 0.06, 200), ("teal", 0.66, 0.08, 170),
                                        ("moss", 0.77, 0.07, 150), ("pine", 0.90, 0.06, 130)):
            _fill_below(img, _ridge(w, rng, base * h, amp * h, scale), color)
        path_mask = _aa_mask(h, w, lambda m, s: cv2.fillPoly(m, [np.int32(
            [(x * s, y * s) for x, y in [(0.46 * w, 0.66 * h), (0.50 * w, 0.66 * h), (0.40 * w, 0.76 * h),
                                          (0.62 * w, 0.90 * h), (0.70 * w, 1.0 * h), (0.42 * w, 1.0 * h),
                                          (0.48 * w, 0.90 * h), (0.30 * w, 0.77 * h)]])], 255))
        img[:] = _over(img, _rgb(STYLE07_PALETTE["peach"]), path_mask)
        for x, y, r in ((0.14, 0.70, 0.07), (0.22, 0.73, 0.05), (0.80, 0.68, 0.06), (0.88, 0.72, 0.08)):
            cv2.rectangle(img, (int((x - 0.008) * w), int(y * h)), (int((x + 0.008) * w), int((y + r * 1.6) * h)),
                          _rgb(STYLE07_PALETTE["deep"]).tolist(), -1)
            _disc(img, x * w, y * h, r * w, "deep")
        for k in range(5):  # birds
            bx, by = (0.55 + 0.06 * k) * w, (0.18 + 0.03 * (k % 3)) * h
            cv2.polylines(img, [np.int32([(bx - 7, by - 3), (bx, by + 2), (bx + 7, by - 3)])], False,
                          _rgb(STYLE07_PALETTE["night"]).tolist(), 2, cv2.LINE_AA)
    return _to_u8(_print_frame(img, max(6, size // 40)))


# ---------------------------------------------------------------------------------------------
# product photo on a busy background

LIGHT = np.array([-0.55, -0.45, 0.70], np.float32) / np.linalg.norm([-0.55, -0.45, 0.70])  # upper left, front
HALF = (LIGHT + np.array([0, 0, 1], np.float32)) / np.linalg.norm(LIGHT + np.array([0, 0, 1], np.float32))


def _cylinder_shade(h, w, cx, rx_at_y, albedo, *, gloss: float, shininess: float = 60.0,
                    ambient: float = 0.28) -> np.ndarray:
    """Lambert + Blinn-Phong shading of an upright cylinder (radius rx_at_y(y) around column cx), float [H,W,3].

    albedo: a '#rrggbb' colour or a float [H, W, 3] colour map (a print on the surface)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = np.clip((xx - cx) / np.maximum(rx_at_y(yy), 1), -1, 1)
    nz = np.sqrt(1 - u ** 2)
    diffuse = np.clip(u * LIGHT[0] + nz * LIGHT[2], 0, 1)
    spec = np.clip(u * HALF[0] + nz * HALF[2], 0, 1) ** shininess
    rim = np.clip(u - 0.75, 0, 1) * 1.2  # soft bounce light on the right edge
    base = _rgb(albedo) if isinstance(albedo, str) else albedo
    col = base * (ambient + (1 - ambient) * diffuse)[..., None] + 40 * rim[..., None]
    return col + 255 * gloss * spec[..., None]


def _wood_table(h, w, top: int, rng) -> np.ndarray:
    """Oak planks running left-right, wider towards the camera, with grain, knots and seams."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    depth = np.clip((yy - top) / max(1, h - top), 0, 1)
    v = depth ** 0.8 * 6.0  # plank coordinate (6 planks, perspective-compressed at the back)
    plank = np.floor(v)
    frac = v - plank
    warp = 10 * _fbm((h, w), 180, rng, 3)
    grain = np.sin((yy * (1.2 + 1.5 * depth) + warp * 3 + plank * 37) * 0.35 + 3 * _fbm((h, w), 90, rng, 2))
    tone = (np.sin(plank * 12.9898) * 43758.5453) % 1  # per-plank tone, deterministic
    base = _rgb("#b98352") * (0.82 + 0.22 * tone)[..., None]
    img = base * (1 - 0.10 * (grain[..., None] > 0.55)) * (1 - 0.05 * grain[..., None])
    seam = np.clip(1 - np.minimum(frac, 1 - frac) * (60 / (1 + 4 * depth)), 0, 1)
    img = _over(img, _rgb("#4a2f1b"), 0.75 * seam)
    for k in range(3):  # knots
        kx, ky = rng.uniform(0.1, 0.9) * w, top + rng.uniform(0.3, 0.95) * (h - top)
        d = np.sqrt(((xx - kx) / 18) ** 2 + ((yy - ky) / 7) ** 2)
        img = _over(img, _rgb("#6b4424"), np.clip(1.2 - d, 0, 1) * 0.8)
        img = _over(img, _rgb("#5a3a20"), (np.abs(np.sin(d * 3.0)) > 0.8) * (d < 3) * 0.35)
    return img * (0.78 + 0.32 * depth)[..., None]  # light falls off towards the back


def _fabric_wall(h, w, rng) -> np.ndarray:
    """A patterned fabric backdrop: ikat-style diamond lattice with florets, hanging in soft folds."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    fold = np.sin(xx / w * 2 * np.pi * 3.5 + 0.8) + 0.4 * np.sin(xx / w * 2 * np.pi * 8.3)
    xs = xx + 6 * fold  # the pattern follows the folds
    cell = 64.0
    u, v = (xs % cell) / cell - 0.5, (yy % cell) / cell - 0.5
    diamond = np.abs(u) + np.abs(v)
    img = np.broadcast_to(_rgb("#c9973c"), (h, w, 3)).astype(np.float32)  # mustard ground
    img = _over(img, _rgb("#1f5b63"), ((diamond > 0.40) & (diamond < 0.47)).astype(np.float32))  # lattice
    img = _over(img, _rgb("#9c3b2f"), (diamond < 0.16).astype(np.float32))  # floret
    img = _over(img, _rgb("#f1dcae"), (diamond < 0.06).astype(np.float32))
    ci = (np.floor(xs / cell) + np.floor(yy / cell)) % 2
    img = _over(img, _rgb("#f1dcae"), ((np.abs(u) < 0.03) | (np.abs(v) < 0.03)) * (diamond > 0.47) * ci * 0.8)
    shade = 0.80 + 0.14 * fold / 1.4
    return img * shade[..., None]


def _books(img, x0, y_base, rng) -> None:
    """A stack of three books (front face, spine stripe, lighter top), drawn in place."""
    h, w = img.shape[:2]
    specs = [(250, 46, "#24365c"), (226, 38, "#7a2e34"), (238, 34, "#5f6b3c")]
    y = y_base
    for bw, bh, col in specs:
        x = x0 + rng.uniform(-10, 10)
        depth = 28
        front = np.int32([(x, y - bh), (x + bw, y - bh), (x + bw, y), (x, y)])
        top = np.int32([(x, y - bh), (x + depth, y - bh - depth * 0.55), (x + bw + depth, y - bh - depth * 0.55),
                        (x + bw, y - bh)])
        side = np.int32([(x + bw, y - bh), (x + bw + depth, y - bh - depth * 0.55), (x + bw + depth, y - depth * 0.55),
                         (x + bw, y)])
        c = _rgb(col)
        cv2.fillPoly(img, [front], (c * 0.85).tolist(), cv2.LINE_AA)
        cv2.fillPoly(img, [top], np.minimum(c * 1.25 + 20, 255).tolist(), cv2.LINE_AA)
        cv2.fillPoly(img, [side], _rgb("#efe3c8").tolist(), cv2.LINE_AA)  # pages
        for k in range(1, 6):
            yk = y - bh + k * bh / 6
            cv2.line(img, (int(x + bw + 2), int(yk - 2)), (int(x + bw + depth - 2), int(yk - depth * 0.55 + 2)),
                     _rgb("#cdbf9f").tolist(), 1, cv2.LINE_AA)
        cv2.rectangle(img, (int(x + 18), int(y - bh + 8)), (int(x + 30), int(y - 8)), _rgb("#d9b45a").tolist(), -1,
                      cv2.LINE_AA)  # spine band
        y -= bh


def _plant(img, cx, y_base) -> None:
    """A terracotta pot with a leafy plant, drawn in place."""
    h, w = img.shape[:2]
    top, rtop, rbot = y_base - 130, 72.0, 54.0

    def rx(yy):
        return rbot + (rtop - rbot) * np.clip((y_base - yy) / (y_base - top), 0, 1)

    shade = _cylinder_shade(h, w, cx, rx, "#c4683f", gloss=0.05, shininess=12)
    mask = _aa_mask(h, w, lambda m, s: cv2.fillPoly(m, [np.int32([((cx - rtop) * s, top * s), ((cx + rtop) * s, top * s),
                                                                  ((cx + rbot) * s, y_base * s),
                                                                  ((cx - rbot) * s, y_base * s)])], 255))
    img[:] = _over(img, shade, mask)
    cv2.ellipse(img, (int(cx), int(top)), (int(rtop), 14), 0, 0, 360, _rgb("#3d2a1e").tolist(), -1, cv2.LINE_AA)
    cv2.ellipse(img, (int(cx), int(top)), (int(rtop), 14), 0, 0, 360, _rgb("#d98b62").tolist(), 5, cv2.LINE_AA)
    leaves = [(-70, -150, 125, -35), (-30, -190, 135, -75), (20, -200, 130, -100), (60, -160, 120, -140),
              (-90, -95, 100, -15), (85, -105, 105, -165), (0, -140, 110, -88), (-50, -120, 115, -55),
              (40, -125, 112, -118)]
    for k, (dx, dy, length, ang) in enumerate(leaves):
        lx, ly = cx + dx * 0.55, top + dy * 0.55
        col = _rgb("#3f7d4a" if k % 2 else "#5a9a55")
        center = (int(lx), int(ly))
        axes = (int(length * 0.5), int(length * 0.16))
        cv2.ellipse(img, center, axes, ang, 0, 360, (col * 0.9).tolist(), -1, cv2.LINE_AA)
        cv2.ellipse(img, center, (axes[0] - 4, axes[1] - 5), ang, 180, 360, np.minimum(col * 1.15, 255).tolist(), -1,
                    cv2.LINE_AA)
        ca, sa = np.cos(np.radians(ang)), np.sin(np.radians(ang))
        cv2.line(img, (int(lx - ca * axes[0] * 0.9), int(ly - sa * axes[0] * 0.9)),
                 (int(lx + ca * axes[0] * 0.9), int(ly + sa * axes[0] * 0.9)), _rgb("#2c5a35").tolist(), 2, cv2.LINE_AA)


def _pencil(img, p0, p1, width: float, body: str) -> None:
    """A hexagonal pencil from p0 (eraser end) to p1 (tip), drawn in place."""
    p0, p1 = np.float32(p0), np.float32(p1)
    d = (p1 - p0) / np.linalg.norm(p1 - p0)
    n = np.float32([-d[1], d[0]])
    tip_len, ferrule, eraser = 34, 16, 14

    def quad(a, b, off0, off1):
        return np.int32(np.round([a + n * off0, b + n * off0, b + n * off1, a + n * off1]))

    a0, a1 = p0 + d * (eraser + ferrule), p1 - d * tip_len
    c = _rgb(body)
    for off0, off1, k in ((-width / 2, -width / 6, 1.1), (-width / 6, width / 6, 0.95), (width / 6, width / 2, 0.75)):
        cv2.fillPoly(img, [quad(a0, a1, off0, off1)], np.minimum(c * k, 255).tolist(), cv2.LINE_AA)
    cv2.fillPoly(img, [quad(p0 + d * eraser, a0, -width / 2, width / 2)], _rgb("#b8b8bc").tolist(), cv2.LINE_AA)
    cv2.fillPoly(img, [quad(p0, p0 + d * eraser, -width / 2, width / 2)], _rgb("#e68fa0").tolist(), cv2.LINE_AA)
    cone = np.int32(np.round([a1 + n * width / 2, p1, a1 - n * width / 2]))
    cv2.fillPoly(img, [cone], _rgb("#e6c49a").tolist(), cv2.LINE_AA)
    lead = np.int32(np.round([p1 - d * 11 + n * 3.2, p1, p1 - d * 11 - n * 3.2]))
    cv2.fillPoly(img, [lead], _rgb("#3a3a3a").tolist(), cv2.LINE_AA)


def _notebook(img, center, size, angle) -> None:
    """A ruled notebook lying on the table (rotated), drawn in place."""
    rect = cv2.boxPoints((center, size, angle)).astype(np.float32)
    cv2.fillPoly(img, [np.int32(rect + [6, 8])], (90, 60, 40), cv2.LINE_AA)  # its shadow
    cv2.fillPoly(img, [np.int32(rect)], _rgb("#f4ecd8").tolist(), cv2.LINE_AA)
    tl, tr, br, bl = rect[np.argsort(rect[:, 1])[:2]][np.argsort(rect[np.argsort(rect[:, 1])[:2]][:, 0])].tolist() + \
        rect[np.argsort(rect[:, 1])[2:]][np.argsort(-rect[np.argsort(rect[:, 1])[2:]][:, 0])].tolist()
    tl, tr, br, bl = map(np.float32, (tl, tr, br, bl))
    for k in range(1, 12):
        t = k / 12
        a, b = tl + (bl - tl) * t, tr + (br - tr) * t
        cv2.line(img, tuple(np.int32(a + (b - a) * 0.04)), tuple(np.int32(b - (b - a) * 0.02)),
                 _rgb("#9db4d6").tolist(), 1, cv2.LINE_AA)
    a, b = tl + (tr - tl) * 0.14, bl + (br - bl) * 0.14
    cv2.line(img, tuple(np.int32(a)), tuple(np.int32(b)), _rgb("#e07a7a").tolist(), 1, cv2.LINE_AA)


def product_scene(width: int = PRODUCT_SIZE[0], height: int = PRODUCT_SIZE[1]) -> tuple[np.ndarray, np.ndarray]:
    """The remove_background example: (image uint8 [H, W, 3], mug mask float32 [H, W] in 0..1, anti-aliased).

    A glossy cobalt ceramic mug (cylinder shading, specular highlight, cream glaze inside, handle with a hole
    the background shows through) with its contact and cast shadows, on an oak table in front of a patterned
    fabric, between a potted plant, a stack of books, pencils and a notebook.
    """
    h, w = height, width
    rng = np.random.default_rng(2024)
    table_top = int(0.43 * h)
    img = _fabric_wall(h, w, rng)
    table = _wood_table(h, w, table_top, rng)
    img[table_top:] = table[table_top:]
    img = np.ascontiguousarray(np.clip(img, 0, 255), np.float32)
    img[table_top - 4:table_top + 3] *= 0.55  # the table's back edge
    _plant(img, 0.15 * w, table_top + 0.10 * h)
    _books(img, 0.62 * w, table_top + 0.13 * h, rng)
    _notebook(img, (0.85 * w, 0.90 * h), (0.34 * w, 0.24 * w), -12)
    _pencil(img, (0.04 * w, 0.95 * h), (0.31 * w, 0.84 * h), 13, "#e9b93a")
    _pencil(img, (0.10 * w, 1.00 * h), (0.30 * w, 0.90 * h), 13, "#3d7fc4")

    # the mug
    cx, top, bottom, rx = 0.47 * w, 0.40 * h, 0.79 * h, 0.14 * w
    ry = 0.26 * rx
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    shadow = np.exp(-(((xx - cx - 0.55 * rx) / (1.35 * rx)) ** 2 + ((yy - bottom + 0.35 * ry) / (1.1 * ry)) ** 2))
    shadow += 0.8 * np.exp(-(((xx - cx) / (1.02 * rx)) ** 2 + ((yy - bottom - 0.1 * ry) / (0.55 * ry)) ** 2))
    img *= (1 - 0.6 * np.clip(shadow, 0, 1))[..., None]

    def body(m, s):
        cv2.rectangle(m, (int((cx - rx) * s), int(top * s)), (int((cx + rx) * s), int(bottom * s)), 255, -1)
        cv2.ellipse(m, (int(cx * s), int(bottom * s)), (int(rx * s), int(ry * s)), 0, 0, 180, 255, -1)
        cv2.ellipse(m, (int(cx * s), int(top * s)), (int(rx * s), int(ry * s)), 0, 0, 360, 255, -1)

    def handle(m, s):
        cv2.ellipse(m, (int((cx + rx) * s), int((top + 0.47 * (bottom - top)) * s)),
                    (int(0.52 * rx * s), int(0.27 * (bottom - top) * s)), 0, -90, 90, 255, int(0.19 * rx * s))

    body_a = _aa_mask(h, w, body)
    handle_a = np.clip(_aa_mask(h, w, handle) - body_a, 0, 1)
    # a cream emblem printed on the glaze (a sun over mountains in a ring), squeezed as the surface turns away
    ex, ey, er = cx - 0.18 * rx, top + 0.45 * (bottom - top), 0.38 * rx

    def emblem(m, s):
        c = (int(ex * s), int(ey * s))
        cv2.ellipse(m, c, (int(er * 0.97 * s), int(er * s)), 0, 0, 360, 255, int(0.09 * er * s))
        cv2.circle(m, (int((ex + 0.18 * er) * s), int((ey - 0.22 * er) * s)), int(0.2 * er * s), 255, -1)
        peaks = [(-0.62, 0.5), (-0.2, -0.12), (0.05, 0.18), (0.32, -0.02), (0.66, 0.5)]
        cv2.fillPoly(m, [np.int32([((ex + dx * er) * s, (ey + dy * er) * s) for dx, dy in peaks])], 255)
    print_a = _aa_mask(h, w, emblem)
    albedo = _over(np.broadcast_to(_rgb("#2c58b0"), (h, w, 3)), _rgb("#f3e6c8"), print_a)
    mug = _cylinder_shade(h, w, cx, lambda y: np.full_like(y, rx), albedo, gloss=0.85)
    mug *= (1 - 0.25 * np.clip((yy - top) / (bottom - top), 0, 1) ** 3)[..., None]  # darker towards the table
    bounce = np.clip((yy - bottom + 1.5 * ry) / (2.5 * ry), 0, 1) ** 2
    mug += _rgb("#7a4a2a") * 0.12 * bounce[..., None]  # warm light bounced off the table
    # handle: a tube, lit from the upper left
    hm = (_aa_mask(h, w, handle) > 0.5).astype(np.uint8)
    tube = cv2.distanceTransform(hm, cv2.DIST_L2, 5) / max(1.0, 0.095 * rx)
    tube = np.sqrt(np.clip(1 - (1 - np.clip(tube, 0, 1)) ** 2, 0, 1))
    hy = np.clip((yy - top) / (bottom - top), 0, 1)
    handle_col = _rgb("#2c58b0") * (0.25 + 0.75 * tube * (1.05 - 0.6 * hy))[..., None]
    handle_col += 255 * 0.55 * (tube > 0.97)[..., None] * (hy < 0.45)[..., None]
    img = _over(img, handle_col, handle_a)
    img = _over(img, mug, body_a)
    # opening: cream glaze inside (darker at the front wall's shadow), lip highlight
    inner = _aa_mask(h, w, lambda m, s: cv2.ellipse(m, (int(cx * s), int(top * s)),
                                                    (int((rx - 7) * s), int((ry - 4) * s)), 0, 0, 360, 255, -1))
    glaze = _rgb("#efe4cc") * (0.55 + 0.45 * np.clip((top - yy) / ry + 0.6, 0, 1))[..., None]
    front_wall = np.clip(1 - np.sqrt(((xx - cx) / rx) ** 2 + ((yy - top + 0.35 * ry) / (0.95 * ry)) ** 2), 0, 1)
    glaze *= (1 - 0.35 * (front_wall < 0.02) * (yy > top - 0.2 * ry))[..., None]  # the rim's shadow inside
    img = _over(img, glaze, inner)
    lip = _aa_mask(h, w, lambda m, s: cv2.ellipse(m, (int(cx * s), int(top * s)), (int((rx - 3) * s), int((ry - 1.5) * s)),
                                                  0, 190, 330, 255, int(2.5 * s)))
    img = _over(img, (255, 255, 255), 0.7 * lip)
    # light vignette, as a lens would
    vig = 1 - 0.25 * (((xx - 0.45 * w) / w) ** 2 + ((yy - 0.45 * h) / h) ** 2) * 2.2
    img = img * vig[..., None]
    mask = np.clip(body_a + handle_a, 0, 1).astype(np.float32)
    return _to_u8(img), mask


# ---------------------------------------------------------------------------------------------

def save_png(path: str | Path, rgb: np.ndarray, *, palette: bool = False) -> int:
    """Write an RGB uint8 image as PNG atomically; palette=True quantises to 256 colours (a flat-colour
    image at a third of the size). Returns the file size in bytes."""
    im = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    if palette:
        im = im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG", optimize=True)
    return Path(path).stat().st_size


def build_all(out_dir: str | Path = HERE) -> dict[str, int]:
    """Write every example input into out_dir; returns {file name: size in bytes}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    keyboard, _labels = keyboard_skin()
    sizes["keyboard_skin_reference.png"] = save_png(out / "keyboard_skin_reference.png", keyboard, palette=True)
    for i in (1, 2):
        sizes[f"style07_ref_{i}.png"] = save_png(out / f"style07_ref_{i}.png", style07_ref(i))
    product, _mask = product_scene()
    sizes["product_on_busy_background.png"] = save_png(out / "product_on_busy_background.png", product)
    return sizes


if __name__ == "__main__":
    for name, size in build_all(sys.argv[1] if len(sys.argv) > 1 else HERE).items():
        print(f"{name}: {size / 1024:.0f} KiB")
