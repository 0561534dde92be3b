"""API keys, authentication, rights, per-key limits (docs/auth.md)."""
