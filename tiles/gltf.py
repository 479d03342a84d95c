"""Binary glTF (glb) for one tile, built with pygltflib.

One node per tile, translated to the tile's centre in the tileset frame (so vertex positions stay
a few hundred metres at most and float32 keeps millimetres). Features are identified per vertex
(``_FEATURE_ID_0`` + ``EXT_mesh_features``) or per instance (``EXT_mesh_gpu_instancing`` +
``EXT_instance_features``), and both point at row *i* of the ``EXT_structural_metadata``
property table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pygltflib as g

from tiles.meshes import Mesh
from tiles.metadata import FeatureClass, encode_column

ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
FLOAT, UNSIGNED_SHORT, UNSIGNED_INT = 5126, 5123, 5125


@dataclass(frozen=True)
class Material:
    name: str
    rgba: tuple[float, float, float, float]
    metallic: float = 0.0
    roughness: float = 0.9

    def gltf(self) -> g.Material:
        return g.Material(
            name=self.name,
            pbrMetallicRoughness=g.PbrMetallicRoughness(
                baseColorFactor=list(self.rgba), metallicFactor=self.metallic, roughnessFactor=self.roughness),
            alphaMode="BLEND" if self.rgba[3] < 1.0 else "OPAQUE",
            doubleSided=False,
        )


@dataclass
class Instances:
    """One mesh drawn at many points (instancing): translations in glTF axes, one feature each."""

    mesh: Mesh
    material: Material
    translations: np.ndarray  # (K, 3)
    feature_ids: np.ndarray  # (K,)


class _Writer:
    def __init__(self) -> None:
        self.doc = g.GLTF2(asset=g.Asset(version="2.0", generator="cim-platform tiles"))
        self.blob = bytearray()
        self.materials: dict[str, int] = {}

    def view(self, data: bytes, target: int | None = None) -> int:
        # 8-byte alignment suits every accessor type and is what EXT_structural_metadata demands
        self.blob += b"\0" * (-len(self.blob) % 8)
        self.doc.bufferViews.append(g.BufferView(buffer=0, byteOffset=len(self.blob), byteLength=len(data),
                                                 target=target))
        self.blob += data
        return len(self.doc.bufferViews) - 1

    def accessor(self, array: np.ndarray, kind: str, component: int, target: int | None,
                 with_bounds: bool = False) -> int:
        dtype = {FLOAT: np.float32, UNSIGNED_SHORT: np.uint16, UNSIGNED_INT: np.uint32}[component]
        arr = np.ascontiguousarray(array, dtype=dtype)
        acc = g.Accessor(bufferView=self.view(arr.tobytes(), target), componentType=component,
                         count=len(arr), type=kind)
        if with_bounds:
            flat = arr.reshape(len(arr), -1)
            acc.min = [float(v) for v in flat.min(axis=0)]
            acc.max = [float(v) for v in flat.max(axis=0)]
        self.doc.accessors.append(acc)
        return len(self.doc.accessors) - 1

    def material(self, material: Material) -> int:
        if material.name not in self.materials:
            self.doc.materials.append(material.gltf())
            self.materials[material.name] = len(self.doc.materials) - 1
        return self.materials[material.name]

    def primitive(self, mesh: Mesh, material: Material, feature_count: int | None) -> g.Primitive:
        attributes = g.Attributes(
            POSITION=self.accessor(mesh.positions, "VEC3", FLOAT, ARRAY_BUFFER, with_bounds=True),
            NORMAL=self.accessor(mesh.normals, "VEC3", FLOAT, ARRAY_BUFFER),
        )
        extensions: dict[str, Any] = {}
        if feature_count is not None:
            # float feature ids are exact up to 2^24 features, far above any tile's count
            setattr(attributes, "_FEATURE_ID_0",
                    self.accessor(mesh.feature_ids, "SCALAR", FLOAT, ARRAY_BUFFER))
            extensions["EXT_mesh_features"] = {
                "featureIds": [{"featureCount": feature_count, "attribute": 0, "propertyTable": 0}]}
        index_type = UNSIGNED_SHORT if len(mesh.positions) < 65535 else UNSIGNED_INT
        indices = self.accessor(mesh.triangles.reshape(-1), "SCALAR", index_type, ELEMENT_ARRAY_BUFFER)
        return g.Primitive(attributes=attributes, indices=indices, material=self.material(material),
                           mode=g.TRIANGLES, extensions=extensions)

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
        w.doc.meshes.append(g.Mesh(primitives=primitives))
        w.doc.nodes.append(g.Node(mesh=len(w.doc.meshes) - 1))
        root_children.append(len(w.doc.nodes) - 1)
    for inst in instances:
        if not len(inst.translations):
            continue
        used |= {"EXT_mesh_gpu_instancing", "EXT_instance_features"}
        required.add("EXT_mesh_gpu_instancing")  # without it only one marker would be drawn
        w.doc.meshes.append(g.Mesh(primitives=[w.primitive(inst.mesh, inst.material, None)]))
        node = g.Node(mesh=len(w.doc.meshes) - 1, extensions={
            "EXT_mesh_gpu_instancing": {"attributes": {
                "TRANSLATION": w.accessor(inst.translations, "VEC3", FLOAT, None),
                "_FEATURE_ID_0": w.accessor(inst.feature_ids, "SCALAR", FLOAT, None),
            }},
            "EXT_instance_features": {"featureIds": [
                {"featureCount": len(rows), "attribute": 0, "propertyTable": 0}]},
        })
        w.doc.nodes.append(node)
        root_children.append(len(w.doc.nodes) - 1)
    w.doc.extensions["EXT_structural_metadata"] = w.metadata(cls, rows)
    w.doc.nodes.append(g.Node(name="tile", translation=[float(v) for v in translation], children=root_children))
    w.doc.scenes.append(g.Scene(nodes=[len(w.doc.nodes) - 1]))
    w.doc.scene = 0
    w.doc.extensionsUsed = sorted(used)
    w.doc.extensionsRequired = sorted(required)
    w.blob += b"\0" * (-len(w.blob) % 4)
    w.doc.buffers.append(g.Buffer(byteLength=len(w.blob)))
    w.doc.set_binary_blob(bytes(w.blob))
    return b"".join(w.doc.save_to_bytes())


def read_glb(data: bytes) -> tuple[dict[str, Any], bytes]:
    """The JSON and BIN chunks of a glb (for checks and tools)."""
    import json
    import struct

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
