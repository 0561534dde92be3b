"""Usage records, stored content and the audit log, in SQLite (docs/auth.md)."""
