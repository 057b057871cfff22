"""The audit trail (the `events` table): listing with filters (`scep-server audit list`, `GET /api/v1/events`)
and the optional hash chain (`[audit] chain`, `scep-server audit verify`); see docs/audit.md."""
