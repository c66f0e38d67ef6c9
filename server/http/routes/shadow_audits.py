"""GET /audits: the most recent shadow audits (served answer vs Monte-Carlo on the same image).

    curl -s 'localhost:8000/audits?limit=5' -H "authorization: Bearer $ACCSMOOTH_API_KEY"

Needs the API key when one is set: the records describe other clients' images (by sha256) and
their certificates. With several uvicorn workers, each answers with its own recent audits.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from server.http.deps import ShadowDep, require_key_for_audits
from server.http.openapi import ERRORS
from server.http.schemas import AuditList

router = APIRouter(tags=["audits"], responses=ERRORS)


@router.get("/audits", dependencies=[Depends(require_key_for_audits)])
async def list_audits(
    shadow: ShadowDep,
    limit: Annotated[int, Query(ge=1, le=100_000, description="at most this many")] = 20,
    model: Annotated[str | None, Query(description="only this bundle's audits")] = None,
) -> AuditList:
    """The newest shadow audits first, with the counts of audits done, dropped and pending."""
    return AuditList(
        audits=shadow.audits(limit, model),
        done=shadow.done,
        dropped=shadow.dropped,
        pending=shadow.pending,
    )
