"""The catalogue of log events: every event the server writes (scep_server, and the crl, otp and trustkit
libraries it runs), with its level, its fields and what it means. Data only; nothing here logs.

tests/test_logevents.py holds it to the source: every event name passed to a logger is listed here with the
fields actually passed, nothing listed is stale, and the README's "Log events" section is :func:`readme_block`
(``python -m scep_server.logevents`` prints it).

Besides its own fields, a line carries ``event``, ``level`` and ``timestamp``; ``logger`` on lines written
through the standard library (the otp and trustkit libraries); ``request_id`` on every line written while a
request is handled; ``exception`` (the traceback) where an event lists it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    name: str
    level: str  # debug, info, warning, error
    fields: tuple[str, ...]
    meaning: str


def _e(name: str, level: str, fields: str, meaning: str) -> Event:
    return Event(name, level, tuple(fields.split()), meaning)


_CRL_CHECK_FAILURES = ("unreachable", "timeout", "http_error", "too_large", "malformed", "unsupported",
                       "wrong_issuer", "wrong_signer", "bad_signature", "scope_mismatch", "not_yet_valid",
                       "expired", "rollback", "forbidden_destination", "too_many_urls", "state_unavailable")
_DEVICE_ACTIONS = ("suspend", "unsuspend", "deactivate", "reactivate", "delete")
_STATUS_CHANGES = {"pki.cert.revoke": "a certificate revoked (CLI, API, device lifecycle)",
                   "pki.cert.lifecycle.hold": "a certificate put on hold (certificateHold)",
                   "pki.cert.lifecycle.activate": "a certificate's hold released"}

# Call sites whose event name is computed, by "path:expression", and the names they produce
DYNAMIC: dict[str, tuple[str, ...]] = {
    "crl/check.py:f'crl.check.{f.kind.value}'": tuple(f"crl.check.{kind}" for kind in _CRL_CHECK_FAILURES),
    "scep_server/binding/devices.py:f'device.{action}'": tuple(f"device.{action}" for action in _DEVICE_ACTIONS),
    "scep_server/ca/revocation.py:kind.value": tuple(_STATUS_CHANGES),
}

EVENTS: tuple[Event, ...] = (
    # HTTP
    _e("http.access", "info", "method route status duration_ms client request_id",
       "one request answered (log.access; written whatever log.level is); route is the route's template or "
       "`<unmatched>`, method one of the standard methods or OTHER"),
    _e("http.malformed_request", "info", "peer status error detail",
       "a request that does not parse as HTTP was answered with a problem document, 400, 414 (request line too "
       "long) or 431 (header too large, too many) (aiohttp's own error line, without its traceback)"),
    _e("http.unhandled", "error", "method path exception", "a handler failed unexpectedly; the client got a 500"),
    _e("http.bad_body", "info", "method path detail",
       "a request body could not be read; the client got a 400 (`detail`: the kind of failure, never the bytes)"),
    _e("http.body_timeout", "info", "method path client received announced seconds",
       "a request body did not arrive within server.body_timeout_seconds plus one second per server.body_min_rate "
       "bytes received (received: bytes in, announced: its Content-Length or null); the client got a 408 and its "
       "connection was closed"),
    _e("http.send_timeout", "info", "method route client sent size seconds",
       "a large answer (32 KiB or more) was not sent within server.send_timeout_seconds plus one second per "
       "server.send_min_rate bytes sent, or made no progress for server.send_timeout_seconds (sent: bytes the "
       "client's side took, size: the body's): the client reads slower than that or not at all; its connection was reset "
       "(http_send_timeouts_total)"),
    _e("http.database_unavailable", "warning", "method path error",
       "the database is unreachable; the client got a 503"),
    _e("server.base_url.wildcard", "warning", "listen issuing",
       "server.base_url is not set and server.listen is a wildcard address (0.0.0.0, ::): certificates would name "
       "it, so none is issued (issuing false) unless server.allow_wildcard_base_url is true"),
    _e("server.console.plain_http", "warning", "listen base_url",
       "the admin console is on and the server listens beyond loopback with a plain http base URL and no trusted "
       "proxy: administrator tokens and session cookies would cross the network in clear (serve it behind a TLS "
       "proxy listed in server.trusted_proxies, or switch it off)"),
    _e("server.metrics.open", "warning", "listen",
       "/metrics is served beyond loopback without a token (metrics.token_env or token_file): whoever reaches the "
       "address reads it"),
    _e("systemd.notify_failed", "warning", "error",
       "the readiness notification to systemd ($NOTIFY_SOCKET) could not be sent; the server runs on"),
    _e("readyz.check_failed", "warning", "check detail", "a readiness check started failing (logged once per change)"),
    _e("readyz.check_recovered", "info", "check", "a readiness check passes again"),
    # API tokens and the audit trail
    _e("tokens.last_used_failed", "warning", "error tokens",
       "recording when tokens were last used failed; the requests themselves were answered"),
    _e("audit.sealed", "debug", "events", "the audit chain's sealer linked this many new events ([audit] chain)"),
    # backup and restore (`scep-server backup`, `scep-server restore`; README "Backup and restore")
    _e("backup.created", "info", "directory database files highest_crl_number",
       "a backup was written (the database kind, how many files the manifest lists, the CRL Numbers it saw)"),
    _e("backup.restored", "info", "directory data_dir schema crl_number_floors",
       "a backup was restored into a new data directory; each CA's CRL Numbers continue above its floor"),
    _e("backup.restore_refused", "warning", "directory error",
       "a restore was refused (a changed file or manifest, a wrong secret, an existing directory, a malformed or "
       "hostile backup); nothing was written"),
    _e("audit.seal.failed", "error", "error", "sealing the audit chain failed; the next round seals those events"),
    _e("audit.seal.skipped", "info", "reason",
       "a command ended without sealing the audit chain because it may not write the database (a SELECT-only role, "
       "a read-only file, a standby); a running server or the next command that may write seals the events"),
    # background jobs
    _e("job.crashed", "error", "job error restart_in exception",
       "a background job raised; it restarts after restart_in"),
    _e("job.recovered", "info", "job restarts", "a restarted background job has run long enough to count as healthy"),
    _e("job.finished", "info", "job", "a background job returned"),
    _e("batch.failed", "error", "batcher items exception",
       "a group commit failed; every caller of the batch got the error"),
    _e("batch.observer_failed", "error", "batcher items exception",
       "the metrics observer of a committed batch raised; the batch's callers got their results"),
    _e("batch.fallback", "info", "batcher items error",
       "a group commit failed; its items are run one by one so one bad item cannot fail the others"),
    _e("profile.previous_secret_used", "warning", "profile until",
       "an enrolment used a static profile's previous secret during the grace period of its rotation"),
    # the RA certificate
    _e("ca.ra.renewed", "info", "ca serial previous_serial not_after ra_mode actor",
       "a new RA certificate and key were issued (`ca renew-ra`, the API, or the server before expiry); ra_mode "
       "split: a signing and an encryption RA certificate, each with a new key"),
    _e("ca.ra.loaded", "info", "ca serial not_after", "this process now uses a renewed RA certificate"),
    _e("ca.ra.renew_failed", "error", "ca error",
       "the automatic RA renewal failed; retried every ca.ra_check_interval (readiness fails 14 days before expiry)"),
    _e("ca.key.sign_failed", "error", "backend key error",
       "a CA or RA private key failed to sign (an error the PKCS#11 token answered, a key that cannot sign): "
       "nothing was signed, the request is answered 503 `ca_key_failed` (a CRL is not published, an OCSP answer "
       "is tryLater); with a token, readiness check ca.token fails until the key signs again"),
    _e("ca.pkcs11.session_lost", "warning", "token error",
       "a key operation found its PKCS#11 session gone (the token restarted or was removed): the sessions are "
       "reopened and the operation tried once more"),
    _e("ca.pkcs11.reconnected", "info", "token sessions",
       "the sessions of the PKCS#11 token were opened again (logged in, the keys found by label)"),
    _e("ca.pkcs11.reconnect_failed", "error", "token error retry_in",
       "the PKCS#11 token could not be opened again; key operations fail (503) until the next attempt, "
       "retry_in seconds later at the earliest (readiness check ca.token)"),
    _e("ca.rollover.prepared", "info", "ca subject cross_signed actor",
       "the next CA of a CA was created (`ca rollover prepare`, the API); GetNextCACert serves it"),
    _e("ca.rollover.activated", "info", "ca active profiles actor",
       "a prepared next CA became the issuing CA (`ca rollover activate`, the API); every server "
       "issues from it within seconds (`ca.loaded`)"),
    _e("ca.rollover.loaded", "info", "ca subject not_after", "this process now announces a prepared next CA"),
    _e("ca.loaded", "info", "ca issuing subject", "this process loaded a CA added since it started (a rollover "
       "activated by the command line or another process); `issuing`: it now issues from it"),
    _e("ca.load_failed", "warning", "ca error", "a CA added since the start could not be loaded yet (its files "
       "being written); the next round of the RA job tries again"),
    _e("ca.skipped", "warning", "ca error", "with the keys in a PKCS#11 token, a CA other than the issuing one "
       "was left out: the token does not hold its keys, or not as the keys of its certificates (an old "
       "generation's key deleted, a directory of a file-based rollover); the server starts without it and its "
       "CRL is no longer published; a restart loads it again once its keys are back"),
    # SCEP and enrolment
    _e("scep.transaction", "info", "profile transaction_id message_type outcome serial fail_info fail_text duration_ms",
       "one SCEP PKIOperation answered (SUCCESS, FAILURE or PENDING)"),
    _e("scep.single_des", "warning", "profile transaction_id message_type",
       "a request encrypted with single DES was accepted"),
    _e("scep.ack.unresolved", "error", "profile transaction_id serial exception",
       "the MDM's acknowledgement of an issued certificate failed; the reconciler retries or revokes"),
    _e("scep.enrolment.reconcile", "info", "profile serial outcome detail",
       "a certificate left awaiting the MDM's acknowledgement was delivered or revoked"),
    _e("scep.enrolment.expire", "info", "profile transaction_id created_at expiry_days",
       "a pending enrolment nobody decided within its profile's pending_expiry_days was rejected (at its next "
       "CertPoll or decision, or by the job scep.pending_expiry); audit event `scep.enrolment.expire`"),
    _e("security.scep.foreign_signer", "warning",
       "profile transaction_id public_key_sha256 signer_fingerprint_sha256 valid_certificates",
       "a key the profile knows (a transaction or a certificate) was sent again under another signer than itself; "
       "refused (`valid_certificates`: its valid ones)"),
    _e("enrolment.decided", "info", "profile transaction_id approve actor",
       "a pending enrolment was approved or rejected"),
    # certificates
    *(_e(name, "info", "serial actor status reason", meaning) for name, meaning in _STATUS_CHANGES.items()),
    _e("pki.cert.revoke_unused", "info", "count unused_days",
       "certificates never used in an attestation within unused_days were revoked"),
    _e("pki.cert.bind", "info", "device serial ca", "a certificate was bound to a device at its first attestation"),
    # CRLs of this CA
    _e("crl.signed_hook.failed", "warning", "ca number error",
       "recording a signed CRL's metrics failed; the CRL was published"),
    _e("crl.published", "info", "ca number entries bytes this_update next_update reused_entries",
       "a CRL was signed and recorded"),
    _e("crl.publish.superseded", "info", "ca number",
       "another instance recorded this CRL number first; its CRL is served"),
    _e("crl.adopted", "info", "ca number published_by", "a CRL recorded by another instance or process is served"),
    _e("crl.adopt.rejected", "error", "ca number error", "a recorded CRL failed its checks and is not served"),
    _e("crl.publish.failed", "error", "ca error failures serving serving_next_update problems",
       "signing a CRL failed; the CRL being served stays until its next_update"),
    _e("crl.publisher.loop_error", "error", "ca error", "the publisher's loop failed unexpectedly; it goes on"),
    _e("crl.partitions.loop_error", "error", "ca error",
       "the loop of a CA's partition CRLs failed unexpectedly (e.g. the database was away); it goes on"),
    _e("crl.recorded_hook.failed", "warning", "ca number error",
       "telling the other instances about a new CRL failed; they find it at their next poll"),
    _e("crl.stale", "error", "ca number next_update", "the CRL being served is past its next_update"),
    _e("crl.flush.failed", "error", "ca error", "re-signing a CRL at shutdown failed"),
    _e("crl.step_in.failed", "error", "ca error", "re-signing a CRL whose change no instance published failed"),
    _e("crl.change_not_published", "warning", "ca change_at serving this_update",
       "a status change is not in the served CRL after the grace period; this instance re-signs"),
    _e("crl.watch.failed", "error", "error", "watching for status changes failed; the poll goes on"),
    _e("crl.changes.disconnected", "warning", "error retry_in", "the PostgreSQL change listener lost its connection"),
    _e("crl.changes.reconnected", "info", "connections", "the PostgreSQL change listener is connected again"),
    _e("crl.day91.revoked", "info", "count unused_days",
       "the day-91 rule revoked certificates never used in an attestation"),
    _e("crl.day91.failed", "error", "error", "a run of the day-91 rule failed; it runs again later"),
    # the OCSP responder of this CA
    _e("ocsp.signer.renewed", "info", "ca serial not_after",
       "a delegated OCSP signing certificate was issued (first start, or renewal before expiry)"),
    _e("ocsp.signer.unreadable", "warning", "ca error",
       "the delegated OCSP signer's files cannot be read; a new signer is issued"),
    _e("ocsp.signer.renew_failed", "error", "error",
       "looking at or renewing a delegated OCSP signer failed; the current one signs, the next check retries"),
    _e("ocsp.request.malformed", "info", "ca error size", "an OCSP request was answered malformedRequest"),
    _e("ocsp.request.unauthorized", "info", "ca cert_ids",
       "an OCSP request naming another issuer was answered unauthorized"),
    _e("ocsp.cache.invalidated", "debug", "serials responses",
       "pre-signed OCSP responses were dropped after status changes"),
    _e("ocsp.scan.failed", "error", "error",
       "reading status changes for the OCSP cache failed; the cache was emptied, the scans go on"),
    _e("ocsp.respond.failed", "error", "ca error", "answering an OCSP request failed; the client got tryLater"),
    # customers' CAs and their CRLs
    _e("crl.check.watch", "info", "ca url", "a customer CA's CRL distribution point is watched"),
    _e("crl.check.updated", "info", "ca url number entries this_update next_update",
       "a customer CA's CRL was fetched and taken"),
    _e("crl.check.not_modified", "info", "ca url number", "a customer CA's CRL has not changed"),
    *(_e(name, "warning", "ca url detail keeping remedy" + (" cap" if name == "crl.check.too_many_urls" else ""),
         f"a customer CA's CRL was not taken: {name.rsplit('.', 1)[1].replace('_', ' ')}; keeping is the CRL "
         "number still used" + ("; remedy: the command that forgets the CA's recorded CRLs, to run if the CA "
                                "went back (restored from a backup) or narrowed the URL's scope on purpose"
                                if name in ("crl.check.rollback", "crl.check.scope_mismatch") else
                                "; the recorded last good CRL could not be read or written (the database)"
                                if name == "crl.check.state_unavailable" else ""))
      for name in DYNAMIC["crl/check.py:f'crl.check.{f.kind.value}'"]),
    _e("binding.external_ca.loaded", "info", "ca policy", "a customer CA was loaded"),
    _e("binding.external_ca.crls_forgotten", "info", "ca generation",
       "the recorded CRLs of a customer CA were forgotten (ca forget-external-crls): the next valid CRL of each "
       "of its URLs is taken whatever its age or scope"),
    _e("binding.external_ca.refused", "warning", "ca error", "a registered customer CA could not be loaded"),
    _e("binding.external_ca.reload_failed", "error", "exception", "reloading the customer CAs failed"),
    # devices and attestation
    _e("attestation.verify", "info", "device serial ca managed reason", "an attestation was answered"),
    _e("attestation.retry", "info", "device error", "an attestation met a concurrent change and is tried again"),
    _e("security.binding.refused", "warning",
       "device serial ca reason current_serial enrolled_device_id renews_certificate_of bound_to",
       "a certificate was refused a binding to a device (bound_to: the device a binding of another certificate "
       "of the same CA name and serial is bound to)"),
    _e("security.cert.second_device", "warning", "serial ca bound_to presented_by",
       "a certificate bound to one device was presented for another"),
    _e("binding.nonce_purge_failed", "error", "exception", "purging spent attestation nonces failed"),
    _e("device.create", "info", "device actor", "a device was registered"),
    *(_e(name, "info", "device actor reason certificates",
         f"a device's lifecycle action ({name.split('.')[1]}); certificates lists the certificates it changed")
      for name in DYNAMIC["scep_server/binding/devices.py:f'device.{action}'"]),
    _e("device.enrolment.preregister", "info", "device profile transaction_id actor",
       "an enrolment was pre-registered for a device"),
    # MDM sources (Jamf Pro, Intune)
    _e("mdm.configure", "info", "source kind actor", "an MDM source was added or changed"),
    _e("mdm.remove", "info", "source actor", "an MDM source was removed"),
    _e("mdm.sync", "info", "source dry_run records changes skipped error",
       "an MDM's inventory was read (error: it could not be read in full, nothing changed)"),
    _e("mdm.sync_held", "warning", "source takedowns devices limit",
       "a sync would take down more of the source's devices than the brake allows ([mdm] brake_share, "
       "brake_devices): nothing was changed until an administrator confirms (mdm sync --confirm-takedowns)"),
    _e("mdm.event_held", "warning", "source device takedowns limit",
       "a webhook event would take a device down when the source already took down as many devices in the last "
       "sync interval as the brake allows a sync: not applied; the next sync reads the device"),
    _e("mdm.sync_failed", "error", "exception", "an MDM sync raised (the periodic one runs again next period); a "
       "reading of the inventory that raised is the sync's recorded error"),
    _e("mdm.sync_claim_taken", "warning", "source running_since renewed_at",
       "a sync took the claim of a source whose holder had not renewed it for the lease (60 s; its process was "
       "killed in a sync, or lost the database): that sync, if still running, applies nothing more"),
    _e("mdm.sync_claim_lost", "warning", "source running_since",
       "a sync found its claim of the source taken by another sync (it had not renewed it in time): it applies and "
       "records nothing more"),
    _e("mdm.sync_claim_renew_failed", "warning", "source error",
       "a running sync could not renew its claim of the source (the database unreachable a while); it tries again "
       "a third of the lease later, and its writes renew it too"),
    # challenges
    _e("challenge.issued", "info", "profile source requested_by payload_identifier expires_at",
       "a one-time challenge was issued"),
    _e("challenge.redeemed", "info", "profile transaction_id source payload_identifier",
       "a one-time challenge was spent"),
    _e("challenge.pruned", "info", "removed", "expired one-time challenges were deleted"),
    _e("challenge.login_throttle_pruned", "info", "removed", "expired login throttle rows were deleted"),
    _e("challenge.auth_failed", "warning", "profile remote username", "a Basic login to the challenge URL failed"),
    _e("challenge.auth_blocked", "warning", "profile remote username blocked_by",
       "a Basic login was refused by the throttle (429); blocked_by: address (its own failures) or username "
       "(failures from all addresses; an address that logged in within challenge.known_address_hours is not "
       "held back by it)"),
    _e("challenge.username_locked", "warning", "profile username lockout_seconds known_address_hours",
       "failed logins with a profile's username from all addresses reached challenge.failures_per_user: for "
       "lockout_seconds only addresses that logged in within known_address_hours may log in with it"),
    _e("challenge.auth_busy", "warning", "profile remote", "too many logins waiting for a password check (503)"),
    _e("challenge.password_rehashed", "info", "profile log2_n",
       "a Basic password hash was upgraded to the current cost"),
    _e("challenge.password_rehash_failed", "error", "profile exception", "upgrading a Basic password hash failed"),
    _e("challenge.delegated.allowed", "info", "profile transaction_id provider",
       "Intune or a webhook allowed an enrolment"),
    _e("challenge.intune.rejected", "warning", "profile transaction_id code description",
       "Intune refused an enrolment"),
    _e("challenge.intune.unavailable", "error", "profile transaction_id error",
       "Intune could not be asked; the enrolment fails"),
    _e("challenge.intune.success_notification_failed", "error", "profile transaction_id code error",
       "telling Intune about an issued certificate failed"),
    _e("challenge.webhook.denied", "warning", "profile transaction_id error", "the webhook refused an enrolment"),
    _e("challenge.webhook.unavailable", "error", "profile transaction_id error",
       "the webhook could not be asked; the enrolment fails"),
    _e("challenge.webhook.success_notification_failed", "warning", "profile transaction_id error",
       "telling the webhook about an issued certificate failed"),
    _e("challenge.failure_notification_failed", "warning", "profile transaction_id error",
       "telling Intune or the webhook about a failed enrolment failed"),
    _e("intune.action", "info", "action transaction_id code description",
       "Intune answered a validation or notification"),
    _e("intune.retry", "warning", "what attempt of error", "a call to Intune failed and is tried again"),
    _e("webhook.retry", "warning", "url type attempt of error", "a call to the webhook failed and is tried again"),
    # YubiKey OTP
    _e("otp.verify", "info", "api user client_id public_id reason",
       "an OTP was verified (api: signin or wsapi; wsapi logs failures only)"),
    _e("otp.verify.unsigned", "info", "client_id source",
       "a protocol 2.0 client allowed to skip signing sent an unsigned request"),
    _e("otp.verify.protocol_error", "info", "status detail", "a protocol 2.0 request was refused before any OTP check"),
    _e("otp.verify.backend_error", "error", "exception", "the key store failed during a verification"),
    _e("otp.api.backend_error", "error", "exception", "the key store failed during a sign-in API call"),
    _e("otp.security", "warning", "reason user public_id client_id source subject blocked_until caller",
       "a security event: an OTP failure anybody can cause, a key presented for another user, or a throttle "
       "that started (reason `*_throttled`, with subject and blocked_until)"),
    _e("otp.import", "info", "import_id keys format actor counters_carried",
       "YubiKey secrets were imported (counters_carried: keys imported again that go on from their earlier counters)"),
    _e("otp.import.analyze_failed", "warning", "exception", "refreshing the planner statistics after an import failed"),
    _e("otp.key.revoked", "info", "serial actor", "a YubiKey was revoked"),
    _e("otp.key.deleted", "info", "serial actor status_before", "a YubiKey was deleted"),
    _e("otp.factor.deleted", "warning", "actor removed retired", "every YubiKey of the factor was deleted"),
    _e("otp.client.added", "info", "client_id allow_unsigned", "a protocol 2.0 client was added"),
    _e("otp.client.changed", "warning", "client_id allow_unsigned",
       "a protocol 2.0 client's unsigned access was changed"),
    _e("otp.prune", "info", "security_events throttle_rows",
       "old OTP security events and spent throttle rows were deleted"),
    _e("otp.prune.failed", "error", "error", "pruning OTP security events failed; it runs again later"),
    _e("otp.verify_counts.failed", "error", "exception error",
       "adding the verifications counted per hour (the console's chart) to the database failed; kept for the "
       "next try while the process runs"),
    _e("otp.kek.created", "warning", "path detail", "the OTP key-encryption key was created: back it up"),
    _e("otp.kek.permissions", "warning", "path mode", "the key-encryption key file is readable by others"),
    _e("otp.kek.unavailable", "error", "detail",
       "the key-encryption key cannot be read; the OTP factor does not start"),
    _e("otp.kek.reloaded", "warning", "kek_id previous_kek_id", "this process read the rotated OTP "
       "key-encryption key (`otp kek rotate`) and seals with it from now on; keys sealed under the previous "
       "one that it holds still open"),
    _e("otp.kek.mismatch", "error", "detail kek_id public_id client_id",
       "secrets are sealed under another key-encryption key than the one in use"),
)

BY_NAME: dict[str, Event] = {event.name: event for event in EVENTS}
assert len(BY_NAME) == len(EVENTS), "an event is listed twice"

BEGIN = "<!-- log events: generated by `python -m scep_server.logevents`; do not edit -->"
END = "<!-- end of log events -->"


def readme_block() -> str:
    """The README's table of log events, between its markers."""
    rows = [BEGIN, "", "| Event | Level | Fields | Meaning |", "|---|---|---|---|"]
    for event in sorted(EVENTS, key=lambda e: e.name):
        fields = ", ".join(f"`{f}`" for f in event.fields) or "-"
        rows.append(f"| `{event.name}` | {event.level} | {fields} | {event.meaning.replace('|', '/')} |")
    return "\n".join([*rows, "", END])


if __name__ == "__main__":
    print(readme_block())
