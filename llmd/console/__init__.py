"""The web console: pages the daemon serves at `/ui/` for the person who looks after the box.

The pages are static files in `static/` (HTML, CSS, a little JavaScript, no build step and
nothing fetched from another host); everything they show or change comes from the daemon's
own API, called by the browser like any client (docs/console.md). Signing in exchanges an
admin key for a session cookie the API takes as that key (session.py)."""

from aiohttp import web

from llmd.console import pages, session


def add_routes(app: web.Application) -> None:
    """The console's files and its sign-in at /ui/session; call after install_auth."""
    pages.add_routes(app)
    session.add_routes(app)


__all__ = ["add_routes"]
