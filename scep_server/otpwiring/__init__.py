"""The YubiKey OTP factor in the server (`[otp] enabled`, on by default): the `otp` service on the
application's database, its routes (`/wsapi/2.0/verify`, `/api/v1/otp/verify`, the `/api/v1/yubikeys` and
`/api/v1/otp-clients` admin API) behind the core's bearer tokens, and the `yubikey` and `otp-client` commands.

The service is ``runtime.otp`` (an :class:`otp.service.OtpService`); ``runtime.readiness["otp"]`` says
(awaited, at each /readyz) whether the key-encryption key opens the stored keys. The modules are imported on
use: ``feature`` (service, routes, jobs) and ``cli`` (commands).
"""
