"""Materials of the 3D tiles.

Pipeline colours follow the Chinese convention for underground pipeline maps (CJJ 61《城市地下
管线探测技术规程》, the colour table that survey deliverables and GB/T-based pipeline databases
use): 给水 sky blue, 排水/雨水/污水 brown, 燃气 pink-magenta, 电力 red, 通信 green, 热力 orange,
工业 black. 雨水 and 污水 are told apart by shade (rain water lighter) and 工业 is a very dark
grey so it stays visible against the dark sky of the viewer.
"""
from __future__ import annotations

from tiles.gltf import Material


def _rgb(r: int, g: int, b: int, a: float = 1.0) -> tuple[float, float, float, float]:
    # glTF colour factors are linear; the sRGB values of the convention are linearised
    def lin(c: int) -> float:
        s = c / 255.0
        return round(s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4, 4)
    return (lin(r), lin(g), lin(b), a)


BUILDING = Material("building", _rgb(222, 218, 210), metallic=0.0, roughness=0.9)
#: curtain walls: blue, half transparent, smooth and partly metallic so they reflect the sky
GLASS = Material("curtain_wall_glass", _rgb(90, 160, 235, 0.75), metallic=0.6, roughness=0.08)
IOT_DEVICE = Material("iot_device", _rgb(0, 200, 160))

PIPELINE_COLOURS: dict[str, tuple[int, int, int]] = {
    "给水": (0, 191, 255),    # water supply: sky blue
    "排水": (139, 69, 19),    # drainage (combined): brown
    "雨水": (181, 118, 60),   # storm water: light brown
    "污水": (110, 60, 20),    # sewage: dark brown
    "燃气": (255, 0, 255),    # gas: pink-magenta
    "电力": (255, 0, 0),      # power: red
    "通信": (0, 200, 0),      # telecom: green
    "热力": (255, 140, 0),    # heat: orange
    "工业": (30, 30, 30),     # industrial: black
}
UNKNOWN_PIPE = (128, 128, 128)

#: part classes (first two digits of the object code), one colour each
PART_COLOURS: dict[str, tuple[int, int, int]] = {
    "01": (30, 120, 255),   # 公用设施
    "02": (255, 170, 0),    # 道路交通
    "03": (0, 170, 90),     # 市容环境
    "04": (60, 200, 60),    # 园林绿化
    "05": (180, 90, 200),   # 房屋土地
    "06": (150, 150, 150),  # 其他设施
}


def pipeline_material(kind: str) -> Material:
    return Material(f"pipeline_{kind}", _rgb(*PIPELINE_COLOURS.get(kind, UNKNOWN_PIPE)), metallic=0.1,
                    roughness=0.5)


def part_material(part_class: str | None) -> Material:
    return Material(f"part_{part_class or 'none'}", _rgb(*PART_COLOURS.get(part_class or "", (150, 150, 150))),
                    roughness=0.6)
