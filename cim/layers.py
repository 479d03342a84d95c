"""The layer registry's definitions: what each collection is and which properties can be queried.

These rows are written into the ``layers`` table by ``cim init``; the API and the tile builders
read that table, not this module, so a deployment can add or retitle layers in the database.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from cim.schema import FEATURE_TABLES, VIEW_LAYERS

_GRID_QUERYABLES = [
    ("district_code", "string", "区代码"), ("street_code", "string", "街镇代码"),
    ("community_code", "string", "社区代码"), ("grid_code", "string", "单元网格代码"),
]
_HISTORY_QUERYABLES = [
    ("feature_id", "string", "要素标识"), ("source_id", "string", "来源标识"),
    ("valid_from", "datetime", "生效时间"), ("valid_to", "datetime", "失效时间"),
]


@dataclass(frozen=True)
class LayerDef:
    name: str  # collection id in URLs
    table: str
    title: str
    description: str
    properties: list[tuple[str, str, str]] = field(default_factory=list)  # (column, json type, title)
    enriched: bool = True

    @property
    def geometry_type(self) -> str:
        return FEATURE_TABLES.get(self.table) or VIEW_LAYERS[self.table]

    def queryables(self) -> list[dict[str, str]]:
        props = self.properties + (_GRID_QUERYABLES if self.enriched else []) + _HISTORY_QUERYABLES
        return [{"name": n, "type": t, "title": title} for n, t, title in props]


LAYERS: list[LayerDef] = [
    LayerDef("districts", "districts", "区", "District boundaries (6-digit code)",
             [("code", "string", "区代码"), ("name", "string", "名称")], enriched=False),
    LayerDef("streets", "streets", "街道/镇", "Street and town boundaries (9-digit code)",
             [("code", "string", "街镇代码"), ("name", "string", "名称"), ("district_code", "string", "区代码")],
             enriched=False),
    LayerDef("communities", "communities", "社区/居委", "Community (neighbourhood committee) boundaries",
             [("code", "string", "社区代码"), ("name", "string", "名称"), ("street_code", "string", "街镇代码")],
             enriched=False),
    LayerDef("grids", "grids", "单元网格", "Unit grids: the smallest unit of grid management",
             [("grid_code", "string", "单元网格代码"), ("name", "string", "名称"),
              ("community_code", "string", "社区代码"), ("street_code", "string", "街镇代码"),
              ("district_code", "string", "区代码")], enriched=False),
    LayerDef("addresses", "addresses", "地名地址", "Unified address gazetteer points",
             [("standard_address", "string", "标准地址"), ("address_code", "string", "地址编码"),
              ("road", "string", "街路巷"), ("door_number", "string", "门牌号"), ("lane", "string", "弄"),
              ("building_no", "string", "楼栋"), ("room", "string", "室"), ("compound", "string", "小区/POI")]),
    LayerDef("buildings", "buildings", "建筑", "Building footprints with base elevation and height (LoD1)",
             [("name", "string", "名称"), ("height", "number", "高度(米)"), ("floors", "integer", "层数"),
              ("base_elevation", "number", "基底高程"), ("use", "string", "用途"),
              ("year_built", "integer", "建成年份"), ("structure", "string", "结构"),
              ("is_protected", "boolean", "历史保护建筑")]),
    LayerDef("curtain-walls", "curtain_walls", "玻璃幕墙", "Glass curtain walls per building",
             [("building_source_id", "string", "建筑来源标识"), ("glass_type", "string", "玻璃类型"),
              ("support_type", "string", "支承形式"), ("facade_area", "number", "幕墙面积"),
              ("year_installed", "integer", "安装年份"), ("last_inspection_date", "date", "最近检测日期"),
              ("inspection_result", "string", "检测结论"), ("owner", "string", "业主/管理人")]),
    LayerDef("parts", "parts", "城市部件", "City parts with 16-digit object codes",
             [("object_code", "string", "部件编码"), ("part_class", "string", "大类"),
              ("part_subclass", "string", "小类"), ("name", "string", "名称"), ("status", "string", "状态"),
              ("owner_department", "string", "主管部门"), ("maintainer", "string", "养护单位")]),
    LayerDef("pipelines", "pipelines", "地下管线", "Underground pipelines as 3D lines below ground",
             [("kind", "string", "管线种类"), ("diameter_mm", "number", "管径(毫米)"), ("material", "string", "材质"),
              ("pressure_class", "string", "压力等级"), ("year_laid", "integer", "埋设年份"),
              ("owner", "string", "权属单位"), ("start_depth", "number", "起点埋深"),
              ("end_depth", "number", "终点埋深")]),
    LayerDef("iot-devices", "iot_devices", "物联感知设备", "IoT sensors with measured quantities",
             [("device_type", "string", "设备类型"), ("name", "string", "名称"),
              ("linked_feature", "string", "关联要素")]),
    # the case loop's cases as a map layer (a view over the cases table, migration 0005): read-only
    LayerDef("cases", "case_features", "城市管理案件", "City-management cases (部件/事件): status, class, "
             "department, deadline; see /cases for the full case and its log",
             [("channel", "string", "来源渠道"), ("class_code", "string", "小类代码"), ("class_name", "string", "小类"),
              ("urgency", "string", "紧急程度"), ("status", "string", "状态"), ("overdue", "boolean", "超期"),
              ("escalation_level", "integer", "升级层级"), ("department_name", "string", "处置部门"),
              ("reported_at", "datetime", "上报时间"), ("due_at", "datetime", "处置时限"),
              ("closed_at", "datetime", "结案时间"), ("address_text", "string", "地址")]),
    # live sensing's alerts at their devices (a view over iot_alerts, migration 0006): current = active
    LayerDef("alerts", "alert_features", "物联感知告警", "IoT alerts at their devices (warning / alarm); the current "
             "features are the active alerts, datetime=T those active at T; see /alerts for acknowledging",
             [("device_id", "string", "设备标识"), ("device_type", "string", "设备类型"),
              ("rule_name", "string", "规则"), ("quantity", "string", "监测量"), ("level", "string", "告警级别"),
              ("state", "string", "状态"), ("opened_at", "datetime", "告警时间"), ("last_value", "number", "最新值"),
              ("case_id", "integer", "案件")]),
]

LAYERS_BY_NAME: dict[str, LayerDef] = {layer.name: layer for layer in LAYERS}
