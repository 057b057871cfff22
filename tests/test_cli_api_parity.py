"""Every command that changes state has an API equivalent and every admin API change a command, so an
operator can script either; the exceptions are listed with their reason. A new command or route fails this
test until it is paired or listed."""
from __future__ import annotations

import click

from scep_server.app import create_app
from scep_server.cli import main
from tests.factories import settings_for

# command -> (method, route) of the API doing the same
PAIRS: dict[str, tuple[str, str]] = {
    "profile add": ("POST", "/api/v1/profiles"),
    "profile update": ("PATCH", "/api/v1/profiles/{name}"),
    "profile set-template": ("PATCH", "/api/v1/profiles/{name}"),  # {"settings": {"template": ...}}
    "profile delete": ("DELETE", "/api/v1/profiles/{name}"),
    "profile rotate-secret": ("POST", "/api/v1/profiles/{name}/rotate-secret"),
    "cert revoke": ("POST", "/api/v1/certificates/{serial}/revoke"),
    "cert hold": ("POST", "/api/v1/certificates/{serial}/hold"),
    "cert release": ("POST", "/api/v1/certificates/{serial}/release"),
    "crl publish": ("POST", "/api/v1/cas/{ca}/crl/publish"),
    "ca renew-ra": ("POST", "/api/v1/cas/{ca}/ra/renew"),
    "ca rollover prepare": ("POST", "/api/v1/cas/{ca}/rollover/prepare"),
    "ca rollover activate": ("POST", "/api/v1/cas/{ca}/rollover/activate"),
    "token create": ("POST", "/api/v1/tokens"),
    "token disable": ("POST", "/api/v1/tokens/{id}/disable"),
    "token rotate": ("POST", "/api/v1/tokens/{id}/rotate"),
    "challenge new": ("POST", "/api/v1/challenges/{profile}"),
    "enrolment approve": ("POST", "/api/v1/enrolments/{profile}/approve"),
    "enrolment reject": ("POST", "/api/v1/enrolments/{profile}/reject"),
    "device add": ("POST", "/api/v1/devices"),
    "device suspend": ("POST", "/api/v1/devices/{device_id}/{action}"),
    "device unsuspend": ("POST", "/api/v1/devices/{device_id}/{action}"),
    "device deactivate": ("POST", "/api/v1/devices/{device_id}/{action}"),
    "device reactivate": ("POST", "/api/v1/devices/{device_id}/{action}"),
    "device delete": ("DELETE", "/api/v1/devices/{device_id}"),
    "device remove-cert": ("DELETE", "/api/v1/devices/{device_id}/certificate"),
    "device preregister": ("POST", "/api/v1/devices/{device_id}/enrolments"),
    "ca add-external": ("POST", "/api/v1/external-cas"),
    "ca remove-external": ("DELETE", "/api/v1/external-cas/{name}"),
    "ca forget-external-crls": ("POST", "/api/v1/external-cas/{name}/forget-crls"),
    "yubikey import": ("POST", "/api/v1/yubikeys/import"),
    "yubikey revoke": ("POST", "/api/v1/yubikeys/{serial}/revoke"),
    "yubikey delete": ("DELETE", "/api/v1/yubikeys/{serial}"),
    "yubikey delete-factor": ("POST", "/api/v1/yubikeys/delete-factor"),
    "otp-client add": ("POST", "/api/v1/otp-clients"),
    "otp-client set": ("PATCH", "/api/v1/otp-clients/{id}"),
    "otp-client disable": ("POST", "/api/v1/otp-clients/{id}/disable"),
    "mdm sync": ("POST", "/api/v1/mdm/{source}/sync"),
    "mdm remove": ("DELETE", "/api/v1/mdm/{source}"),
}

# commands that change state and have no API equivalent, and why
CLI_ONLY = {
    "serve": "runs the server itself",
    "init": "creates the data directory, CA and schema before any server can answer",
    "db upgrade": "migrates the schema the server needs to start",
    "backup": "copies the database file, the CA directory and the secrets of the host into a directory of the host",
    "restore": "writes a new data directory on the host, for a server not yet started on it",
    "ca passphrase change": "re-encrypts the key files of the host's CA directory and writes its passphrase file "
                            "(or prints the value the host's environment must then hold): host-only, like `init`",
    "otp kek rotate": "re-seals the stored keys under a new key file of the host and swaps the files: host-only, "
                      "like `ca passphrase change`",
    "challenge configure": "names files and environment variables of the host (secrets the server then sends "
                           "to the hosts the same settings name): host-only by design, docs/api.md \"Profiles\"",
    "mdm configure jamf": "names files and environment variables of the host (the API client's secret), as "
                          "`challenge configure` does: host-only by design, docs/mdm.md",
    "mdm configure intune": "names files and environment variables of the host (the app's client secret), as "
                            "`challenge configure` does: host-only by design, docs/mdm.md",
}

# commands that change nothing
READ_ONLY = {"profile list", "profile show", "cert list", "cert show", "ca list", "ca list-external",
             "crl show", "token list", "challenge status", "device list", "device show", "enrolment list",
             "yubikey report", "otp-client list", "audit list", "audit verify", "completion", "config show",
             "config check", "mdm list", "mdm show"}

# state-changing routes that are not administration (no command: they serve devices and sign-in services)
NOT_ADMIN = {
    ("POST", "/api/v1/otp/verify"): "sign-in services verify OTPs",
    ("POST", "/api/v1/attestation/challenge"): "sign-in services ask for an attestation nonce",
    ("POST", "/api/v1/attestation/verify"): "sign-in services verify a device's attestation",
}


def _commands() -> set[str]:
    found: set[str] = set()

    def walk(cmd: click.Command, path: list[str], parent: click.Context | None) -> None:
        ctx = click.Context(cmd, parent=parent, info_name=path[-1] if path else "scep-server")
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), [*path, name], ctx)
        else:
            found.add(" ".join(path))

    walk(main, [], None)
    return found


def _changing_routes(tmp_path) -> set[tuple[str, str]]:
    app = create_app(settings_for(tmp_path / "data"))  # every capability on
    return {(r.method, r.resource.canonical) for r in app.router.routes()
            if r.method not in ("GET", "HEAD", "OPTIONS") and r.resource.canonical.startswith("/api/v1/")}


def test_every_state_changing_command_has_an_api_equivalent():
    commands = _commands()
    unclassified = sorted(commands - PAIRS.keys() - CLI_ONLY.keys() - READ_ONLY)
    assert unclassified == [], "pair these commands with an API route, or say why they have none"
    assert sorted((PAIRS.keys() | CLI_ONLY.keys() | READ_ONLY) - commands) == [], "listed commands that are gone"


def test_every_admin_api_change_has_a_command(tmp_path):
    routes = _changing_routes(tmp_path)
    paired = set(PAIRS.values())
    assert sorted(paired - routes) == [], "paired routes that the router does not have"
    assert sorted(routes - paired - NOT_ADMIN.keys()) == [], "give these routes a command, or say why not"
