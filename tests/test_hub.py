"""asarm.hub: whether the hub can be reached (through proxies, as the hub client would connect) and which hub
client errors mean "not on the hub". Loopback only: the hub and the proxy are tiny local HTTP servers, and
name lookups of anything but this machine fail."""

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from asarm.hub import _not_on_hub, hub_reachable, unreachable_reason

PROXY_VARS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
              "NO_PROXY", "no_proxy")


@pytest.fixture
def online(monkeypatch):
    """Offline mode unset, no proxy configured, and no name lookup beyond this machine (an unresolvable
    name fails at once, as on a node without DNS)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", *PROXY_VARS):
        monkeypatch.delenv(var, raising=False)
    real = socket.getaddrinfo

    def local_names_only(host, *args, **kwargs):
        if host not in ("localhost", "127.0.0.1", "::1"):
            raise socket.gaierror(socket.EAI_NONAME, f"name lookup blocked in tests: {host}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_names_only)


@pytest.fixture
def serve():
    """``serve(status) -> (url, requests)``: an HTTP server on 127.0.0.1 that answers every request with
    ``status``; ``requests`` collects the request lines it got (a proxy sees the absolute URL)."""
    servers = []

    def start(status: int):
        requests = []

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                requests.append(self.requestline)
                self.send_response(status)
                if 300 <= status < 400:  # elsewhere, where nothing answers: the first answer must be enough
                    self.send_header("Location", "http://hub.invalid/")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_HEAD = do_GET = _answer

            def log_message(self, *args):  # keep the test output clean
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", requests

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def closed_port_url() -> str:
    """The URL of a local port that nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("status", [200, 404, 503, 302])
def test_any_http_answer_means_reachable(online, serve, monkeypatch, status):
    url, requests = serve(status)
    monkeypatch.setenv("HF_ENDPOINT", url)
    assert hub_reachable() and unreachable_reason() is None
    assert requests and requests[0].startswith("HEAD / ")


def test_a_closed_port_or_an_unknown_name_is_unreachable_and_fast(online, monkeypatch):
    for endpoint in (closed_port_url(), "http://hub.invalid"):
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        t0 = time.perf_counter()
        assert not hub_reachable()
        assert time.perf_counter() - t0 < 2.0
    assert unreachable_reason().startswith("hub.invalid cannot be reached")


def test_no_answer_in_time_is_unreachable_within_the_timeout(online, monkeypatch):
    """However the time goes: a server that accepts and never answers, or a name lookup that hangs."""
    real = socket.getaddrinfo

    def hanging_lookup(host, *args, **kwargs):
        if host == "slow-dns.invalid":
            time.sleep(3)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging_lookup)
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        for endpoint in (f"http://127.0.0.1:{silent.getsockname()[1]}", "http://slow-dns.invalid"):
            monkeypatch.setenv("HF_ENDPOINT", endpoint)
            t0 = time.perf_counter()
            assert not hub_reachable(timeout=0.5)
            assert time.perf_counter() - t0 < 1.5, endpoint


@pytest.mark.parametrize("proxy_var", ["HTTP_PROXY", "http_proxy"])
def test_the_hub_is_reached_through_the_proxy_the_environment_names(online, serve, monkeypatch, proxy_var):
    """A proxy-only node: the hub's name does not even resolve here, only the proxy reaches it."""
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.invalid")
    assert not hub_reachable()  # no proxy set: unreachable
    proxy, requests = serve(200)
    monkeypatch.setenv(proxy_var, proxy)
    assert hub_reachable()
    assert requests == ["HEAD http://hub.invalid/ HTTP/1.1"]  # the proxy was asked for the hub's URL


@pytest.mark.parametrize("no_proxy_var", ["NO_PROXY", "no_proxy"])
def test_no_proxy_hosts_are_reached_directly(online, serve, monkeypatch, no_proxy_var):
    proxy, requests = serve(200)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    assert hub_reachable() and len(requests) == 1  # through the proxy, which answers
    monkeypatch.setenv(no_proxy_var, "127.0.0.1")
    assert not hub_reachable() and len(requests) == 1  # directly: nothing listens there


def test_offline_mode_is_reported_before_any_request(online, serve, monkeypatch):
    url, requests = serve(200)
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert unreachable_reason().startswith("offline mode is on") and requests == []


# ---------------------------------------------------------------------------- the hub client's errors
FAKE_RESPONSE = SimpleNamespace(status_code=404, headers={}, request=None, url="https://hub.invalid/x")


def hub_error(name: str) -> BaseException:
    """An instance of ``huggingface_hub.errors.NAME`` (HTTP errors take the response they came with: a
    fake one with what their constructors read); skips when the installed hub has no such class."""
    import huggingface_hub.errors

    cls = getattr(huggingface_hub.errors, name, None)
    if cls is None:
        pytest.skip(f"huggingface_hub {huggingface_hub.__version__} has no {name}")
    try:
        return cls(f"{name}: 404 for https://hub.invalid/x", response=FAKE_RESPONSE)
    except TypeError:  # not an HTTP error on this hub version
        return cls(f"{name}: 404 for https://hub.invalid/x")


@pytest.mark.parametrize("name", ["RemoteEntryNotFoundError", "EntryNotFoundError", "RepositoryNotFoundError",
                                  "RevisionNotFoundError", "GatedRepoError", "DisabledRepoError"])
def test_the_hub_saying_not_found_is_recognised_directly_and_in_a_chain(name):
    error = hub_error(name)
    assert _not_on_hub(error)
    try:  # as transformers reports it: its own OSError, raised from the hub's error
        raise OSError("could not load") from error
    except OSError as wrapped:
        assert _not_on_hub(wrapped)


def test_not_in_the_cache_and_connection_errors_are_not_taken_for_not_found():
    """LocalEntryNotFoundError derives from EntryNotFoundError (hub >= 1.0), yet only says the cache lacks
    the file while the hub could not be asked."""
    assert not _not_on_hub(hub_error("LocalEntryNotFoundError"))
    assert not _not_on_hub(ConnectionError("connection refused"))
    try:
        raise OSError("could not load") from hub_error("LocalEntryNotFoundError")
    except OSError as wrapped:
        assert not _not_on_hub(wrapped)
