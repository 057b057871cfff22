"""Low-level parts shared by `scep_server`, `crl` and `otp`; this package imports nothing of theirs.

- `trustkit.clock`: aware UTC datetimes and the settable clock every service takes.
- `trustkit.db`: the engine factory (embedded SQLite or PostgreSQL), SQLite pragmas and write transactions
  that take the lock at BEGIN.
- `trustkit.problems`: the one error type of the HTTP APIs (`DomainError`) and the one problem+json builder.
- `trustkit.http`: the JSON body reader, the bearer-token check and its `WWW-Authenticate` format, and the
  answer to a failure a handler raised.
"""
