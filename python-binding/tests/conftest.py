"""Shared fixtures: every behaviour test runs once per event loop.

``loop_factory`` is parametrized over the stdlib loop (``asyncio``) and ringloop on each backend
(``ringloop-io_uring``, ``ringloop-epoll``). The ringloop parameters are skipped, with the import
error as the reason, when ``import ringloop`` fails -- unless ``RINGLOOP_REQUIRE=1`` (set by
``make test``), which turns that skip into a failure so a broken install cannot pass silently.
"""

import asyncio
import os
import shutil
import ssl
import subprocess

import pytest

REQUIRE_RINGLOOP = os.environ.get("RINGLOOP_REQUIRE") == "1"
LOOP_KINDS = ("asyncio", "ringloop-io_uring", "ringloop-epoll")


def _import_ringloop():
    try:
        import ringloop
    except Exception as exc:  # ImportError, or OSError when libringloop.so cannot be loaded
        return None, exc
    return ringloop, None


def ringloop_or_skip():
    """The ringloop module, or skip (fail under RINGLOOP_REQUIRE=1) with the import error."""
    ringloop, exc = _import_ringloop()
    if ringloop is None:
        reason = f"ringloop is not importable: {type(exc).__name__}: {exc}"
        if REQUIRE_RINGLOOP:
            pytest.fail(reason + " (RINGLOOP_REQUIRE=1)", pytrace=False)
        pytest.skip(reason)
    return ringloop


def pytest_report_header(config):
    ringloop, exc = _import_ringloop()
    if ringloop is None:
        where = f"not importable ({type(exc).__name__}: {exc})"
    else:
        where = ringloop.__file__
    return [f"ringloop: {where}", f"RINGLOOP_REQUIRE={int(REQUIRE_RINGLOOP)}"]


class LoopFactory:
    """Creates loops of one kind; ``kind`` is the test id (``asyncio``, ``ringloop-epoll``...)."""

    def __init__(self, kind, create, backend=None):
        self.kind = kind
        self.backend = backend
        self._create = create

    @property
    def is_ringloop(self):
        return self.backend is not None

    def __call__(self):
        return self._create()

    def __repr__(self):
        return f"<LoopFactory {self.kind}>"


@pytest.fixture(params=LOOP_KINDS)
def loop_factory(request):
    kind = request.param
    if kind == "asyncio":
        return LoopFactory(kind, asyncio.new_event_loop)
    backend = kind.split("-", 1)[1]
    ringloop = ringloop_or_skip()
    try:
        probe = ringloop.Loop(backend=backend)
    except Exception as exc:
        reason = f"ringloop.Loop(backend={backend!r}) failed: {type(exc).__name__}: {exc}"
        if REQUIRE_RINGLOOP:
            pytest.fail(reason + " (RINGLOOP_REQUIRE=1)", pytrace=False)
        pytest.skip(reason)
    probe.close()
    return LoopFactory(kind, lambda: ringloop.Loop(backend=backend), backend)


class UnexpectedErrors:
    """The loop's exception handler during a test: what reaches it is a bug unless the test
    installs its own handler (tests about error reporting do)."""

    def __init__(self):
        self.contexts = []

    def __call__(self, loop, context):
        self.contexts.append(context)

    def describe(self):
        return "\n".join(
            f"- {c.get('message')}: {c.get('exception')!r}" for c in self.contexts
        )


@pytest.fixture
def loop(loop_factory):
    """A fresh loop of the parametrized kind, set as the current loop, closed afterwards.

    Exceptions that reach the loop's exception handler (raised by callbacks or protocol methods,
    never retrieved from tasks) fail the test, unless the test set its own handler.
    """
    loop = loop_factory()
    unexpected = UnexpectedErrors()
    loop.set_exception_handler(unexpected)
    asyncio.set_event_loop(loop)
    try:
        yield loop
    finally:
        asyncio.set_event_loop(None)
        if not loop.is_closed():
            if not loop.is_running():
                try:
                    _cancel_all_tasks(loop)
                    loop.run_until_complete(loop.shutdown_asyncgens())
                finally:
                    loop.close()
    if loop.get_exception_handler() is unexpected and unexpected.contexts:
        pytest.fail("the loop's exception handler was called:\n" + unexpected.describe(), pytrace=False)


def _cancel_all_tasks(loop):
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


@pytest.fixture(autouse=True)
def _restore_event_loop_policy():
    """Tests that install ringloop's policy must not leak it into later tests."""
    policy = asyncio.get_event_loop_policy()
    yield
    asyncio.set_event_loop_policy(policy)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """A self-signed certificate for ``localhost``/127.0.0.1 and its key (openssl CLI)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return str(cert), str(key)


@pytest.fixture
def server_ssl_context(tls_files):
    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


@pytest.fixture
def client_ssl_context(tls_files):
    cert, _ = tls_files
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cert)
    return context
