"""A setup guide of docs/ as the tests follow it: its `scep-server` commands (from the fenced shell blocks, as
argument lists) and its tables of values to enter in the MDM, section by section. The tests take both from the
guide itself, so that the page and what is tested cannot drift apart."""
from __future__ import annotations

import base64
import re
import shlex
import sys
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from scep_server.scep import client
from scep_server.scep.cms import parse_degenerate
from scep_server.scep.client import CertRepResult
from tests.factories import csr as make_csr
from tests.interop.conftest import device_key, pkcs_req
from tests.server import run

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^[ \t]*```sh\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+)$", re.MULTILINE)
ROW = re.compile(r"^\|\s*([^|]+?)\s*\|\s*(.+?)\s*\|\s*$", re.MULTILINE)
NDES_REGEX = re.compile(r"(?i)The enrollment challenge password is: <B> (?P<password>\S*)")  # what scrapers read
PLACEHOLDER = re.compile(r"<[a-z][a-z -]*>")


class Guide:
    def __init__(self, name: str) -> None:
        self.path = ROOT / "docs" / name
        self.text = self.path.read_text()
        self.taken: list[list[str]] = []

    def commands(self) -> list[list[str]]:
        """Every `scep-server ...` command of the page's shell blocks, as its argument list."""
        found: list[list[str]] = []
        for block in FENCE.findall(self.text):
            pending = ""
            for line in block.splitlines():
                pending += line.strip() + "\n"
                if pending.rstrip().endswith("\\"):
                    pending = pending.rstrip()[:-1] + " "
                    continue
                try:
                    argv = shlex.split(pending)
                except ValueError:  # a quoted argument goes on over the next line
                    continue
                pending = ""
                if argv and argv[0] == "scep-server":
                    found.append(argv)
        return found

    def command(self, *prefix: str) -> list[str]:
        """The one command of the page that starts with these words."""
        hits = [c for c in self.commands() if c[:len(prefix)] == list(prefix)]
        assert len(hits) == 1, f"{self.path.name}: {len(hits)} commands start with {' '.join(prefix)!r}"
        self.taken.append(hits[0])
        return hits[0]

    def not_taken(self) -> list[str]:
        """The page's commands no test step took: a command added to the guide must be followed too."""
        return [" ".join(c) for c in self.commands() if c not in self.taken]

    def table(self, heading: str) -> dict[str, str]:
        """The rows of the tables under `heading` (up to the next heading): field -> its value, the first
        `code` of the value's cell when it has one, else the cell's text."""
        return {field: codes[0] if codes else cell for field, (cell, codes) in self.cells(heading).items()}

    def cells(self, heading: str) -> dict[str, tuple[str, list[str]]]:
        """field -> (its value's cell, every `code` in it) of the tables under `heading`."""
        marks = list(HEADING.finditer(self.text))
        start = next((m for m in marks if m.group(2).strip() == heading), None)
        assert start is not None, f"{self.path.name} has no heading {heading!r}"
        end = next((m.start() for m in marks if m.start() > start.start()), len(self.text))
        rows = {}
        for field, value in ROW.findall(self.text[start.end():end]):
            if set(value) <= set("-| ") or field.endswith("field"):
                continue  # the separator and the header
            rows[field] = (value, re.findall(r"`([^`]+)`", value))
        assert rows, f"{self.path.name}: no table under {heading!r}"
        return rows


def fill(argv: list[str], values: dict[str, str]) -> list[str]:
    """The command with the guide's example values and placeholders replaced; none may remain."""
    out = []
    for arg in argv:
        for example, real in values.items():
            arg = arg.replace(example, real)
        assert not PLACEHOLDER.search(arg), f"placeholder left in {arg!r}"
        out.append(arg)
    return out


class Cli:
    """`scep-server` run as its own process on the deployment's data directory and database."""

    def __init__(self, data_dir: Path, db_url: str, env: dict[str, str]) -> None:
        self.data_dir, self.env = data_dir, {"SCEP_SERVER_DATABASE__URL": db_url, **env}

    async def __call__(self, argv: list[str]) -> tuple[str, str]:
        assert argv[0] == "scep-server"
        rc, out, err = await run(sys.executable, "-m", "scep_server.cli", "--data-dir", str(self.data_dir),
                                 *argv[1:], env=self.env, timeout=120)
        assert rc == 0, f"{' '.join(argv)} failed ({rc}):\n{out}\n{err}"
        return out, err


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def ndes_challenge(session: aiohttp.ClientSession, url: str, user: str, password: str,
                         encoding: str) -> str:
    """What an MDM does with a dynamic challenge URL: GET with Basic credentials, decode the page in the charset
    it names, read the password the way NDES scrapers do."""
    async with session.get(url, headers=basic(user, password)) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "text/html" and resp.charset == encoding
        assert resp.headers["Cache-Control"] == "no-store"
        page = (await resp.read()).decode(resp.charset)
    m = NDES_REGEX.search(page)
    assert m, page
    return m.group("password")


async def scepclient_enrol(scepclient: str, url: str, challenge: str, cn: str, workdir: Path):
    """micromdm's scepclient enrols a new PKCS#1 key; (rc, output, certificate or None)."""
    workdir.mkdir()
    device_key(workdir / "k.pem")
    rc, out, err = await run(scepclient, "-server-url", url, "-private-key", "k.pem", "-challenge", challenge,
                             "-cn", cn, cwd=workdir)
    pem = workdir / "client.pem"
    return rc, out + err, x509.load_pem_x509_certificate(pem.read_bytes()) if pem.exists() else None


async def enrol_with_san(session: aiohttp.ClientSession, url: str, key, cn: str, uri: str,
                         challenge: str) -> CertRepResult:
    """A device's PKCSReq whose CSR carries the subject and the URI SAN the MDM's template asks for (scepclient
    cannot put a SAN in its request)."""
    async with session.get(f"{url}?operation=GetCACert") as resp:
        assert resp.status == 200
        ra_der = parse_degenerate(await resp.read())[0][0]
    request = make_csr(key, cn, challenge=challenge, sans=[x509.UniformResourceIdentifier(uri)])
    body = pkcs_req(key, ra_der, challenge=None, content=request.public_bytes(serialization.Encoding.DER))
    async with session.post(f"{url}?operation=PKIOperation", data=body) as resp:
        assert resp.status == 200, await resp.text()
        return client.parse_cert_rep(await resp.read(), key, ra_cert_der=ra_der)


def fast_env() -> dict[str, str]:
    """A cheap scrypt cost for the challenge password (production: 17), for the command and the server alike."""
    return {"SCEP_SERVER_CHALLENGE__SCRYPT_LOG2_N": "10", "SCEP_SERVER_LOG__LEVEL": "warning"}


# ---------------------------------------------------------------- fenced blocks of any language, commands as lines

ANY_FENCE = re.compile(r"^[ \t]*```([\w+-]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.MULTILINE | re.DOTALL)


def blocks(doc: str, *languages: str) -> list[str]:
    """The fenced blocks of docs/`doc` whose info string is one of `languages` (all when none is given)."""
    text = (ROOT / "docs" / doc).read_text()
    return [m.group(2) for m in ANY_FENCE.finditer(text) if not languages or m.group(1) in languages]


def commands(doc: str, program: str = "scep-server") -> list[str]:
    """Every `program` command line of the guide's sh blocks, in order, continuation lines joined (with the
    program's name)."""
    out = []
    for block in blocks(doc, "sh"):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith(program + " "):
                out.append(line)
    return out


def split(line: str, values: dict[str, str] | None = None) -> list[str]:
    """A command line's arguments (without the program's name), split as a shell would, after each placeholder
    (`<tenant id>`, a path) is replaced by the test's value."""
    for placeholder, value in (values or {}).items():
        line = line.replace(placeholder, value)
    return shlex.split(line)[1:]


# ---------------------------------------------------------------- steps the MDM guides share

def single_des(profile: str) -> list[str]:
    """Not a step of a guide: micromdm's scepclient encrypts with single DES, which new profiles refuse (Apple
    devices do not; docs/scep.md "Client quirks")."""
    return ["scep-server", "profile", "update", profile, "--settings-json", '{"allow_single_des": true}']


async def trusted_ca(session: aiohttp.ClientSession, guide: "Guide", values: dict[str, str]
                     ) -> tuple[str, x509.Certificate]:
    """(URL, certificate) of the CA certificate, downloaded from where the guide's `curl -o` command takes it."""
    url = fill([re.search(r"curl -o \S+ (\S+)", guide.text).group(1)], values)[0]
    async with session.get(url) as resp:
        assert resp.status == 200, url
        return url, x509.load_der_x509_certificate(await resp.read())


async def static_profile(cli: "Cli", guide: "Guide", name: str, values: dict[str, str]) -> str:
    """Run the guide's `scep-server profile add NAME` (a static profile) and let scepclient use it; the secret
    the command printed."""
    out, _ = await cli(fill(guide.command("scep-server", "profile", "add", name), values))
    await cli(single_des(name))
    return re.search(r"^challenge: (\S+)$", out, re.MULTILINE).group(1)

