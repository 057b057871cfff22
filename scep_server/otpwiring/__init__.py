"""The YubiKey OTP factor in the server: the `otp` service on the application's database, its routes
(`/wsapi/2.0/verify`, `/api/v1/otp/verify`, the `/api/v1/yubikeys` and `/api/v1/otp-clients` admin API)
behind the core's bearer tokens, and the `yubikey` and `otp-client` commands.

Services: ``runtime.extras["otp"]`` is the :class:`otp.service.OtpService`;
``runtime.extras["readiness"]["otp"]`` says (awaited, at each /readyz) whether the key-encryption key opens
the stored keys.
"""
from __future__ import annotations

from .feature import FEATURE, OtpFeature, service_of

__all__ = ["FEATURE", "OtpFeature", "service_of"]
