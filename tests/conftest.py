"""Shared fixtures live in tests/fixtures/, one module per real component the tests run."""

pytest_plugins = [
    "tests.fixtures.tools",
    "tests.fixtures.tiny",
    "tests.fixtures.cluster",
    "tests.fixtures.s3",
    "tests.fixtures.prometheus",
    "tests.fixtures.openai_server",
]
