"""A SoftHSM token per test, in a temporary directory (SOFTHSM2_CONF points at a configuration made there)."""
from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import missing, require_tool

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "246810"
SO_PIN = "13579111"


@dataclass
class SoftHsm:
    module: str
    label: str
    directory: Path

    def ca_settings(self, **extra) -> dict:
        """The `[ca]` settings of a deployment whose keys are in this token."""
        return {"key_backend": "pkcs11", "pkcs11_module": self.module, "pkcs11_token_label": self.label, **extra}

    def env(self) -> dict[str, str]:
        """The environment variables that select this token for a `scep-server` run."""
        return {"SOFTHSM2_CONF": str(self.directory / "softhsm2.conf"), "SCEP_SERVER_CA__KEY_BACKEND": "pkcs11",
                "SCEP_SERVER_CA__PKCS11_MODULE": self.module, "SCEP_SERVER_CA__PKCS11_TOKEN_LABEL": self.label,
                "SCEP_CA_PKCS11_PIN": PIN}


@pytest.fixture
def softhsm(tmp_path, monkeypatch) -> SoftHsm:
    util = require_tool("softhsm2-util")
    if not Path(SOFTHSM_MODULE).is_file():
        missing(f"the SoftHSM PKCS#11 module {SOFTHSM_MODULE} is not installed (Debian package softhsm2)")
    directory = tmp_path / "softhsm"
    (directory / "tokens").mkdir(parents=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    monkeypatch.setenv("SCEP_CA_PKCS11_PIN", PIN)
    label = f"scep-{uuid.uuid4().hex[:12]}"
    subprocess.run([util, "--init-token", "--free", "--label", label, "--pin", PIN, "--so-pin", SO_PIN],
                   check=True, capture_output=True, env={"SOFTHSM2_CONF": str(conf), "PATH": "/usr/bin:/bin"})
    # SoftHSM reads its configuration and token directory when the library is initialised: start it afresh
    import pkcs11

    lib = pkcs11.lib(SOFTHSM_MODULE)
    lib.reinitialize()
    return SoftHsm(SOFTHSM_MODULE, label, directory)
