"""The city's vital signs (城市生命体征): an indicator catalogue in six dimensions, computed from the
platform's own data (base layers, parts, pipelines, buildings, IoT devices, readings, alerts, cases)
into a time series per city, district, street and grid, plus values a city feeds from elsewhere.

An edge above ``cim``, ``cases`` and ``sensing``'s tables (see docs/vitals.md): ``catalogue`` (the
indicators), ``measures`` (how each is measured, in SQL), ``compute`` (one run at one time, the
periodic job's :func:`~vitals.compute.compute_vitals`), ``feed`` (loading fed values), ``query``
(reading them back), ``cli`` (``cim vitals …``).
"""
