from tests.binding.conftest import api, clock, server  # noqa: F401 - the binding tests' application fixtures
