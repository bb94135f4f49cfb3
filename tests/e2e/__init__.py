"""E2E suite: a package so its conftest and helpers import as e2e.* next to tests/conftest.py."""
