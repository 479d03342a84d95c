"""The fast path of the common case report — ``POST /cases`` with a JSON body — answered before routing."""
from __future__ import annotations

import json
from collections.abc import Sequence

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.cases import AnswerError, case_response, post_case, report_from, router
from api.problems import user_error_response
from cases.intake import CaseReport
from cim.apikeys import role_allows
from cim.errors import UserError
from cim.jurisdiction import current_scope

#: the least API-key role that may report a case (the route's dependency: ``auth.require_role("reader")``)
REPORTER_KEY_ROLE = "reader"


class CaseReportMiddleware:
    """Answers ``POST /cases`` with a JSON body before routing, as :class:`api.tiles.VersionedTileMiddleware`
    answers tiles.

    Reports arrive by the hundred a second and each is simple: a key, a JSON object, the group intake. Going
    through FastAPI — matching the app's routes one by one, solving the key dependency — cost a report about a
    third of its worker's Python on the event loop (docs/benchmarks.md, issue 11). The steps are the route's
    own: the key the access middleware checked (at least ``reader``), :func:`api.cases.report_from`, the
    group intake, :func:`api.cases.case_response`; a report the intake refuses (an unknown class …) is answered
    by :func:`api.problems.user_error_response`, the one mapping of a core error. Whatever else it does not
    serve as the route would — another content type, a body that is no JSON object, no key or one that may not
    report, a bad field, an unforeseen error of the intake — goes on to the route with the body it read, and the
    route answers it or words the problem (such a report has left nothing behind, so taking it again is safe;
    answers that fail after the commit, :class:`api.cases.AnswerError`, are a 500 problem instead).
    Installed innermost: metrics, body limits and access control see every report."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _json_report(scope):
            await self.app(scope, receive, send)
            return
        messages = await _body_messages(receive)
        replay = _replaying(messages, receive)
        report = _report(scope, messages)
        if report is None:
            await self.app(scope, replay, send)
            return
        scope["route"] = _ROUTE  # metrics count it under the route
        try:
            result, answer = await scope["app"].state.case_intake.submit(report, key=current_scope())
        except UserError as exc:  # the report refused (an unknown class …): the one mapping to a problem document
            await user_error_response(Request(scope), exc)(scope, replay, send)
            return
        except AnswerError:  # written and committed: taking it again would open a second case (a 500 problem)
            raise
        except Exception:  # noqa: BLE001 — anything unforeseen (rolled back): the route takes it again and answers
            del scope["route"]
            await self.app(scope, replay, send)
            return
        await case_response(result, answer)(scope, replay, send)


def _json_report(scope: Scope) -> bool:
    """Whether the request is a ``POST /cases`` that declares a JSON body."""
    if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/cases":
        return False
    ctype = next((value for name, value in scope["headers"] if name == b"content-type"), b"")
    return ctype.split(b";")[0].strip().lower() == b"application/json"


async def _body_messages(receive: Receive) -> list[Message]:
    """The request's messages up to the end of its body (or a disconnect), as received."""
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            return messages


def _replaying(messages: Sequence[Message], receive: Receive) -> Receive:
    """A ``receive`` that hands out ``messages`` again, then what the client sends next."""
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


def _report(scope: Scope, messages: Sequence[Message]) -> CaseReport | None:
    """The report, when the route would take it as it is: a whole body holding a JSON object of good fields, from
    a key that may report. None: the route decides (and words the problem)."""
    key = scope.get("state", {}).get("api_key")  # put there by the access middleware, once checked
    if key is None or not role_allows(key.role, REPORTER_KEY_ROLE) or messages[-1]["type"] != "http.request":
        return None
    try:  # read as the route reads it (Starlette's Request.json): orjson would take an integer past 64 bits as a float
        data = json.loads(b"".join(m.get("body", b"") for m in messages))
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    try:
        return report_from(data)
    except UserError:
        return None


_ROUTE = next(r for r in router.routes if getattr(r, "endpoint", None) is post_case)
