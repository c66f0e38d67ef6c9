"""GET /: a small web page to try the service (plain HTML + JavaScript, no build step).

The page (`server/static/index.html`, `app.js`, `style.css`) lets you drop or pick an image
(a few CIFAR-10 test images ship in `static/samples/`), calls /certify and shows the class,
the certified radius drawn against the model's sigma and the latency; a button runs the
Monte-Carlo audit (/certify/sampled with a modest n) and shows whether it agrees. The files
are package data, served from `/static`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parents[2] / "static"  # server/static

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    """The page itself."""
    return FileResponse(STATIC / "index.html", media_type="text/html")


def mount_static(app: FastAPI) -> None:
    """Serve `server/static/` at /static (scripts, styles, sample images)."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
