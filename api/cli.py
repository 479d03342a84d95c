"""``cim serve``: run the API (and viewer) with uvicorn."""
from __future__ import annotations

import typer


def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port."),
    workers: int = typer.Option(1, help="Worker processes."),
) -> None:
    """Serve the spatial API, tiles and viewer."""
    import uvicorn

    from cim.bootstrap import load_settings
    from cim.database import get_engine

    load_settings(get_engine())  # fail here with a clear message, not in a worker
    uvicorn.run("api.asgi:app", host=host, port=port, workers=workers, log_level="info")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
