"""The console's files: `/` sends a browser to `/ui/`, and `/ui/...` serves `static/`.

The files hold no data (what a page shows comes from the API, which checks the caller), so
they are public paths; each is listed by name when the app is made, so an unknown path under
`/ui/` is never a file read from a client's string. Every answer carries headers that keep the
pages from being framed, from running inline or foreign script and from leaking the URL."""

from __future__ import annotations

import mimetypes
from pathlib import Path

from aiohttp import web

from llmd.auth.middleware import PUBLIC_PATHS

STATIC = Path(__file__).parent / "static"
UI = "/ui/"
# No inline script or style, nothing from another origin; the API is this origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "font-src 'self'; connect-src 'self'; manifest-src 'self'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
FILES = web.AppKey("console_files", dict[str, Path])


def console_files(root: Path = STATIC) -> dict[str, Path]:
    """URL path -> file, for every file under `root`; `/ui/` is index.html."""
    files = {UI + p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}
    if UI + "index.html" in files:
        files[UI] = files[UI + "index.html"]
    return files


def content_type(path: Path) -> str:
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if path.suffix == ".js":
        kind = "text/javascript"
    return kind + "; charset=utf-8" if kind.startswith("text/") or path.suffix == ".json" else kind


async def root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(UI, headers=SECURITY_HEADERS)


async def serve(request: web.Request) -> web.StreamResponse:
    path = request.app[FILES].get(request.path)
    if path is None:
        raise web.HTTPNotFound(headers=SECURITY_HEADERS)
    headers = {**SECURITY_HEADERS, "Content-Type": content_type(path)}
    # The shell is small and names the current assets: always asked again; assets may be
    # kept a short while, and revalidated by their modification time.
    headers["Cache-Control"] = "no-cache" if path.suffix == ".html" else "max-age=300"
    return web.FileResponse(path, headers=headers)


def add_routes(app: web.Application) -> None:
    """The console's routes, and its paths public (the auth middleware lets them pass)."""
    app[FILES] = files = console_files()
    app.setdefault(PUBLIC_PATHS, set()).update({"/", *files})
    app.router.add_get("/", root)
    app.router.add_get(UI, serve)
    app.router.add_get(UI + "{file:.+}", serve)
