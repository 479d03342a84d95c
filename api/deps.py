"""What every route needs: the engine, the base's settings, the layer registry."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import Request
from sqlalchemy.engine import Engine

from api.problems import not_found
from cim.bootstrap import BaseSettings, load_settings
from cim.database import reader_engine
from cim.registry import Layer, load_layers

LAYER_CACHE_SECONDS = 5.0  # layer versions change with each load; a short cache keeps tiles fresh


@dataclass
class AppState:
    engine: Engine
    settings: BaseSettings
    _layers: dict[str, Layer] = field(default_factory=dict)
    _layers_at: float = 0.0

    def layers(self) -> dict[str, Layer]:
        if time.monotonic() - self._layers_at > LAYER_CACHE_SECONDS:
            with self.engine.connect() as conn:
                self._layers = load_layers(conn)
            self._layers_at = time.monotonic()
        return self._layers

    def layer(self, collection_id: str) -> Layer:
        layer = self.layers().get(collection_id)
        if layer is None:
            raise not_found(f"collection {collection_id!r} does not exist; see /collections")
        return layer


def create_state(engine: Engine) -> AppState:
    # requests read through a pool of their own whose lock waits are bounded (503 instead of a held connection)
    engine = reader_engine(engine)
    return AppState(engine=engine, settings=load_settings(engine))


def get_state(request: Request) -> AppState:
    return request.app.state.cim
