"""Core tables of the application (the CA inventory, profiles, SCEP transactions, tokens, events)."""
from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

TS = sa.DateTime(timezone=True)

cas = sa.Table(
    "cas",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    # issuing: a CA this server runs; external: a customer's own CA ("bring your own CA")
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("cert_der", sa.LargeBinary, nullable=False),
    sa.Column("ski_hex", sa.String(128), nullable=False),
    sa.Column("fingerprint_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", TS, nullable=False),
)

profiles = sa.Table(
    "profiles",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("ca", sa.String(64), sa.ForeignKey("cas.name"), nullable=False),
    sa.Column("challenge_kind", sa.String(16), nullable=False),  # static | dynamic | delegated
    # static challenge: SHA-256 of the secret (a high-entropy random string), compared in constant time
    sa.Column("static_secret_sha256", sa.String(64)),
    # after a rotation with a grace period: the previous secret's SHA-256, accepted until previous_secret_until
    sa.Column("previous_secret_sha256", sa.String(64)),
    sa.Column("previous_secret_until", TS),
    # JSON text: certificate template and challenge settings (see scep_server.profiles.ProfileSettings)
    sa.Column("settings", sa.Text, nullable=False, server_default="{}"),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
)

certificates = sa.Table(
    "certificates",
    metadata,
    sa.Column("serial", sa.String(42), primary_key=True),  # lower-case hex, no leading zeros
    sa.Column("ca", sa.String(64), sa.ForeignKey("cas.name"), nullable=False),
    sa.Column("profile", sa.String(64)),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("sans", sa.Text, nullable=False, server_default="[]"),  # JSON list of "type:value"
    sa.Column("not_before", TS, nullable=False),
    sa.Column("not_after", TS, nullable=False),
    # valid | hold | revoked
    sa.Column("status", sa.String(16), nullable=False, server_default="valid"),
    sa.Column("revocation_reason", sa.Integer),
    sa.Column("revoked_at", TS),
    sa.Column("invalidity_date", TS),
    sa.Column("transaction_id", sa.String(255)),
    sa.Column("fingerprint_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("public_key_sha256", sa.String(64), nullable=False),
    sa.Column("der", sa.LargeBinary, nullable=False),
    sa.Column("issued_at", TS, nullable=False),
    sa.Column("first_used_at", TS),  # first successful management attestation (the day-91 rule)
    sa.Column("updated_at", TS, nullable=False),
    # renewal lineage: the certificate this one renewed (its signer), if any
    sa.Column("renewal_of", sa.String(42)),
    # when the day-91 "never used" clock started: the issue time, or the start of an unused predecessor's clock
    sa.Column("unused_since", TS),
    # the device id a trusted source named at enrolment (challenge expectation, MDM, admin pre-registration)
    sa.Column("enrolled_device_id", sa.String(64)),
    # the partition of its CA's partitioned CRLs its CRL Distribution Point names (crl.partitions); none for a
    # certificate issued while partitioning was off (it names the full CRL)
    sa.Column("crl_partition", sa.Integer),
    sa.Index("ix_certificates_status_issued", "status", "issued_at"),
    sa.Index("ix_certificates_renewal_of", "renewal_of"),
    sa.Index("ix_certificates_ca_status", "ca", "status"),
    sa.Index("ix_certificates_public_key", "public_key_sha256"),
    sa.Index("ix_certificates_issued", "issued_at", "serial"),  # lists: newest first (core_0005)
    sa.Index("ix_certificates_enrolled_device", "enrolled_device_id"),
    sa.Index("ix_certificates_not_after", "not_after"),
    # a partition's CRL entries, and the partitions whose certificates changed lately (core_0011)
    # (covering: a partition's CRL is read from the index alone, not from rows spread over the whole table)
    sa.Index("ix_certificates_crl_partition", "ca", "crl_partition", "status", "not_after", "serial", "revoked_at",
             "revocation_reason", "invalidity_date",
             postgresql_where=sa.text("crl_partition IS NOT NULL"), sqlite_where=sa.text("crl_partition IS NOT NULL")),
    sa.Index("ix_certificates_partition_updated", "ca", "updated_at",
             postgresql_where=sa.text("crl_partition IS NOT NULL"), sqlite_where=sa.text("crl_partition IS NOT NULL")),
)

# One row per (profile, SCEP transactionID): makes retries idempotent and carries pending enrolments.
scep_transactions = sa.Table(
    "scep_transactions",
    metadata,
    sa.Column("profile", sa.String(64), primary_key=True),
    sa.Column("transaction_id", sa.String(255), primary_key=True),
    # issued | pending | rejected | awaiting_ack (delegated: issued, delivered once the MDM acknowledged it)
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("message_type", sa.Integer, nullable=False),
    sa.Column("csr_der", sa.LargeBinary, nullable=False),
    sa.Column("public_key_sha256", sa.String(64), nullable=False),
    sa.Column("serial", sa.String(42), sa.ForeignKey("certificates.serial")),
    sa.Column("fail_text", sa.Text),
    sa.Column("decided_by", sa.String(255)),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    # a renewal: the serial of the signing certificate it renews (read when a pending renewal is approved)
    sa.Column("renewal_of", sa.String(42)),
    # a pending enrolment: the device its challenge named (a one-time challenge's), its certificate's when approved
    sa.Column("device_id", sa.String(255)),
    # SHA-256 of the SubjectPublicKeyInfo of the key that signed the request (migration core_0014; NULL before):
    # a CertPoll for the transaction is answered only when signed by that key, or by the CSR's
    sa.Column("signer_key_sha256", sa.String(64)),
    # the enrolment list's order, of one state or all; the state last: the dashboard's chart reads only this index
    sa.Index("ix_scep_transactions_state_created", "state", "created_at", "profile", "transaction_id"),
    sa.Index("ix_scep_transactions_created_state", "created_at", "profile", "transaction_id", "state"),
    # a profile's transactions of one key (migration core_0017): whether a request signed by another key than the
    # CSR's names a key the profile knows (enrolment.checks.ForeignSigner)
    sa.Index("ix_scep_transactions_key", "public_key_sha256", "profile"),
)

# A RenewalReq signed by one of our certificates that was refused (too early, a signer on hold, a device not
# active...): the same request is refused again, never issued once the reason stops holding (a captured request
# replayed inside the renewal window). request_sha256: of its signed attributes (PKIMessage.signed_sha256). At most
# RENEWAL_REFUSALS_PER_SIGNER per signer, and none once the signer has expired (pruned on write).
renewal_refusals = sa.Table(
    "renewal_refusals",
    metadata,
    sa.Column("signer_serial", sa.String(42), primary_key=True),
    sa.Column("request_sha256", sa.String(64), primary_key=True),
    sa.Column("refused_at", TS, nullable=False),
    sa.Column("signer_not_after", TS, nullable=False),
    sa.Index("ix_renewal_refusals_signer_not_after", "signer_not_after"),
)

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("scope", sa.String(16), nullable=False),  # admin | signin
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("disabled_at", TS),
    sa.Column("expires_at", TS),  # refused from then on (None: never expires)
    # when the token was last accepted, written at most once a minute per token and process (scep_server.tokens)
    sa.Column("last_used_at", TS),
    sa.Index("ix_api_tokens_created", "created_at", "id"),  # the list's page order
)

# The admin console's sessions (scep_server/console/sessions.py): the cookie holds a random id, the row only
# its SHA-256. token_id: the admin token signed in with (None for a trusted-header sign-in).
console_sessions = sa.Table(
    "console_sessions",
    metadata,
    sa.Column("id_sha256", sa.String(64), primary_key=True),
    sa.Column("token_id", sa.String(32)),
    sa.Column("principal", sa.String(255), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("last_seen_at", TS, nullable=False),
    sa.Column("expires_at", TS, nullable=False),  # the absolute lifetime's end
    sa.Column("ended_at", TS),  # signed out, or ended by the server
    sa.Index("ix_console_sessions_token", "token_id"),
    sa.Index("ix_console_sessions_expires", "expires_at"),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", TS, nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),  # e.g. pki.cert.issue, pki.cert.revoke, security.*
    sa.Column("subject", sa.String(255)),  # serial, device id, ...
    sa.Column("actor", sa.String(255)),
    sa.Column("data", sa.Text, nullable=False, server_default="{}"),
    # the hash chain ([audit] chain, scep_server/store/chain.py): NULL until sealed, 0 for the rows the anchor
    # covers (written before the chain was switched on), then 1, 2, 3 ... in chain order
    sa.Column("chain_seq", sa.BigInteger),
    sa.Column("chain_hash", sa.String(64)),  # SHA-256 (hex) of the previous link and this row's canonical encoding
    sa.Index("ix_events_kind_at", "kind", "at"),
    sa.Index("ix_events_subject", "subject"),
    sa.Index("ix_events_actor", "actor"),
    sa.Index("ix_events_chain", "chain_seq", "id"),
)

# The head of the audit chain: one row (id 1) once the chain is switched on; sealers lock it in turn.
events_chain = sa.Table(
    "events_chain",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("started_at", TS, nullable=False),
    sa.Column("anchor_count", sa.BigInteger, nullable=False),  # events written before the chain (chain_seq 0)
    sa.Column("anchor_hash", sa.String(64), nullable=False),  # the chain folded over those, in id order
    sa.Column("seq", sa.BigInteger, nullable=False),  # the last sealed link
    sa.Column("hash", sa.String(64), nullable=False),
)
