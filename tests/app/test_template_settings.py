"""Template settings: what `profile add --settings-json` accepts, what first start creates, how stored profiles read."""
from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from scep_server.profiles import ProfileStore
from trustkit.db import writer
from scep_server.store.tables import profiles
from tests.factories import NOW, make_ca, register_ca

DEFAULT_SUBJECT_ATTRIBUTES = ["CN", "O", "OU", "C", "serialNumber", "UID"]


def test_first_start_and_new_profiles_allow_no_san_and_the_default_subject_attributes(cli):
    cli("profile", "add", "plain")
    for name in ("default", "plain"):
        template = json.loads(cli("profile", "show", name))["settings"]["template"]
        assert template["san_types"] == [] and template["san_patterns"] == {}
        assert template["subject_attributes"] == DEFAULT_SUBJECT_ATTRIBUTES
        assert template["allow_sha1_csr"] is False and template["allow_rsa_exponent_3"] is False


def test_settings_json_sets_the_template(cli):
    settings = {"template": {"san_types": ["dns", "email"], "dns_suffixes": ["Kiosk.Example.com."],
                             "email_domains": ["example.com"], "subject_attributes": ["CN", "O"],
                             "subject_patterns": {"CN": "kiosk-[0-9]{1,4}"}, "san_patterns": {"dns": "kiosk-.*"},
                             "allow_ec": True, "allow_sha1_csr": True}}
    cli("profile", "add", "kiosk", "--settings-json", json.dumps(settings))
    template = json.loads(cli("profile", "show", "kiosk"))["settings"]["template"]
    assert template["dns_suffixes"] == ["kiosk.example.com"]
    assert template["subject_patterns"] == {"CN": "kiosk-[0-9]{1,4}"} and template["san_types"] == ["dns", "email"]
    assert template["allow_ec"] is True and template["allow_sha1_csr"] is True


@pytest.mark.parametrize("template,text", [
    ({"subject_patterns": {"CN": "(unclosed"}}, "invalid pattern '(unclosed'"),
    ({"san_type": ["dns"]}, "san_type"),  # a misspelt key is an error, not a silently unrestricted profile
    ({"subject_attributes": ["CN"], "subject_patterns": {"O": "x"}}, "subject_patterns names O"),
    ({"san_patterns": {"dns": "x"}}, "san_patterns names dns"),
    ({"subject_attributes": ["CN", "favouriteColour"]}, "favouriteColour"),
    ({"dns_suffixes": ["*.example.com"]}, "is not a domain name"),
    ({"min_rsa_bits": 4096, "max_rsa_bits": 3072}, "min_rsa_bits is above max_rsa_bits"),
    ({"min_rsa_bits": 1024}, "min_rsa_bits"),
])
def test_settings_json_refuses_bad_templates(cli, template, text):
    out = cli("profile", "add", "bad", "--settings-json", json.dumps({"template": template}), code=1)
    assert "invalid --settings-json" in out and text in out


async def test_stored_profiles_read_new_keys_as_their_restrictive_defaults(engine, tmp_path):
    """A profile stored before the template grew its subject and SAN rules."""
    await register_ca(engine, make_ca(tmp_path / "ca"))
    store = ProfileStore(engine, cache_seconds=0)
    # what the previous version wrote: every template key of its time, SAN types all four by default
    before = {"template": {"validity_days": 365, "key_usage": ["digital_signature"],
                           "extended_key_usage": ["client_auth"], "min_rsa_bits": 2048, "allow_ec": False,
                           "subject": "csr", "san_types": ["dns", "email", "uri", "ip"], "max_sans": 20},
              "allow_renewal": True, "require_approval": False}
    partial = {"template": {"validity_days": 30}}  # written by hand: keys absent
    for name, settings in (("before", before), ("partial", partial)):
        await store.create(name, ca="default", challenge_kind="static", static_secret="s", now=NOW)
        async with writer(engine).begin() as conn:
            await conn.execute(profiles.update().where(profiles.c.name == name).values(settings=json.dumps(settings)))
    old = (await store.get("before")).settings.template
    assert old.san_types == ["dns", "email", "uri", "ip"]  # what it stores, it keeps
    assert old.subject_attributes == DEFAULT_SUBJECT_ATTRIBUTES and old.subject_patterns == {}
    assert not old.allow_sha1_csr and not old.allow_rsa_exponent_3 and old.max_rsa_bits == 8192
    hand = (await store.get("partial")).settings.template
    assert hand.validity_days == 30 and hand.san_types == [] and hand.subject_attributes == DEFAULT_SUBJECT_ATTRIBUTES
    async with engine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(profiles))).scalar() == 2


def test_set_template_replaces_a_profiles_template_and_keeps_the_rest(cli):
    cli("profile", "add", "wide", "--require-approval",
        "--settings-json", json.dumps({"template": {"san_types": ["dns", "email", "uri", "ip"]}}))
    out = json.loads(cli("profile", "set-template", "wide", json.dumps({"san_types": ["dns"], "validity_days": 90})))
    assert out["san_types"] == ["dns"] and out["validity_days"] == 90
    shown = json.loads(cli("profile", "show", "wide"))["settings"]
    assert shown["template"]["san_types"] == ["dns"] and shown["template"]["max_sans"] == 20
    assert shown["require_approval"] is True
    assert "invalid template" in cli("profile", "set-template", "wide", '{"san_type": []}', code=1)
    assert "nope" in cli("profile", "set-template", "nope", "{}", code=1)
