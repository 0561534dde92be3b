"""The HTTP side: the aiohttp app and its routes (`app`), the health endpoints (`health`), the
model admin API (`admin`) and the middleware that opens each request's record (`accounting`).
The OpenAI endpoints' work is the serving layer's (llmd/serving/)."""
