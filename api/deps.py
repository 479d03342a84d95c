"""What every route needs: the reader engine, the base's and the deployment's settings, the layer registry."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from sqlalchemy.engine import Engine

from api.problems import not_found
from cim.bootstrap import BaseSettings, load_settings
from cim.config import DeploymentSettings
from cim.config import settings as deployment_settings
from cim.database import reader_engine
from cim.kept import Kept
from cim.registry import Layer, load_layers


@dataclass
class AppState:
    engine: Engine
    settings: BaseSettings  # the base's (storage CRS, city); fixed with the data
    deployment: DeploymentSettings  # this process's (CIM_* variables), read when the app is made
    # api.auth's, made on first use: keys verified lately, and the bearer-token verifier (when configured)
    verified_keys: Any = None
    token_verifier: Any = None
    _layers: Kept[dict[str, Layer]] | None = None

    def layers(self) -> dict[str, Layer]:
        # layer versions change with each load; a short cache (CIM_LAYER_CACHE_S) keeps tiles fresh
        if self._layers is None:
            self._layers = Kept(self.deployment.layer_cache_s)
        return self._layers.get(self._read_layers)

    def _read_layers(self) -> dict[str, Layer]:
        with self.engine.connect() as conn:
            return load_layers(conn)

    def layer(self, collection_id: str) -> Layer:
        layer = self.layers().get(collection_id)
        if layer is None:
            raise not_found(f"collection {collection_id!r} does not exist; see /collections")
        return layer


def create_state(engine: Engine, deployment: DeploymentSettings | None = None) -> AppState:
    # requests read through a pool of their own whose lock waits are bounded (503 instead of a held connection)
    engine = reader_engine(engine)
    return AppState(engine=engine, settings=load_settings(engine), deployment=deployment or deployment_settings())


def get_state(request: Request) -> AppState:
    return request.app.state.cim
