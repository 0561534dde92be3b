"""The HTTP side: the aiohttp app, its routes and the OpenAI serving layer."""
