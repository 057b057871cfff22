"""Low-level parts shared by `scep_server`, `crl` and `otp`; this package imports nothing of theirs.

- `trustkit.clock`: aware UTC datetimes and the settable clock every service takes.
- `trustkit.der`: the one BER reader (lenient for SCEP clients, strict DER for CRLs) and DER writer, one
  error type.
- `trustkit.db`: the engine factory (embedded SQLite or PostgreSQL), SQLite pragmas, write transactions
  that take the lock at BEGIN, and whole transactions run on an aiosqlite connection's thread.
- `trustkit.batching`: group commit, many callers' writes in one durable transaction; a distinct-key mode
  keeps one item per key in flight.
- `trustkit.problems`: the one error type of the HTTP APIs (`DomainError`) and the one problem+json builder.
- `trustkit.http`: the JSON body reader, the bearer-token check and its `WWW-Authenticate` format, and the
  answer to a failure a handler raised.
- `trustkit.paging`: cursor pagination of lists (keyset pages, checked `limit` and `cursor`, the page's body
  and `Link`); `trustkit.clipaging`: the same lists on a command line (`--limit`, `--cursor`, `--all`).
- `trustkit.lookupcache`: a per-process cache of lookups that a change made in the process empties at once,
  without a lookup in flight putting its stale answer back.
"""
