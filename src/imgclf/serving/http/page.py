"""The web page: drop, paste, pick or photograph an image and see its top classes as bars.

Plain HTML, CSS and JavaScript shipped as package data: no CDN, no build step, works offline.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

router = APIRouter(include_in_schema=False)
STATIC_DIR = Path(str(resources.files("imgclf.serving.http") / "static"))


@router.get("/", response_class=HTMLResponse)
async def index() -> HTMLResponse:
    """The classification page."""
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    return HTMLResponse(html, headers={"Cache-Control": "no-cache"})


def mount_static(app: FastAPI) -> None:
    """Serve the page's script and stylesheet under ``/static``."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
