"""Live sensing: readings at speed (HTTP batches, MQTT), threshold rules evaluated as readings
arrive, and alerts. An edge over the ``cim`` core; it imports neither ``ingest``, ``tiles`` nor ``api``."""
