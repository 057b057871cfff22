"""The labels of a CA directory's keys in a PKCS#11 token, recorded in the directory in place of key files.

The deployment's first CA has none: its keys are labelled ``ca.ca_key_label`` and ``ca.ra_key_label``. A CA
rollover in the token (scep_server.ca.rollover) generates the next CA's keys under labels of their own and
records them, while prepared, in the current CA's directory (``next-key-labels.json``), and on activation in the
new CA's directory (``key-labels.json``): every process loads that CA's keys by them
(scep_server.ca.authority.load_ca). The record is JSON: ``{"ca": "<CA key label>", "ra": "<RA key label>"}``;
a renewed RA's key keeps its own label beside its certificate (``ra-<n>.label``, scep_server.ca.rafiles).
"""
from __future__ import annotations

import json
from pathlib import Path

from .keys import durable_write

LABELS_FILE = "key-labels.json"
"""In a CA directory made by a rollover in the token: the labels of its CA and first RA keys."""
NEXT_LABELS_FILE = "next-key-labels.json"
"""In a CA directory with a rollover prepared in the token: the labels of the next CA's and RA's keys."""


def read_labels(path: Path) -> tuple[str, str] | None:
    """(CA key label, RA key label) recorded in ``path``; None when there is no such file. ValueError when it
    is not a record of two labels."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a key label record: {exc}") from None
    if not (isinstance(data, dict) and all(isinstance(data.get(k), str) and data[k] for k in ("ca", "ra"))):
        raise ValueError(f"{path} is not a key label record (\"ca\" and \"ra\", each a label)")
    return data["ca"], data["ra"]


def write_labels(path: Path, labels: tuple[str, str]) -> None:
    """Record (CA key label, RA key label) in ``path``, created exclusively (never an overwrite)."""
    ca, ra = labels
    durable_write(path, json.dumps({"ca": ca, "ra": ra}).encode() + b"\n", mode=0o644, exclusive=True)


def directory_store(directory: Path, key_store):
    """The key store of the CA in ``directory``: with the labels its record names, or the deployment's."""
    return key_store.for_labels(read_labels(directory / LABELS_FILE))
