"""``GET /admin/usage``: the ledger summed by key, model, variant, ... as JSON or CSV.

Query parameters: ``group_by`` (comma-separated, from key, model, variant, replica, endpoint,
status; empty: one total row; default ``key,model,variant``), ``since`` and ``until``
(ISO 8601; without a zone they are UTC; ``until`` is exclusive) and ``format`` (json, csv).
Rows still queued for the database are written first (waiting at most 2 s).
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from gateway.admin import admin_guard
from gateway.errors import InvalidRequest
from gateway.ledger import AVERAGES, SUMS, Ledger, parse_group_by
from gateway.settings import GatewaySettings


def usage_router(settings: GatewaySettings) -> APIRouter:
    router = APIRouter(
        prefix="/admin", tags=["admin"], dependencies=[Depends(admin_guard(settings))]
    )

    @router.get("/usage")
    async def usage(
        request: Request,
        group_by: str = "key,model,variant",
        since: str | None = None,
        until: str | None = None,
        fmt: str = Query("json", alias="format"),
    ) -> Response:
        names = parse_group_by(group_by)
        start, end = instant(since, "since"), instant(until, "until")
        if fmt not in ("json", "csv"):
            raise InvalidRequest("format must be json or csv", param="format")
        ledger: Ledger = request.app.state.ledger
        await ledger.flush(timeout_s=2.0)
        rows = await ledger.query(names, start, end)
        if fmt == "csv":
            return Response(
                to_csv(names, rows),
                media_type="text/csv; charset=utf-8",
                headers={"content-disposition": 'attachment; filename="usage.csv"'},
            )
        window = {"since": start and start.isoformat(), "until": end and end.isoformat()}
        return JSONResponse({"object": "list", "group_by": names, **window, "data": rows})

    return router


def instant(value: str | None, param: str) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{param} must be an ISO 8601 time, not {value!r}", param) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def to_csv(group_by: list[str], rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, [*group_by, *SUMS, *AVERAGES], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
