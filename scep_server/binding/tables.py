"""Tables of device binding: devices, certificate bindings, attestation nonces, external CAs."""
from __future__ import annotations

import sqlalchemy as sa

from ..store.tables import TS

metadata = sa.MetaData()

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False, server_default=""),
    # active | suspended | deactivated | deleted (final)
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("created_by", sa.String(255)),
    sa.Column("status_changed_at", TS, nullable=False),
    sa.Column("status_changed_by", sa.String(255)),
    sa.Column("status_reason", sa.Text),
    sa.Index("ix_devices_created", "created_at", "id"),  # the device list's order
    sa.Index("ix_devices_status_created", "status", "created_at", "id"),
)

# One row per client certificate ever bound: the primary key makes "one certificate, one device" a
# constraint; the partial unique index makes "one current certificate per device" one too.
device_certs = sa.Table(
    "device_certs",
    metadata,
    sa.Column("fingerprint_sha256", sa.String(64), primary_key=True),  # SHA-256 of the certificate DER
    # SHA-256 of its TBSCertificate: another encoding of the certificate (an ECDSA signature re-encoded) has the
    # same; a certificate of the same (ca, serial) with another TBSCertificate is another certificate. NULL for a
    # binding made before binding_0008: only its fingerprint identifies it
    sa.Column("tbs_sha256", sa.String(64)),
    sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id"), nullable=False),
    sa.Column("ca", sa.String(64), nullable=False),  # our CA's name, or a registered external CA's
    sa.Column("external", sa.Boolean, nullable=False),
    sa.Column("serial", sa.String(42), nullable=False),  # lower-case hex
    sa.Column("not_after", TS, nullable=False),
    sa.Column("current", sa.Boolean, nullable=False),
    # active | retired (never accepted again)
    sa.Column("state", sa.String(16), nullable=False),
    # superseded | removed | device_deleted | revoked | key_compromise
    sa.Column("retired_reason", sa.String(32)),
    sa.Column("bound_at", TS, nullable=False),
    sa.Column("retired_at", TS),
    sa.UniqueConstraint("ca", "serial", name="uq_device_certs_ca_serial"),
    sa.Index("ix_device_certs_device", "device_id"),
    sa.Index("uq_device_certs_current", "device_id", unique=True,
             sqlite_where=sa.text("current"), postgresql_where=sa.text("current")),
)

# Attestation nonces are stateless (an HMAC under the key below); a nonce is spent by inserting its hash
# here, so the primary key makes "a nonce is used once" a constraint across processes and instances.
# Rows are kept until well after the nonce's expiry, after which the expiry check refuses it anyway.
attestation_spent_nonces = sa.Table(
    "attestation_spent_nonces",
    metadata,
    sa.Column("nonce_sha256", sa.String(64), primary_key=True),
    sa.Column("device_id", sa.String(64), nullable=False),
    sa.Column("expires_at", TS, nullable=False),
    sa.Column("used_at", TS, nullable=False),
    sa.Index("ix_attestation_spent_nonces_expires", "expires_at"),
)

# The HMAC key of attestation nonces, created by the first process that needs it and shared by every
# process and instance on this database (one row, id 1).
attestation_keys = sa.Table(
    "attestation_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("secret", sa.LargeBinary, nullable=False),
    sa.Column("created_at", TS, nullable=False),
)

# An administrator's statement that the enrolment (profile, SCEP transactionID) is the named device's: the
# certificate issued for it carries that device id (certificates.enrolled_device_id), which lets it replace
# the device's current certificate at its first attestation.
device_enrolments = sa.Table(
    "device_enrolments",
    metadata,
    sa.Column("profile", sa.String(64), primary_key=True),
    sa.Column("transaction_id", sa.String(255), primary_key=True),
    sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id"), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("created_by", sa.String(255)),
    sa.Index("ix_device_enrolments_device", "device_id"),
)

external_cas = sa.Table(
    "external_cas",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("cert_der", sa.LargeBinary, nullable=False),
    sa.Column("fingerprint_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("policy", sa.String(16), nullable=False),  # fail-open | fail-closed
    sa.Column("created_at", TS, nullable=False),
    sa.Column("created_by", sa.String(255)),
)

# An MDM whose device records the device lifecycle follows (`scep-server mdm configure`): its kind (jamf |
# intune), connection settings (no secret: a client secret is named by a file or an environment variable of the
# host), the SHA-256 of the generated webhook secret, and the state of its periodic sync.
mdm_sources = sa.Table(
    "mdm_sources",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("config", sa.Text, nullable=False),  # JSON
    sa.Column("webhook_secret_sha256", sa.String(64)),
    sa.Column("delta_link", sa.Text),  # Microsoft Graph: where the next delta query of Entra devices starts
    sa.Column("directory_disabled", sa.Text),  # Microsoft Graph: JSON list of the Entra device ids disabled
    sa.Column("sync_claimed_until", TS),  # the process that claims a sync holds it until then
    # when the sync holding the claim began (NULL: none runs; a claim then only keeps the periodic sync's period)
    sa.Column("sync_started_at", TS),
    # when the process holding that claim last renewed it (every few seconds while its sync runs): not renewed for
    # scep_server.mdm.service.SYNC_LEASE_SECONDS, the claim can be taken. NULL or before sync_started_at: made by a
    # version that does not renew, honoured until sync_claimed_until
    sa.Column("sync_renewed_at", TS),
    sa.Column("last_sync_at", TS),
    sa.Column("last_sync_outcome", sa.Text),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
)

# What an MDM last said of one of our devices: the sync compares with it, and a device that left the MDM's
# inventory is deleted here only after the grace period counted from `missing_since`.
mdm_devices = sa.Table(
    "mdm_devices",
    metadata,
    sa.Column("source", sa.String(32), primary_key=True),
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("mdm_id", sa.String(255)),  # the MDM's own record id
    sa.Column("state", sa.String(16), nullable=False),  # managed | unmanaged | disabled | missing
    sa.Column("last_seen_at", TS),
    sa.Column("missing_since", TS),
    sa.Column("updated_at", TS, nullable=False),
    # the time the MDM gave its latest webhook event about the device: an older one delivered later is not applied
    sa.Column("last_event_at", TS),
)
