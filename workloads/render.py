"""Offscreen drawings of one environment instance with Pillow (for play.py --video)."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

SIZE = (320, 240)


def cartpole_frame(state, cfg: dict) -> Image.Image:
    theta, _, x, _ = (float(v) for v in state)
    img = Image.new("RGB", SIZE, "white")
    d = ImageDraw.Draw(img)
    w, h = SIZE
    scale = w / (2 * cfg["max_cart_position"] + 1.0)
    ground = int(h * 0.7)
    d.line([(0, ground), (w, ground)], fill="gray", width=2)
    cx = w / 2 + x * scale
    d.rectangle([cx - 20, ground - 12, cx + 20, ground + 12], fill=(77, 128, 179))
    length = 2 * cfg["pole_half_length"] * scale
    tip = (cx + length * math.sin(theta), ground - length * math.cos(theta))
    d.line([(cx, ground), tip], fill=(204, 102, 51), width=6)
    return img


def reacher_frame(state, cfg: dict) -> Image.Image:
    q1, q2, _, _, tx, ty = (float(v) for v in state)
    l1, l2 = cfg["link_lengths"]
    img = Image.new("RGB", SIZE, "white")
    d = ImageDraw.Draw(img)
    w, h = SIZE
    scale = 0.45 * h / (l1 + l2)
    o = (w / 2, h / 2)

    def px(x, y):
        return (o[0] + x * scale, o[1] - y * scale)

    elbow = (l1 * math.cos(q1), l1 * math.sin(q1))
    tip = (elbow[0] + l2 * math.cos(q1 + q2), elbow[1] + l2 * math.sin(q1 + q2))
    r = cfg["success_radius"] * scale + 2
    t = px(tx, ty)
    d.ellipse([t[0] - r, t[1] - r, t[0] + r, t[1] + r], fill=(220, 60, 60))
    d.line([px(0, 0), px(*elbow), px(*tip)], fill=(60, 90, 160), width=5)
    return img


def frame(env, index: int = 0, step: int = 0) -> Image.Image:
    draw = {"CartpoleEnv": cartpole_frame, "ReacherEnv": reacher_frame}[env.cfg["class_name"]]
    img = draw(env.state[index].tolist(), env.cfg)
    # The clock also keeps GIF encoders from merging still frames of a well-balanced pole.
    ImageDraw.Draw(img).text((6, 6), f"t = {step * env.cfg['dt']:.2f} s", fill="black")
    return img


def save_gif(frames: list[Image.Image], path: str, dt: float) -> None:
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=max(int(dt * 1000), 20), loop=0)
