"""The HTTP side: the aiohttp app, its routes, middlewares, health and admin endpoints."""
