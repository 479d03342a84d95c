"""Water-logging response (防汛): ponding-prone and monitoring points with their plans, residential
compounds, roads (a routable network), pump trucks and teams with live GPS positions, and the response
to a water-level alarm or a declared warning — see docs/scenarios.md, "Water-logging"."""
