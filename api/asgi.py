"""ASGI entry point for uvicorn workers: ``uvicorn api.asgi:app``."""
import gc

from api.app import create_app

app = create_app()
# What start-up made (modules, the app, pyproj, shapely, SQLAlchemy: ~200,000 objects) lives as long as the process:
# moved out of the collector's generations, a full collection no longer walks it. A full collection falls on a
# request every so often (once in 1,000 /nearby on Shanghai) and took 177–665 ms at a load of 22 on 2 cores; after
# the freeze it takes microseconds (benchmarks/api_tail.py, docs/benchmarks.md).
gc.freeze()
