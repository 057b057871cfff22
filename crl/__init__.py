"""CRLs as a library (RFC 5280 §5, §6.3): build (pure), publish, serve (web), check customers' CAs (check)."""
