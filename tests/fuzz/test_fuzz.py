"""Fuzzing with mutated valid messages (bit flips, truncations, length changes, splices, oversized OIDs,
indefinite lengths, deep nesting): the SCEP codec, the CRL parser and the HTTP handler end every input in
their own error (never a 5xx), within 50 ms of CPU. bench/fuzz.py runs the same fuzzer for longer."""
from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scep_server.web.scep import MAX_MESSAGE_BYTES

from . import harness
from .corpus import elements, mutate, seeds

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SEED_NODES = {}


def _mutant(which: int, rng_seed: int) -> bytes:
    s = seeds()
    base = (list(s.scep) + [s.crl])[which]
    if which not in SEED_NODES:
        SEED_NODES[which] = elements(base)
    return mutate(base, random.Random(rng_seed), SEED_NODES[which])


@FUZZ
@given(which=st.integers(0, 2), rng_seed=st.integers(0, 2**32 - 1))
def test_the_scep_codec_raises_only_its_own_errors_within_the_cpu_budget(which, rng_seed):
    data = _mutant(which, rng_seed)
    spent = harness.codec(data)
    if len(data) <= MAX_MESSAGE_BYTES:  # larger bodies never reach the codec (HTTP 413)
        assert spent < harness.CPU_BUDGET, f"{spent * 1000:.1f} ms for {len(data)} bytes"


@FUZZ
@given(rng_seed=st.integers(0, 2**32 - 1))
def test_the_crl_parser_raises_only_crl_format_error_within_the_cpu_budget(rng_seed):
    data = _mutant(3, rng_seed)
    spent = harness.crl(data)
    assert spent < harness.CPU_BUDGET, f"{spent * 1000:.1f} ms for {len(data)} bytes"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = harness.Server(tmp_path_factory.mktemp("fuzz") / "data").start()
    srv.http(seeds().scep[0])  # warm: first-use imports and caches
    yield srv
    srv.stop()


@settings(FUZZ, max_examples=60)
@given(which=st.integers(0, 2), rng_seed=st.integers(0, 2**32 - 1))
def test_the_http_handler_never_answers_5xx_and_stays_within_the_cpu_budget(server, which, rng_seed):
    data = _mutant(which, rng_seed)
    status, spent = server.http(data)
    assert status in (200, 400, 413), status
    if spent >= harness.CPU_BUDGET:
        spent = harness.retimed(server.http, data)
    assert spent < harness.CPU_BUDGET, f"{spent * 1000:.1f} ms for {len(data)} bytes (HTTP {status})"
