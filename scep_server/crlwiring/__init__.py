"""CRL publishing in the server: one publisher per issuing CA, `/crl/{ca}.crl|.pem`, SCEP GetCRL, readiness,
the day-91 rule as a background job, and the `crl publish|show` commands.

Services: ``runtime.extras["crl"]`` is the :class:`~scep_server.crlwiring.service.CrlService` (its
``publishers`` map CA names to :class:`crl.publish.Publisher`); ``runtime.extras["readiness"]["crl"]``.
"""
from __future__ import annotations

from .feature import FEATURE

__all__ = ["FEATURE"]
