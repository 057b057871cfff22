"""CRL publishing in the server: one publisher per issuing CA, `/crl/{ca}.crl|.pem`, SCEP GetCRL, readiness,
the day-91 rule as a background job, and the `crl publish|show` commands.

The service is ``runtime.crl`` (a :class:`~scep_server.crlwiring.service.CrlService`, whose ``publishers`` map
CA names to :class:`crl.publish.Publisher`), its readiness check ``runtime.readiness["crl"]``. The modules
are imported on use: ``feature`` (service, routes, jobs) and ``cli`` (commands) do not import each other.
"""
