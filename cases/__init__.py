"""The city-management case loop (部件/事件 cases): intake from every channel, machine dispatch by
grid and class down the responsibility chain, the lifecycle through verified closure, time limits
on a working calendar with escalation, duplicates, and evaluation (综合评价).

An edge over the ``cim`` core (it imports only ``cim``); ``api`` adapts it. Modules, one job each:
:mod:`~cases.catalogue` (classes), :mod:`~cases.calendar` (deadlines), :mod:`~cases.model` (typed
cases and the log), :mod:`~cases.dispatch` (the rule), :mod:`~cases.lifecycle` (the state
machine, tick), :mod:`~cases.intake`, :mod:`~cases.evaluation`, :mod:`~cases.importer`,
:mod:`~cases.cli`.
"""
