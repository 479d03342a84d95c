"""Binary glTF (glb) for one tile.

One node per tile, translated to the tile's centre in the tileset frame (so vertex positions stay
a few hundred metres at most and float32 keeps millimetres). Features are identified per vertex
(``_FEATURE_ID_0`` + ``EXT_mesh_features``) or per instance (``EXT_mesh_gpu_instancing`` +
``EXT_instance_features``), and both point at row *i* of the ``EXT_structural_metadata``
property table.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from tiles.meshes import Mesh
from tiles.metadata import FeatureClass, encode_column

ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
TRIANGLES = 4
FLOAT, UNSIGNED_SHORT, UNSIGNED_INT = 5126, 5123, 5125


@dataclass(frozen=True)
class Material:
    name: str
    rgba: tuple[float, float, float, float]
    metallic: float = 0.0
    roughness: float = 0.9

    def gltf(self) -> dict[str, Any]:
        return {
            "pbrMetallicRoughness": {"baseColorFactor": list(self.rgba), "metallicFactor": self.metallic,
                                     "roughnessFactor": self.roughness},
            "emissiveFactor": [0.0, 0.0, 0.0],
            "alphaMode": "BLEND" if self.rgba[3] < 1.0 else "OPAQUE",
            "doubleSided": False,
            "name": self.name,
        }


@dataclass
class Instances:
    """One mesh drawn at many points (instancing): translations in glTF axes, one feature each."""

    mesh: Mesh
    material: Material
    translations: np.ndarray  # (K, 3)
    feature_ids: np.ndarray  # (K,)


#: glb chunks and every buffer view start on 8 bytes: EXT_structural_metadata demands it, and it suits every
#: accessor type
_ALIGN = 8


class _Writer:
    """The glTF JSON as plain dicts and one binary buffer. (pygltflib's object model, used before, spent more
    time copying and converting its dataclasses to JSON than the tile took to triangulate: ~5 ms a tile.)"""

    def __init__(self) -> None:
        self.accessors: list[dict[str, Any]] = []
        self.buffer_views: list[dict[str, Any]] = []
        self.materials: list[dict[str, Any]] = []
        self.meshes: list[dict[str, Any]] = []
        self.nodes: list[dict[str, Any]] = []
        self.blob = bytearray()
        self.material_index: dict[str, int] = {}

    def view(self, data: bytes, target: int | None = None) -> int:
        self.blob += b"\0" * (-len(self.blob) % _ALIGN)
        view: dict[str, Any] = {"buffer": 0, "byteOffset": len(self.blob), "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        self.buffer_views.append(view)
        self.blob += data
        return len(self.buffer_views) - 1

    def accessor(self, array: np.ndarray, kind: str, component: int, target: int | None,
                 with_bounds: bool = False) -> int:
        dtype = {FLOAT: np.float32, UNSIGNED_SHORT: np.uint16, UNSIGNED_INT: np.uint32}[component]
        arr = np.ascontiguousarray(array, dtype=dtype)
        acc: dict[str, Any] = {"bufferView": self.view(arr.tobytes(), target), "byteOffset": 0,
                               "componentType": component, "normalized": False, "count": len(arr), "type": kind}
        if with_bounds:
            flat = arr.reshape(len(arr), -1)
            acc["max"] = flat.max(axis=0).astype(float).tolist()
            acc["min"] = flat.min(axis=0).astype(float).tolist()
        self.accessors.append(acc)
        return len(self.accessors) - 1

    def material(self, material: Material) -> int:
        if material.name not in self.material_index:
            self.materials.append(material.gltf())
            self.material_index[material.name] = len(self.materials) - 1
        return self.material_index[material.name]

    def primitive(self, mesh: Mesh, material: Material, feature_count: int | None) -> dict[str, Any]:
        attributes = {
            "POSITION": self.accessor(mesh.positions, "VEC3", FLOAT, ARRAY_BUFFER, with_bounds=True),
            "NORMAL": self.accessor(mesh.normals, "VEC3", FLOAT, ARRAY_BUFFER),
        }
        out: dict[str, Any] = {}
        if feature_count is not None:
            # float feature ids are exact up to 2^24 features, far above any tile's count
            attributes["_FEATURE_ID_0"] = self.accessor(mesh.feature_ids, "SCALAR", FLOAT, ARRAY_BUFFER)
            out["extensions"] = {"EXT_mesh_features": {
                "featureIds": [{"featureCount": feature_count, "attribute": 0, "propertyTable": 0}]}}
        index_type = UNSIGNED_SHORT if len(mesh.positions) < 65535 else UNSIGNED_INT
        indices = self.accessor(mesh.triangles.reshape(-1), "SCALAR", index_type, ELEMENT_ARRAY_BUFFER)
        out.update(attributes=attributes, indices=indices, mode=TRIANGLES, material=self.material(material))
        return out

    def metadata(self, cls: FeatureClass, rows: list[dict[str, Any]]) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        for prop in cls.properties:
            entry: dict[str, Any] = {}
            for part, data in encode_column(prop, [r.get(prop.name) for r in rows]):
                entry[part] = self.view(data)
            if not entry:  # no value to store: the property reads as its noData for every feature
                continue
            if "stringOffsets" in entry:
                entry["stringOffsetType"] = "UINT32"
            properties[prop.name] = entry
        return {"schema": cls.schema(),
                "propertyTables": [{"class": cls.name, "count": len(rows), "properties": properties}]}


def write_glb(cls: FeatureClass, rows: list[dict[str, Any]], translation: np.ndarray,
              meshes: list[tuple[Mesh, Material]] = (), instances: list[Instances] = ()) -> bytes:
    """A glb with the given meshes (per-vertex feature ids) and instanced meshes (per-instance ids);
    ``rows`` are the features' attributes in feature-id order."""
    w = _Writer()
    used = {"EXT_structural_metadata"}
    required: set[str] = set()
    root_children: list[int] = []
    primitives = [w.primitive(mesh, material, len(rows)) for mesh, material in meshes if not mesh.empty]
    if primitives:
        used.add("EXT_mesh_features")
        w.meshes.append({"primitives": primitives})
        w.nodes.append({"mesh": len(w.meshes) - 1})
        root_children.append(len(w.nodes) - 1)
    for inst in instances:
        if not len(inst.translations):
            continue
        used |= {"EXT_mesh_gpu_instancing", "EXT_instance_features"}
        required.add("EXT_mesh_gpu_instancing")  # without it only one marker would be drawn
        w.meshes.append({"primitives": [w.primitive(inst.mesh, inst.material, None)]})
        w.nodes.append({"extensions": {
            "EXT_mesh_gpu_instancing": {"attributes": {
                "TRANSLATION": w.accessor(inst.translations, "VEC3", FLOAT, None),
                "_FEATURE_ID_0": w.accessor(inst.feature_ids, "SCALAR", FLOAT, None),
            }},
            "EXT_instance_features": {"featureIds": [
                {"featureCount": len(rows), "attribute": 0, "propertyTable": 0}]},
        }, "mesh": len(w.meshes) - 1})
        root_children.append(len(w.nodes) - 1)
    metadata = w.metadata(cls, rows)
    w.nodes.append({"translation": [float(v) for v in translation], "children": root_children, "name": "tile"})
    w.blob += b"\0" * (-len(w.blob) % _ALIGN)
    doc: dict[str, Any] = {"extensions": {"EXT_structural_metadata": metadata}}
    if w.accessors:
        doc["accessors"] = w.accessors
    doc["asset"] = {"generator": "cim-platform tiles", "version": "2.0"}
    doc["bufferViews"] = w.buffer_views
    doc["buffers"] = [{"byteLength": len(w.blob)}]
    doc["extensionsUsed"] = sorted(used)
    if required:
        doc["extensionsRequired"] = sorted(required)
    for key, items in (("materials", w.materials), ("meshes", w.meshes)):
        if items:
            doc[key] = items
    doc["nodes"] = w.nodes
    doc["scene"] = 0
    doc["scenes"] = [{"nodes": [len(w.nodes) - 1]}]
    text = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(12 + len(text)) % _ALIGN)  # the binary chunk's data then starts on 8 bytes
    total = 12 + 8 + len(text) + 8 + len(w.blob)
    return b"".join((struct.pack("<4sII", b"glTF", 2, total), struct.pack("<I4s", len(text), b"JSON"), text,
                     struct.pack("<I4s", len(w.blob), b"BIN\0"), bytes(w.blob)))


def read_glb(data: bytes) -> tuple[dict[str, Any], bytes]:
    """The JSON and BIN chunks of a glb (for checks and tools)."""
    magic, _version, length = struct.unpack_from("<4sII", data, 0)
    if magic != b"glTF" or length != len(data):
        raise ValueError("not a glb")
    offset, doc, blob = 12, None, b""
    while offset < length:
        size, kind = struct.unpack_from("<I4s", data, offset)
        chunk = data[offset + 8: offset + 8 + size]
        if kind == b"JSON":
            doc = json.loads(chunk)
        elif kind == b"BIN\0":
            blob = chunk
        offset += 8 + size
    return doc, blob
