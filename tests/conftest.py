"""Shared fixtures: asyncio only (aiohttp and aiosqlite need it), retries without waits."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import stamina
from hypothesis import settings

from pipeline.errors import forget_secrets

# Property tests explore a fixed sequence of examples, so a run is repeatable: a failure seen once is seen again.
# (`HYPOTHESIS_PROFILE=explore` searches afresh each run, for hunting new counterexamples locally.)
settings.register_profile("repeatable", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

DATA = Path(__file__).parent / "data"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _fresh_secrets() -> Iterator[None]:
    """Each test starts with no remembered secrets: one test's short fake key must not scrub another's words."""
    forget_secrets()
    yield
    forget_secrets()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """A test that runs the CLI in-process installs its log handler on the root logger, bound to that test's
    captured stderr: remove it afterwards, so later tests do not log into a closed stream."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    loggers = {
        name: lg.level for name, lg in logging.Logger.manager.loggerDict.items() if isinstance(lg, logging.Logger)
    }
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in loggers.items():
        logging.getLogger(name).setLevel(lvl)


@pytest.fixture(autouse=True)
def _no_retry_waits() -> Iterator[None]:
    """Retries keep their attempt counts but do not sleep between attempts."""
    with stamina.set_testing(True, attempts=6, cap=True):
        yield
