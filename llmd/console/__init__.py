"""The web console: pages the daemon serves at `/ui/` for the person who looks after the box.

The pages are static files in `static/` (HTML, CSS, a little JavaScript, no build step and
nothing fetched from another host); everything they show or change comes from the daemon's
own API, called by the browser like any client (docs/console.md)."""

from llmd.console.pages import add_routes

__all__ = ["add_routes"]
