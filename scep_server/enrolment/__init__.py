"""Enrolment over SCEP: the service (service.py), the chain of checks in front of the issuer (checks.py), the
approval workflow (approval.py), the reconciler of unacknowledged delegated issuance (reconcile.py), and the
storage behind them as one protocol (repository.py) with SQL (sql.py) and in-memory (memory.py) implementations:
docs/scep.md "Enrolment".
"""
from .model import (ACK_STALE_AFTER, MAX_TRANSACTION_ID, ApprovalRefused, ChallengeRejected, ChallengeVerifier,
                    EnrollmentRequest, NoNextCA, StaticChallenge, challenge_password, req_has_challenge)
from .service import ScepService, scep_threads

__all__ = ["ACK_STALE_AFTER", "MAX_TRANSACTION_ID", "ApprovalRefused", "ChallengeRejected", "ChallengeVerifier",
           "EnrollmentRequest", "NoNextCA", "ScepService", "StaticChallenge", "challenge_password",
           "req_has_challenge", "scep_threads"]
