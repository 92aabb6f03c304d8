"""The dashboard, served by ``noxblock serve`` at ``/``: one page for the people on duty.

It shows, refreshed every two seconds from the REST API (``/api/v1/sites/{site}/status``,
``/history``, ``/plan``, ``/kpis`` and ``/api/v1/charge-points``):

* the site's load per phase against the limit over time (a live chart),
* the limit in force, where it comes from and who set it, and the limits coming up,
* every charge point: connection, status, current drawn, the limit it was told, the EV's energy
  and estimated departure,
* the plan ahead per point (the limits of the next intervals, shaded by current),
* the KPIs so far (energy, sessions, peak against limit, violations) and the last re-plan.

Plain HTML, CSS and JavaScript in ``dashboard.html`` beside this file: no build step, nothing
loaded from elsewhere.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

__all__ = ["add_dashboard", "page"]

#: The page, with ``__SITE_TEXT__`` (HTML-escaped) and ``__SITE_JSON__`` (a JS string) to fill in.
_PAGE = (Path(__file__).with_name("dashboard.html")).read_text(encoding="utf-8")


def page(site_id: str) -> str:
    """The dashboard's HTML for ``site_id``."""
    return _PAGE.replace("__SITE_TEXT__", html.escape(site_id)).replace("__SITE_JSON__", json.dumps(site_id))


def add_dashboard(app: FastAPI, site_id: str) -> None:
    """Serve the dashboard at ``/`` and ``/dashboard``."""
    text = page(site_id)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    @app.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> str:
        return text
