"""A synthetic paired camera: a procedural street scene with people and cars moving across it.

Both the IR and the visible source render the same deterministic world at their own frame times,
so two sources built from the same options form a registered pair that, like real cameras, can run
at different rates (e.g. a 9 Hz thermal core beside a 30 Hz colour camera). Options (``--ir-opts``):
``fps`` (15), ``seed`` (0), ``scene=HxW`` world size (240x320), ``size=HxW`` output size (a smaller IR
sensor), ``condition`` day/night/random, ``movers`` (3), ``frames`` (end after N; default endless),
``bits=16`` (IR as 14-bit counts in uint16), ``jitter_ms`` (media-time jitter), and for robustness
demos ``fail_at=N`` (disconnect at frame N) with ``down_s`` (stay unplugged that long).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np

from tdfusion_edge.data.synthetic import make_scene
from tdfusion_edge.validation.numbers import NumberError, option_number
from tdfusion_edge.validation.numbers import parse_hw as _parse_hw

from .sources import FrameSource, SourceError, SourceSpec

_NOISE_BANK = 8
MAX_SIDE = 4096      # world and output size per side
MAX_MOVERS = 50
CONDITIONS = ("day", "night", "random")


@dataclass
class _Sprite:
    ir: np.ndarray      # uint8 h×w
    vis: np.ndarray     # uint8 h×w×3
    mask: np.ndarray    # bool h×w
    cls: int            # 0 person, 1 car
    foot: int           # bottom row in the scene
    x0: float           # left edge at t = 0
    speed: float        # pixels per second (sign = direction)


class SyntheticWorld:
    """Background + static objects from ``make_scene(seed)``, and objects from other scenes moving over it."""

    def __init__(self, seed: int = 0, height: int = 240, width: int = 320, condition: str = "random",
                 movers: int = 3):
        base = make_scene(seed, height, width, condition)
        self.h, self.w = height, width
        self.condition = base.condition
        self.base_ir = base.ir
        self.base_vis = base.vis
        self.base_boxes = base.boxes
        rng = np.random.default_rng(seed + 7919)
        self.sprites = self._collect_sprites(seed, movers, rng)
        # Sensor noise changes every frame; a small bank of precomputed fields keeps rendering cheap.
        self.ir_noise = [rng.normal(0, 1.5, (height, width)).astype(np.float32) for _ in range(_NOISE_BANK)]
        self.vis_noise = [rng.normal(0, 2.0, (height, width, 1)).astype(np.float32) for _ in range(_NOISE_BANK)]

    def _collect_sprites(self, seed: int, count: int, rng: np.random.Generator) -> list[_Sprite]:
        sprites: list[_Sprite] = []
        k = 0
        while len(sprites) < count and k < 4 * count + 4:
            scene = make_scene(seed + 1000 + k, self.h, self.w, self.condition)
            k += 1
            for cls, x1, y1, x2, y2 in scene.boxes.astype(int):
                region = scene.mask[y1:y2, x1:x2] == cls + 1
                if region.sum() < 30 or len(sprites) >= count:
                    continue
                speed = rng.uniform(0.08, 0.2) * self.w * (0.4 if cls == 0 else 1.0) * rng.choice((-1.0, 1.0))
                sprites.append(_Sprite(scene.ir[y1:y2, x1:x2].copy(), scene.vis[y1:y2, x1:x2].copy(), region,
                                       int(cls), int(y2), float(x1), float(speed)))
        sprites.sort(key=lambda s: s.foot)  # far (higher in the frame) first, near ones drawn over them
        return sprites

    def _placements(self, t: float):
        for s in self.sprites:
            h, w = s.mask.shape
            span = self.w + w
            x = int(round((s.x0 + s.speed * t) % span)) - w  # wraps around: leaves one side, enters the other
            yield s, x, s.foot - h

    def render(self, t: float, role: str) -> np.ndarray:
        """The IR (uint8 H×W) or visible (uint8 H×W×3 BGR) image of the world at time ``t`` seconds."""
        img = (self.base_ir if role == "ir" else self.base_vis).copy()
        for s, x, y in self._placements(t):
            xa, xb = max(0, x), min(self.w, x + s.mask.shape[1])
            if xb <= xa:
                continue
            m = s.mask[:, xa - x:xb - x]
            patch = (s.ir if role == "ir" else s.vis)[:, xa - x:xb - x]
            region = img[y:y + m.shape[0], xa:xb]
            region[m] = patch[m]
        frame_no = int(t * 1000) % _NOISE_BANK
        noise = self.ir_noise[frame_no] if role == "ir" else self.vis_noise[frame_no]
        return np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)

    def boxes(self, t: float) -> np.ndarray:
        """Ground-truth boxes (N×5: class, x1, y1, x2, y2) of static and moving objects at time ``t``."""
        out = [self.base_boxes]
        for s, x, y in self._placements(t):
            x1, x2 = max(0, x), min(self.w, x + s.mask.shape[1])
            if x2 > x1:
                out.append(np.array([[s.cls, x1, y, x2, y + s.mask.shape[0]]], np.float32))
        return np.concatenate(out, axis=0)


def parse_hw(text: str, what: str = "size") -> tuple[int, int]:
    """``"240x320"`` → (240, 320) (height × width), each side 16..4096."""
    try:
        return _parse_hw(text, what, min_side=16, max_side=MAX_SIDE)
    except NumberError as exc:
        raise SourceError(str(exc)) from None


def _option(spec: SourceSpec, role: str, key: str, default, **bounds):
    """A checked numeric ``k=v`` option of a synthetic source (finite, in bounds) or ``default``."""
    try:
        return option_number(spec.options, key, default, where=f"{role} synthetic option", **bounds)
    except NumberError as exc:
        raise SourceError(str(exc)) from None


class SyntheticSource(FrameSource):
    """One camera of the synthetic pair; camera-like (reconnects), replayed at ``fps`` in real time."""

    reconnects = True
    paced = True

    def __init__(self, spec: SourceSpec, role: str):
        super().__init__(spec, role)
        self.nominal_fps = _option(spec, role, "fps", 15.0, minimum=0.0, maximum=1000.0, min_inclusive=False)
        self.scene_hw = parse_hw(spec.options.get("scene", "240x320"), f"{role} synthetic option scene")
        self.size_hw = (parse_hw(spec.options["size"], f"{role} synthetic option size") if "size" in spec.options
                        else self.scene_hw)
        self.frames = _option(spec, role, "frames", 0, integer=True, minimum=0)
        bits = _option(spec, role, "bits", 8, integer=True, minimum=8, maximum=16)
        if bits not in (8, 16):
            raise SourceError(f"{role} synthetic option bits={bits}: use 8 or 16")
        self.bits16 = role == "ir" and bits == 16
        # Jitter below half a frame period keeps the stamps increasing, as a real clock's would.
        jitter_ms = _option(spec, role, "jitter_ms", 0.0, minimum=0.0, maximum=1000.0)
        self.jitter = min(jitter_ms / 1000.0, 0.45 / self.nominal_fps)
        self.fail_at = _option(spec, role, "fail_at", 0, integer=True, minimum=0)
        self.down_s = _option(spec, role, "down_s", 2.0, minimum=0.0, maximum=3600.0)
        self.seed = _option(spec, role, "seed", 0, integer=True, minimum=0, maximum=2**31 - 1)
        self.movers = _option(spec, role, "movers", 3, integer=True, minimum=0, maximum=MAX_MOVERS)
        self.condition = spec.options.get("condition", "random")
        if self.condition not in CONDITIONS:
            raise SourceError(f"{role} synthetic option condition={self.condition}: use one of {', '.join(CONDITIONS)}")
        self.world: SyntheticWorld | None = None
        self.index = 0
        self._down_until = 0.0
        self._lost_at: float | None = None
        self._failed = False
        self._rng = np.random.default_rng(self.seed + (1 if role == "ir" else 2))

    def open(self) -> None:
        if time.monotonic() < self._down_until:
            raise SourceError(f"synthetic {self.role} camera is unplugged (simulated)")
        if self._lost_at is not None:
            # The scene went on while the camera was away: resume at the current scene time.
            self.index += int(round((time.monotonic() - self._lost_at) * self.nominal_fps))
            self._lost_at = None
        if self.world is None:
            self.world = SyntheticWorld(self.seed, *self.scene_hw, condition=self.condition, movers=self.movers)

    def read(self) -> tuple[np.ndarray, float | None] | None:
        if self.world is None:
            raise SourceError(f"synthetic {self.role} source is not open")
        if self.frames and self.index >= self.frames:
            return None
        if self.fail_at and self.index == self.fail_at and not self._failed:
            self._failed = True
            self._lost_at = time.monotonic()
            self._down_until = self._lost_at + self.down_s
            self.world = None  # as if the device vanished: the reader must reopen it
            raise SourceError(f"synthetic {self.role} camera disconnected at frame {self.index} (simulated)")
        media_t = self.index / self.nominal_fps
        if self.jitter:
            media_t += float(self._rng.uniform(-self.jitter, self.jitter))
        img = self.world.render(self.index / self.nominal_fps, self.role)
        if self.size_hw != self.scene_hw:
            img = cv2.resize(img, self.size_hw[::-1], interpolation=cv2.INTER_AREA)
        if self.bits16:
            # A 14-bit radiometric core: counts around 7000 with ~40 counts per grey level.
            img = (7000 + img.astype(np.uint16) * 40).astype(np.uint16)
        self.index += 1
        return img, media_t

    def close(self) -> None:
        pass
