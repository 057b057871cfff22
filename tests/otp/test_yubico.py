"""Validation protocol 2.0 codec: signatures (Test_vectors.adoc), request checks, reply layout."""
from __future__ import annotations

import base64
from datetime import datetime, timezone

import pytest

from otp import yubico
from otp.yubico import ProtocolError, Status

VECTOR_KEY = base64.b64decode("mG5be6ZJU1qBGz24yPh/ESM3UdU=")
VECTOR_REQUEST = "id=1&nonce=jrFwbaYFhn0HoxZIsd9LQ6w2ceU&otp=vvungrrdhvtklknvrtvuvbbkeidikkvgglrvdgrfcdft"
VECTOR_REQUEST_H = "+ja8S3IjbX593/LAgTBixwPNGX4="


def test_request_signature_vector():
    assert yubico.sign(yubico.parse_params(VECTOR_REQUEST), VECTOR_KEY) == VECTOR_REQUEST_H


def test_response_signature_vector():
    fields = {"nonce": "0123456789abcdef", "otp": "cccccckdvvulethkhtvkrtbeukiettvfceekurncllcj", "sl": "25",
              "status": "OK", "t": "2019-06-06T05:14:15Z0369"}
    assert yubico.sign(fields, VECTOR_KEY) == "iCV9uFJDtuyELQsxFPnR80Yj2XU="


@pytest.mark.parametrize("h_as_sent", [
    "%2Bja8S3IjbX593%2FLAgTBixwPNGX4%3D",  # everything escaped (the doc's form)
    "%2Bja8S3IjbX593/LAgTBixwPNGX4%3D",  # ykclient: + and = escaped, / kept
    "%2Bja8S3IjbX593/LAgTBixwPNGX4=",  # yubico-client: only + escaped
    "+ja8S3IjbX593/LAgTBixwPNGX4=",  # nothing escaped: a raw + that form decoding would turn into a space
])
def test_signature_accepted_however_h_is_escaped(h_as_sent):
    # `h` in the middle, parameters unsorted: the server sorts, it never signs the raw text
    raw = f"otp=vvungrrdhvtklknvrtvuvbbkeidikkvgglrvdgrfcdft&h={h_as_sent}&id=1&nonce=jrFwbaYFhn0HoxZIsd9LQ6w2ceU"
    params = yubico.parse_params(raw)
    assert params["h"] == VECTOR_REQUEST_H
    assert yubico.signature_matches(params, VECTOR_KEY)


def test_signature_with_space_for_plus_still_matches():
    params = yubico.parse_params(VECTOR_REQUEST) | {"h": VECTOR_REQUEST_H.replace("+", " ")}
    assert yubico.signature_matches(params, VECTOR_KEY)


def test_signature_mismatch():
    params = yubico.parse_params(VECTOR_REQUEST + "&h=" + VECTOR_REQUEST_H.replace("j", "k"))
    assert not yubico.signature_matches(params, VECTOR_KEY)
    params = yubico.parse_params(VECTOR_REQUEST + "&timestamp=1&h=" + VECTOR_REQUEST_H.replace("+", "%2B"))
    assert not yubico.signature_matches(params, VECTOR_KEY)  # an added field changes the signed text
    assert not yubico.signature_matches(yubico.parse_params(VECTOR_REQUEST), VECTOR_KEY)  # no h at all


def test_values_are_url_decoded_before_signing():
    params = yubico.parse_params("id=1&nonce=abc%44efghijklmnopq&otp=x")
    assert params["nonce"] == "abcDefghijklmnopq"
    assert yubico.signature_base(params) == b"id=1&nonce=abcDefghijklmnopq&otp=x"


@pytest.mark.parametrize("raw_id", ["", "0", "abc", "12345678901", "-1", "1.5"])
def test_bad_client_id_is_missing_parameter(raw_id):
    with pytest.raises(ProtocolError) as exc:
        yubico.parse_client_id({"id": raw_id} if raw_id else {})
    assert exc.value.status is Status.MISSING_PARAMETER


def test_client_id_parses():
    assert yubico.parse_client_id({"id": "0042"}) == 42
    assert yubico.parse_client_id({"id": "9999999999"}) == 9999999999


GOOD = {"otp": "vvungrrdhvtklknvrtvuvbbkeidikkvgglrvdgrfcdft", "nonce": "jrFwbaYFhn0HoxZIsd9LQ6w2ceU"}


@pytest.mark.parametrize("change,status", [
    ({"otp": ""}, Status.MISSING_PARAMETER),
    ({"nonce": ""}, Status.MISSING_PARAMETER),
    ({"nonce": "short"}, Status.MISSING_PARAMETER),
    ({"nonce": "a" * 41}, Status.MISSING_PARAMETER),
    ({"nonce": "abcdefghijklmnop-"}, Status.MISSING_PARAMETER),  # YSA-2020-01: alphanumeric only
    ({"sl": "101"}, Status.MISSING_PARAMETER),
    ({"sl": "half"}, Status.MISSING_PARAMETER),
    ({"timeout": "1s"}, Status.MISSING_PARAMETER),
    ({"otp": "vvungrrd\r\nstatus=OK"}, Status.BAD_OTP),
])
def test_request_validation(change, status):
    params = {k: v for k, v in (GOOD | change).items() if v != "" or k not in change}
    with pytest.raises(ProtocolError) as exc:
        yubico.parse_verify_request(params, 1)
    assert exc.value.status is status


def test_request_parses_options():
    req = yubico.parse_verify_request(GOOD | {"timestamp": "1", "sl": "secure", "timeout": "8", "h": "x"}, 7)
    assert (req.client_id, req.want_timestamp, req.sl, req.timeout, req.signed) == (7, True, "secure", 8, True)
    for word in ("SECURE", "Fast"):  # YK-VAL reads the words in any case
        assert yubico.parse_verify_request(GOOD | {"sl": word}, 7).sl == word.lower()
    req = yubico.parse_verify_request(GOOD | {"timestamp": "0", "sl": "0"}, 7)
    assert not req.want_timestamp and req.sl == "0" and not req.signed
    assert yubico.parse_verify_request(GOOD | {"otp": " " + GOOD["otp"] + " "}, 1).otp == GOOD["otp"]


def test_t_format():
    assert yubico.format_t(datetime(2019, 6, 6, 5, 14, 15, 369999, tzinfo=timezone.utc)) == "2019-06-06T05:14:15Z0369"


def test_response_layout_and_signature():
    now = datetime(2026, 11, 23, 10, 0, 1, 7000, tzinfo=timezone.utc)
    resp = yubico.VerifyResponse(Status.OK, otp=GOOD["otp"], nonce=GOOD["nonce"], sl=100, timestamp=1019200,
                                 sessioncounter=2, sessionuse=0)
    body = yubico.encode_response(resp, VECTOR_KEY, now)
    assert body.endswith("status=OK\r\n\r\n")
    lines = body.split("\r\n")
    assert lines[-2:] == ["", ""] and all(lines[:-2])
    assert [line.split("=", 1)[0] for line in lines[:-2]] == [
        "h", "t", "otp", "nonce", "sl", "timestamp", "sessioncounter", "sessionuse", "status"]
    fields = yubico.decode_response(body)
    assert fields["t"] == "2026-11-23T10:00:01Z0007"
    assert yubico.signature_matches(fields, VECTOR_KEY)
    # every emitted field is covered: changing any one breaks the signature
    for name in fields:
        if name != "h":
            assert not yubico.signature_matches(fields | {name: fields[name] + "0"}, VECTOR_KEY)


def test_error_response_has_only_h_t_status():
    body = yubico.encode_response(yubico.VerifyResponse(Status.NO_SUCH_CLIENT), b"", datetime.now(timezone.utc))
    fields = yubico.decode_response(body)
    assert list(fields) == ["h", "t", "status"]
    assert yubico.signature_matches(fields, b"")  # unknown client: signed with an empty key, as YK-VAL does


def test_response_refuses_whitespace_in_values():
    with pytest.raises(ValueError):
        yubico.encode_response(yubico.VerifyResponse(Status.OK, otp="a b"), b"k", datetime.now(timezone.utc))
