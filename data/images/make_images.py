"""Draw the product pictures in data/images/ (one 128x128 PNG per row of data/products.csv).

Each picture is a flat drawing made of a few shapes. It is drawn at 4x size,
scaled down for smooth edges and reduced to a small palette so that each file
stays under 8 KB. The output is the same every time the script runs.

Usage (from anywhere)::

    python data/images/make_images.py            # all products
    python data/images/make_images.py HH-001 ... # only these SKUs

Needs Pillow (a tool for making the data, not a pdbatch dependency).
"""
from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 128          # final picture size in pixels
SS = 4              # supersampling factor
COLOURS = 32        # palette size after quantizing
MAX_BYTES = 8 * 1024

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PRODUCTS = REPO / "data" / "products.csv"

INK = "#333333"     # outline colour

BACKGROUND = {
    "kitchen": "#fbecd6",
    "bathroom": "#dcf0f7",
    "cleaning": "#e3f3de",
    "living room": "#f7e3ea",
    "bedroom": "#e7e3f5",
    "office": "#eceff1",
    "garden": "#eef5d6",
}


# --------------------------------------------------------------------------
# drawing helpers; all coordinates are in the 128x128 space
# --------------------------------------------------------------------------
def _s(v):
    return v * SS


def _w(width):
    return max(1, round(width * SS))


def _pts(points):
    return [(_s(x), _s(y)) for x, y in points]


def rotate(points, angle, centre):
    """Rotate points by angle degrees (clockwise on screen) about centre."""
    a = math.radians(angle)
    cx, cy = centre
    c, s = math.cos(a), math.sin(a)
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in points]


class Pen:
    def __init__(self, draw: ImageDraw.ImageDraw):
        self.d = draw

    def rect(self, box, fill, r=0, outline=INK, width=2):
        box = [_s(v) for v in box]
        ol = outline if width else None
        if r:
            self.d.rounded_rectangle(box, radius=_s(r), fill=fill, outline=ol, width=_w(width))
        else:
            self.d.rectangle(box, fill=fill, outline=ol, width=_w(width))

    def ell(self, box, fill, outline=INK, width=2):
        self.d.ellipse([_s(v) for v in box], fill=fill,
                       outline=outline if width else None, width=_w(width))

    def ring(self, box, colour, width):
        self.d.ellipse([_s(v) for v in box], outline=colour, width=_w(width))

    def poly(self, points, fill, outline=INK, width=2):
        self.d.polygon(_pts(points), fill=fill, outline=outline if width else None, width=_w(width))

    def line(self, points, fill=INK, width=2, round_ends=True):
        pts = _pts(points)
        self.d.line(pts, fill=fill, width=_w(width), joint="curve")
        if round_ends:
            r = _w(width) / 2
            for x, y in (pts[0], pts[-1]):
                self.d.ellipse([x - r, y - r, x + r, y + r], fill=fill)

    def thick(self, points, fill, width, outline=INK, edge=2):
        """A line of the given width with an outline around it."""
        self.line(points, outline, width + 2 * edge)
        self.line(points, fill, width)

    def arc(self, box, start, end, fill=INK, width=2):
        self.d.arc([_s(v) for v in box], start, end, fill=fill, width=_w(width))

    def leaf(self, base, angle, length, width, fill="#4c9a3f"):
        """A pointed leaf growing from base in direction angle (0 = up)."""
        bx, by = base
        half = []
        for i in range(0, 13):
            t = i / 12
            half.append((bx + width / 2 * math.sin(math.pi * t), by - length * t))
        other = [(2 * bx - x, y) for x, y in reversed(half)]
        pts = rotate(half + other, angle, base)
        self.poly(pts, fill)
        self.line(rotate([(bx, by), (bx, by - length * 0.85)], angle, base), "#2f6b27", 1)


# --------------------------------------------------------------------------
# one function per product
# --------------------------------------------------------------------------
def kettle(p):
    p.arc((36, 18, 92, 74), 200, 340, INK, 7)
    p.arc((37, 19, 91, 73), 200, 340, "#555555", 5)
    p.poly([(44, 66), (44, 82), (18, 50), (24, 45)], "#aab4bd")          # spout
    p.poly([(34, 100), (94, 100), (86, 48), (42, 48)], "#c3cbd2")        # body
    p.poly([(46, 52), (52, 52), (44, 96), (40, 96)], "#eef2f5", width=0)  # shine
    p.ell((44, 38, 84, 56), "#aab4bd")                                   # lid
    p.ell((58, 30, 70, 42), "#555555")                                   # knob
    p.rect((30, 98, 98, 106), "#444444", r=3)                            # base


def mug(p):
    p.ring((72, 54, 104, 90), INK, 10)
    p.ring((74, 56, 102, 88), "#d9534f", 6)
    p.rect((32, 44, 84, 106), "#d9534f", r=8)
    p.ell((32, 38, 84, 52), "#f0a49f")
    p.ell((37, 41, 79, 50), "#6b3e26", width=0)                          # coffee
    p.rect((38, 62, 44, 96), "#eb8580", r=3, width=0)                    # shine
    for x in (44, 58, 72):
        p.arc((x - 6, 12, x + 6, 24), 90, 270, "#8a8a8a", 2)
        p.arc((x - 6, 23, x + 6, 35), 270, 90, "#8a8a8a", 2)


def cutting_board(p):
    p.rect((92, 58, 122, 82), "#c68e4e", r=10)
    p.rect((14, 36, 102, 104), "#c68e4e", r=12)
    p.ell((108, 65, 116, 75), BG)
    for y, x0, x1 in ((52, 26, 70), (64, 40, 92), (78, 22, 80), (90, 50, 90)):
        p.line([(x0, y), (x1, y)], "#a86f35", 2)
    # a few tomato slices
    for x, y in ((36, 60), (56, 74)):
        p.ell((x - 10, y - 10, x + 10, y + 10), "#e2463d")
        p.ell((x - 6, y - 6, x + 6, y + 6), "#f07a6a", width=0)


def frying_pan(p):
    p.rect((80, 62, 124, 74), "#222222", r=5)
    p.ell((8, 34, 88, 102), "#2b2b2b")
    p.ell((15, 41, 81, 95), "#4a4a4a", width=0)
    p.poly([(30, 56), (46, 48), (64, 54), (68, 70), (58, 84), (38, 84), (28, 72)], "#ffffff", width=1)
    p.ell((40, 58, 56, 74), "#f7b500", width=1)


def toaster(p):
    for x in (36, 68):
        p.rect((x, 24, x + 26, 60), "#e3b26b", r=8, outline="#9c5f26", width=3)
    p.rect((20, 50, 108, 106), "#7fb6c4", r=18)
    p.rect((34, 50, 94, 58), "#3f6f7c", r=3, width=0)
    p.rect((30, 62, 36, 94), "#b4dbe5", r=3, width=0)                    # shine
    p.rect((104, 64, 116, 72), "#555555", r=2)                           # lever
    p.ell((56, 76, 72, 92), "#3f6f7c")                                   # dial
    p.rect((28, 104, 40, 110), "#444444", width=0)
    p.rect((88, 104, 100, 110), "#444444", width=0)


def towels(p):
    p.rect((16, 70, 112, 104), "#8cc3ea", r=6)
    p.rect((16, 90, 112, 96), "#ffffff", width=0)
    p.line([(16, 76), (112, 76)], "#6aa6d1", 2)
    p.rect((26, 36, 102, 72), "#2f7fc1", r=6)
    p.rect((26, 56, 102, 62), "#ffffff", width=0)
    p.line([(26, 42), (102, 42)], "#1f6aa8", 2)
    p.rect((26, 36, 102, 72), None, r=6)                                 # re-draw outline
    p.rect((16, 70, 112, 104), None, r=6)


def toothbrush(p):
    p.rect((8, 68, 92, 82), "#d4a762", r=7)                              # bamboo handle
    for x in (30, 60):
        p.line([(x, 69), (x, 81)], "#b0823f", 2, round_ends=False)
    p.rect((86, 66, 120, 80), "#d4a762", r=6)                            # head
    p.rect((88, 48, 118, 68), "#ffffff", r=2)                            # bristles
    for x in range(92, 118, 5):
        p.line([(x, 51), (x, 65)], "#7cc3e0", 2, round_ends=False)
    return 25                                                            # tilt the picture


def soap_dispenser(p):
    p.rect((34, 54, 94, 112), "#8fd3c7", r=14)
    p.rect((40, 72, 88, 106), "#55b3a3", r=8, width=0)                   # soap inside
    p.rect((42, 62, 48, 98), "#d6f1ec", r=3, width=0)                    # shine
    p.rect((54, 42, 74, 56), "#f2f2f2")
    p.rect((50, 30, 78, 42), "#f2f2f2", r=3)
    p.poly([(76, 32), (100, 32), (104, 40), (98, 40), (96, 38), (76, 38)], "#f2f2f2")
    for x, y, r in ((24, 30, 6), (16, 46, 4), (30, 18, 3)):
        p.ring((x - r, y - r, x + r, y + r), "#55b3a3", 2)


def shaving_mirror(p):
    p.ell((40, 100, 88, 114), "#9aa5ae")
    p.rect((60, 78, 68, 104), "#9aa5ae")
    p.ell((26, 10, 102, 86), "#9aa5ae")
    p.ell((33, 17, 95, 79), "#cfe8f5", width=1)
    p.line([(48, 44), (62, 30)], "#ffffff", 4)
    p.line([(52, 56), (74, 34)], "#ffffff", 3)
    p.ell((20, 42, 30, 54), "#7d8891")
    p.ell((98, 42, 108, 54), "#7d8891")


def toilet_roll(p):
    p.poly([(82, 92), (116, 104), (110, 116), (76, 104)], "#ffffff")     # loose sheet
    for t in (0.35, 0.7):
        x0, y0 = 82 + (116 - 82) * t, 92 + (104 - 92) * t
        p.line([(x0, y0), (x0 - 6, y0 + 12)], "#bbbbbb", 1)
    p.rect((28, 40, 92, 100), "#fbfbfb", width=0)
    p.ell((28, 88, 92, 112), "#fbfbfb")
    p.rect((30, 40, 90, 100), "#fbfbfb", width=0)
    p.line([(28, 40), (28, 100)], INK, 2)
    p.line([(92, 40), (92, 100)], INK, 2)
    p.rect((36, 46, 44, 96), "#e6e6e6", width=0)                         # shade
    p.ell((28, 28, 92, 52), "#ffffff")
    p.ell((50, 34, 70, 46), "#b08850")
    p.ell((54, 36, 66, 44), "#7a5a33", width=0)


def bucket(p):
    p.arc((26, 12, 102, 92), 190, 350, "#666666", 4)                     # handle
    p.poly([(24, 50), (104, 50), (94, 110), (34, 110)], "#2f7bd6")
    p.line([(30, 72), (98, 72)], "#1d5fae", 3, round_ends=False)
    p.ell((22, 40, 106, 60), "#1d5fae")
    p.ell((28, 44, 100, 57), "#a7d3f5", width=0)                         # water
    p.ell((20, 48, 30, 58), "#666666", width=1)
    p.ell((98, 48, 108, 58), "#666666", width=1)


def spray_bottle(p):
    p.rect((42, 58, 86, 114), "#6c8ee0", r=10)
    p.rect((48, 74, 80, 100), "#ffffff", r=3, width=1)                   # label
    p.line([(54, 82), (74, 82)], "#6c8ee0", 2)
    p.line([(54, 90), (68, 90)], "#6c8ee0", 2)
    p.rect((54, 46, 74, 60), "#f1f1f1")
    p.poly([(50, 48), (44, 66), (50, 68), (60, 50)], "#f1f1f1")          # trigger
    p.poly([(34, 30), (86, 28), (92, 38), (86, 48), (34, 46)], "#f1f1f1")
    p.rect((22, 32, 36, 44), "#cfcfcf", r=2)                             # nozzle
    for x, y in ((14, 30), (10, 38), (14, 46), (6, 32), (6, 44), (16, 38)):
        p.ell((x - 1.5, y - 1.5, x + 1.5, y + 1.5), "#6c8ee0", width=0)


def sponge(p):
    p.poly([(18, 50), (94, 50), (110, 38), (34, 38)], "#3fa34d")         # top (scrub)
    p.poly([(94, 50), (110, 38), (110, 84), (94, 100)], "#d9b421")       # side
    p.poly([(94, 50), (110, 38), (110, 46), (94, 60)], "#2f8a3b", width=1)
    p.rect((18, 60, 94, 100), "#f5d033")                                 # front
    p.rect((18, 50, 94, 60), "#3fa34d")
    for x, y, r in ((30, 72, 3), (48, 86, 4), (66, 70, 3), (80, 88, 3), (38, 92, 2), (58, 80, 2)):
        p.ell((x - r, y - r, x + r, y + r), "#d9b421", width=0)
    for x, y, r in ((30, 24, 5), (44, 16, 4), (58, 26, 3)):
        p.ring((x - r, y - r, x + r, y + r), "#7fb0d8", 2)


def broom(p):
    p.thick([(64, 6), (64, 66)], "#a0703c", 6)
    p.poly([(48, 74), (80, 74), (104, 120), (24, 120)], "#e3c16f")
    for x in (36, 48, 60, 72, 84, 94):
        p.line([(64 + (x - 64) * 0.35, 80), (x, 116)], "#c39b45", 2)
    p.rect((46, 62, 82, 76), "#c0392b", r=3)
    p.line([(46, 69), (82, 69)], "#8e2a20", 2, round_ends=False)


def mop(p):
    p.thick([(64, 4), (64, 58)], "#7fa7c9", 6)
    for i in range(9):
        x0 = 56 + i * 2
        x1 = 30 + i * 8.5
        bend = (i - 4) * 2
        pts = [(x0, 66), ((x0 + x1) / 2 + bend, 92), (x1, 116)]
        p.line(pts, "#555555", 6)
        p.line(pts, "#f3efe2", 3.5)
    p.rect((52, 54, 76, 68), "#5a6b7a", r=3)


def table_lamp(p):
    p.ell((34, 60, 94, 80), "#fff4c2", width=0)                          # glow
    p.rect((48, 100, 80, 110), "#2d7d7a", r=3)
    p.ell((44, 62, 84, 104), "#3aa39e")
    p.rect((52, 72, 58, 94), "#7fd0cb", r=3, width=0)
    p.rect((60, 56, 68, 66), "#c9a640")
    p.poly([(42, 20), (86, 20), (100, 60), (28, 60)], "#f2d27a")
    p.line([(34, 54), (94, 54)], "#d9b350", 2, round_ends=False)


def cushion(p):
    pts = [(16, 16), (64, 26), (112, 16), (102, 64), (112, 112), (64, 102), (16, 112), (26, 64)]
    p.poly(pts, "#c06c84")
    p.poly([(64, 40), (88, 64), (64, 88), (40, 64)], "#e9a3b6", width=0)
    p.poly([(64, 50), (78, 64), (64, 78), (50, 64)], "#c06c84", width=0)
    p.ell((59, 59, 69, 69), "#7d3b50", width=1)


def _clock_face(p, cx, cy, r, hour=10, minute=10):
    p.ell((cx - r, cy - r, cx + r, cy + r), "#ffffff", width=1)
    for i in range(12):
        a = math.radians(i * 30)
        long = i % 3 == 0
        r0 = r - (9 if long else 6)
        p.line([(cx + r0 * math.sin(a), cy - r0 * math.cos(a)),
                (cx + (r - 3) * math.sin(a), cy - (r - 3) * math.cos(a))], INK, 3 if long else 1.5)
    ha = math.radians((hour % 12 + minute / 60) * 30)
    ma = math.radians(minute * 6)
    p.line([(cx, cy), (cx + r * 0.5 * math.sin(ha), cy - r * 0.5 * math.cos(ha))], INK, 4)
    p.line([(cx, cy), (cx + r * 0.78 * math.sin(ma), cy - r * 0.78 * math.cos(ma))], INK, 3)
    p.line([(cx, cy + r * 0.15), (cx, cy - r * 0.8)], "#d63a2f", 1.5)
    p.ell((cx - 3, cy - 3, cx + 3, cy + 3), "#d63a2f", width=0)


def wall_clock(p):
    p.ell((14, 14, 114, 114), "#5b4636", width=2)
    _clock_face(p, 64, 64, 42)


def sofa(p):
    p.rect((26, 32, 102, 74), "#4f8a8b", r=12)
    p.line([(64, 36), (64, 66)], "#3b6e6f", 2)
    p.rect((24, 96, 30, 106), "#5b4636", width=0)
    p.rect((98, 96, 104, 106), "#5b4636", width=0)
    p.rect((26, 80, 102, 98), "#3f7273", r=4)
    p.rect((30, 64, 64, 84), "#5fa0a1", r=6)
    p.rect((64, 64, 98, 84), "#5fa0a1", r=6)
    p.rect((12, 52, 34, 98), "#4f8a8b", r=9)
    p.rect((94, 52, 116, 98), "#4f8a8b", r=9)


def picture_frame(p):
    p.line([(46, 20), (64, 6), (82, 20)], "#777777", 1.5)
    p.ell((61, 3, 67, 9), "#777777", width=0)
    p.rect((20, 18, 108, 112), "#9b6a3c", r=2)
    p.rect((30, 28, 98, 102), "#f4ecd8", width=1)
    p.rect((37, 35, 91, 95), "#9fd3f0", width=1)
    p.ell((70, 42, 82, 54), "#ffd43b", width=0)
    p.poly([(37, 95), (37, 76), (56, 56), (72, 74), (80, 66), (91, 78), (91, 95)], "#6a9f58", width=0)
    p.poly([(50, 62), (56, 56), (62, 62)], "#ffffff", width=0)
    p.rect((37, 35, 91, 95), None, width=1)


def alarm_clock(p):
    p.line([(36, 98), (26, 116)], INK, 5)
    p.line([(92, 98), (102, 116)], INK, 5)
    p.arc((44, 4, 84, 34), 200, 340, INK, 4)                             # carry handle
    p.ell((16, 12, 50, 40), "#e0b43a")
    p.ell((78, 12, 112, 40), "#e0b43a")
    p.ell((22, 24, 106, 108), "#d63a2f")
    _clock_face(p, 64, 66, 34, hour=7, minute=0)


def coat_hanger(p):
    p.arc((54, 8, 74, 28), 180, 90, "#9aa5ae", 4)                        # hook
    p.line([(64, 28), (64, 40)], "#9aa5ae", 4)
    p.thick([(14, 80), (64, 42), (114, 80)], "#b97a45", 8)
    p.thick([(18, 86), (110, 86)], "#b97a45", 5)
    p.ell((8, 74, 22, 92), "#b97a45")
    p.ell((106, 74, 120, 92), "#b97a45")


def bed(p):
    p.rect((12, 34, 30, 108), "#8b5a2b", r=4)                            # headboard
    p.rect((98, 58, 116, 108), "#8b5a2b", r=4)                           # footboard
    p.rect((24, 66, 104, 86), "#ffffff")                                 # mattress
    p.rect((28, 84, 100, 94), "#a47445", width=1)
    p.rect((30, 50, 60, 68), "#ffffff", r=8)                             # pillow
    p.poly([(52, 62), (104, 62), (104, 88), (52, 88)], "#5d7fcf")        # duvet
    p.line([(52, 70), (104, 70)], "#8aa5e3", 2, round_ends=False)
    p.rect((98, 58, 116, 108), None, r=4)


def slippers(p):
    for x0 in (20, 68):
        x1 = x0 + 40
        p.ell((x0, 16, x1, 112), "#efe2c8")                              # sole
        p.ell((x0 + 6, 60, x1 - 6, 106), "#d9c7a3", width=0)             # insole
        p.poly([(x0 + 1, 64)] + [
            (x0 + 20 + 20 * math.cos(math.radians(a)), 64 - 47 * math.sin(math.radians(a)))
            for a in range(0, 181, 12)
        ][::-1] + [(x1 - 1, 64)], "#8f4d8a", width=0)
        p.ell((x0, 16, x1, 112), None)
        p.line([(x0 + 2, 64), (x1 - 2, 64)], INK, 2)
        p.ell((x0 + 13, 28, x0 + 27, 42), "#f2c6ea")                     # pom-pom


def blanket(p):
    p.rect((16, 40, 112, 98), "#b03a3a", r=10)
    for y in (52, 74):
        p.rect((17, y, 111, y + 8), "#7c2626", width=0)
    for x in (40, 70, 96):
        p.rect((x, 41, x + 7, 97), "#7c2626", width=0)
    for y in (62, 86):
        p.line([(17, y), (111, y)], "#e5c15c", 1.5, round_ends=False)
    p.rect((16, 40, 112, 98), None, r=10)
    p.arc((10, 40, 30, 98), 90, 270, "#8d2e2e", 5)                       # rolled fold
    for x in range(22, 108, 6):
        p.line([(x, 98), (x, 108)], "#b03a3a", 2)


def notebook(p):
    p.rect((34, 14, 104, 116), "#ffffff", r=4)                           # pages
    p.rect((30, 12, 98, 112), "#3e6fb0", r=5)
    p.rect((48, 32, 88, 54), "#ffffff", r=2, width=1)
    p.line([(54, 40), (82, 40)], "#8aa5cc", 2)
    p.line([(54, 47), (74, 47)], "#8aa5cc", 2)
    p.rect((30, 90, 98, 96), "#2d5590", width=0)
    for y in range(20, 106, 10):
        p.ring((22, y, 38, y + 7), "#777777", 2.5)


def _pencil(p, base, angle, length, colour):
    bx, by = base
    w = 4
    body = [(bx - w, by), (bx + w, by), (bx + w, by - length), (bx - w, by - length)]
    wood = [(bx - w, by - length), (bx + w, by - length), (bx, by - length - 12)]
    lead = [(bx - 1.7, by - length - 7), (bx + 1.7, by - length - 7), (bx, by - length - 12)]
    p.poly(rotate(body, angle, base), colour)
    p.poly(rotate(wood, angle, base), "#f3d2a2")
    p.poly(rotate(lead, angle, base), INK, width=0)


def pencil_holder(p):
    _pencil(p, (56, 96), -18, 56, "#f2c12e")
    _pencil(p, (64, 96), 4, 62, "#3b82c4")
    _pencil(p, (72, 96), 22, 50, "#d63a2f")
    p.rect((36, 60, 92, 112), "#444c56", r=4)
    for x in range(44, 90, 8):
        p.line([(x, 64), (x, 108)], "#5f6a76", 2)
    p.rect((36, 60, 92, 68), "#2f353c", r=3)


def stapler(p):
    p.rect((14, 84, 114, 98), "#3a3a3a", r=5)                            # base
    p.rect((98, 82, 112, 86), "#b9c1c8", width=0)                        # anvil
    p.rect((22, 76, 106, 84), "#b9c1c8", r=2, width=1)                   # magazine
    p.poly([(18, 58), (100, 62), (112, 70), (108, 78), (18, 78)], "#c0392b")
    p.line([(26, 64), (96, 67)], "#e06a5c", 2)
    p.ell((10, 60, 34, 96), "#2b2b2b")                                   # hinge
    p.ell((18, 74, 26, 82), "#888888", width=0)


def office_chair(p):
    cx = 64
    for x1, y1 in ((22, 106), (106, 106), (40, 114), (88, 114)):
        p.line([(cx, 98), (x1, y1)], "#2d2d2d", 5)
        p.ell((x1 - 5, y1 - 2, x1 + 5, y1 + 8), "#555555", width=1)
    p.rect((60, 74, 68, 100), "#9aa5ae", width=1)
    p.rect((60, 50, 68, 66), "#555555", width=0)
    p.rect((38, 8, 90, 56), "#2d2d2d", r=14)
    p.rect((44, 14, 84, 50), "#3f3f3f", r=10, width=0)
    p.line([(30, 50), (30, 68)], "#555555", 4)
    p.line([(98, 50), (98, 68)], "#555555", 4)
    p.line([(24, 50), (36, 50)], "#2d2d2d", 5)
    p.line([(92, 50), (104, 50)], "#2d2d2d", 5)
    p.rect((28, 62, 100, 78), "#2d2d2d", r=7)


def calculator(p):
    p.rect((28, 10, 100, 118), "#5a6270", r=9)
    p.rect((36, 18, 92, 40), "#b9d3a8", r=3)
    for i, x in enumerate((60, 70, 80)):
        p.rect((x, 23, x + 7, 35), "#3d4a36", width=0)
        p.rect((x + 2, 25, x + 5, 28), "#b9d3a8", width=0)
        if i != 1:
            p.rect((x + 2, 30, x + 5, 33), "#b9d3a8", width=0)
    for row in range(4):
        for col in range(4):
            x = 36 + col * 14.5
            y = 50 + row * 16
            colour = "#f39c35" if col == 3 else "#e8eaed"
            p.rect((x, y, x + 11, y + 12), colour, r=2, width=1)


def watering_can(p):
    p.arc((54, 26, 98, 74), 180, 360, INK, 8)                            # handle
    p.arc((55, 27, 97, 73), 180, 360, "#8f9aa3", 5)
    p.poly([(50, 80), (50, 94), (20, 54), (26, 48)], "#8f9aa3")          # spout
    p.poly(rotate([(10, 44), (30, 44), (30, 52), (10, 52)], -35, (20, 48)), "#6f7a83")
    p.rect((46, 50, 104, 106), "#a7b1b9", r=6)
    p.ell((46, 44, 104, 58), "#c8d0d6")
    p.line([(46, 68), (104, 68)], "#7f8a93", 2, round_ends=False)
    p.line([(46, 88), (104, 88)], "#7f8a93", 2, round_ends=False)
    for x, y in ((8, 62), (14, 72), (4, 78), (12, 86)):
        p.ell((x - 2, y - 3, x + 2, y + 3), "#3b8fd6", width=0)


def plant_pot(p):
    for angle, length in ((-60, 34), (-30, 42), (0, 48), (30, 42), (60, 34)):
        p.leaf((64, 66), angle, length, 16, "#4c9a3f" if angle % 60 else "#5db34e")
    p.poly([(38, 70), (90, 70), (84, 114), (44, 114)], "#c4622d")
    p.rect((32, 60, 96, 74), "#d2743d", r=2)
    p.line([(48, 78), (52, 108)], "#d97d4a", 3)


def spade(p):
    p.ring((48, 4, 80, 24), INK, 6)                                      # D-grip
    p.ring((49, 5, 79, 23), "#2d2d2d", 4)
    p.rect((60, 20, 68, 72), "#b0783e")
    p.poly([(42, 72), (86, 72), (84, 106), (64, 120), (44, 106)], "#b5bfc7")
    p.line([(48, 80), (48, 102)], "#e6ebef", 3)
    p.rect((56, 64, 72, 80), "#5b6770", r=2)


def wheelbarrow(p):
    p.line([(44, 74), (120, 58)], "#7a5230", 5)                          # handle arms
    p.line([(86, 72), (92, 108)], "#555555", 5)                          # leg
    p.ell((16, 76, 48, 108), "#2b2b2b")
    p.ell((26, 86, 38, 98), "#aaaaaa", width=1)
    p.poly([(14, 40), (104, 40), (90, 80), (40, 80)], "#e0572f")
    p.line([(14, 44), (104, 44)], "#b13f1e", 3, round_ends=False)
    p.line([(112, 60), (122, 58)], "#2b2b2b", 6)


def birdhouse(p):
    p.rect((60, 100, 68, 126), "#7a5230", width=1)
    p.poly([(36, 52), (64, 28), (92, 52), (92, 104), (36, 104)], "#d39a5e")
    p.thick([(26, 58), (64, 24), (102, 58)], "#8b3a2f", 8)
    p.ell((53, 54, 75, 76), "#3b2a1e")
    p.line([(64, 84), (64, 92)], "#7a5230", 4)
    p.line([(40, 96), (88, 96)], "#b9824a", 2, round_ends=False)


DRAWINGS = {
    "HH-001": kettle, "HH-002": mug, "HH-003": cutting_board, "HH-004": frying_pan,
    "HH-005": toaster, "HH-006": towels, "HH-007": toothbrush, "HH-008": soap_dispenser,
    "HH-009": shaving_mirror, "HH-010": toilet_roll, "HH-011": bucket, "HH-012": spray_bottle,
    "HH-013": sponge, "HH-014": broom, "HH-015": mop, "HH-016": table_lamp,
    "HH-017": cushion, "HH-018": wall_clock, "HH-019": sofa, "HH-020": picture_frame,
    "HH-021": alarm_clock, "HH-022": coat_hanger, "HH-023": bed, "HH-024": slippers,
    "HH-025": blanket, "HH-026": notebook, "HH-027": pencil_holder, "HH-028": stapler,
    "HH-029": office_chair, "HH-030": calculator, "HH-031": watering_can, "HH-032": plant_pot,
    "HH-033": spade, "HH-034": wheelbarrow, "HH-035": birdhouse,
}

BG = "#ffffff"      # background of the picture being drawn (set per product)


def render(sku: str, category: str) -> Image.Image:
    global BG
    BG = BACKGROUND[category]
    big = Image.new("RGB", (SIZE * SS, SIZE * SS), BG)
    tilt = DRAWINGS[sku](Pen(ImageDraw.Draw(big)))
    if tilt:
        big = big.rotate(tilt, resample=Image.Resampling.BICUBIC, fillcolor=BG)
    small = big.resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    return small.quantize(colors=COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)


def main(argv: list[str]) -> int:
    with open(PRODUCTS, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    wanted = set(argv) or {r["sku"] for r in rows}
    missing = {r["sku"] for r in rows} - DRAWINGS.keys()
    if missing:
        raise SystemExit(f"no drawing for {sorted(missing)}")
    for row in rows:
        if row["sku"] not in wanted:
            continue
        out = REPO / row["image"]
        render(row["sku"], row["category"]).save(out, optimize=True)
        size = out.stat().st_size
        if size >= MAX_BYTES:
            raise SystemExit(f"{out} is {size} bytes (limit {MAX_BYTES})")
        print(f"{row['sku']}  {out.relative_to(REPO)}  {size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
