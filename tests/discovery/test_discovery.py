"""DNS discovery end to end: a backend whose URL names a host stands for every address the name resolves to.

The proxy asks only the test's own DNS server (discovery.nameservers); the demo backends behind the addresses
answer with their own name in `x-backend`, so where each request went is seen from the outside, and
/api/backends and /metrics are read from the admin listener as an operator would.
"""

from __future__ import annotations

import threading

import pytest

from conftest import Group, endpoint, proxy_config
from quic_proxy_testing import wait_until

NAME = "svc.test."
# A few refresh periods of 1 s on a busy machine.
CHANGE_TIMEOUT = 10.0


def url(group: Group, name: str = NAME) -> str:
    return f"http://{name}:{group.port}"


def endpoints(group: Group, addresses: list[str], backend: str = "svc") -> set[str]:
    return {endpoint(backend, address, group.port) for address in addresses}


def names(addresses: list[str]) -> set[str]:
    return {Group.name(address) for address in addresses}


def test_every_address_of_the_name_is_an_endpoint(nameserver, demo_backends, proxy_factory):
    addresses = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    group = demo_backends(addresses)
    nameserver.answer(NAME, *addresses)
    proxy = proxy_factory(proxy_config(nameserver, [("svc", url(group))]))

    # Resolved before the proxy reported it had started: no waiting.
    listed = proxy.backends()
    assert set(listed) == endpoints(group, addresses)
    assert {b["state"] for b in listed.values()} == {"healthy"}
    assert nameserver.queries(NAME, "A") >= 1

    seen = proxy.spread(30)
    assert set(seen) == names(addresses), seen
    assert min(seen.values()) >= 5, f"round robin over three endpoints: {seen}"

    requests = proxy.samples("backend_requests_total")
    for address in addresses:
        assert requests.get(endpoint("svc", address, group.port)) == seen[Group.name(address)], requests
    assert proxy.samples("backend_health") == {e: 1.0 for e in endpoints(group, addresses)}


def test_a_changed_answer_adds_and_removes_endpoints_live(nameserver, demo_backends, proxy_factory):
    first, then = ["127.0.0.2", "127.0.0.3", "127.0.0.4"], ["127.0.0.3", "127.0.0.4", "127.0.0.5"]
    group = demo_backends(["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"])
    nameserver.answer(NAME, *first)
    proxy = proxy_factory(proxy_config(nameserver, [("svc", url(group))]))
    proxy.wait_endpoints(endpoints(group, first))
    removed, drained = endpoint("svc", "127.0.0.2", group.port), endpoint("svc", "127.0.0.3", group.port)
    assert proxy.drain("default", drained)["drained"] is True

    # Two slow requests over the two endpoints left in rotation: one of them is held by the one to be removed.
    answers: list = []
    held = [
        threading.Thread(target=lambda: answers.append(proxy.get("/?delay_ms=6000")), daemon=True) for _ in range(2)
    ]
    for thread in held:
        thread.start()
    wait_until(
        lambda: proxy.backends()[removed]["in_flight"] == 1,
        f"a request in flight on {removed}",
        CHANGE_TIMEOUT,
    )

    nameserver.answer(NAME, *then)
    listed = proxy.wait_endpoints(endpoints(group, then), CHANGE_TIMEOUT)
    assert not answers, "the endpoints changed only after the held requests were answered: nothing was in flight"
    assert listed[drained]["drained"] is True and listed[drained]["state"] == "draining", listed[drained]

    for thread in held:
        thread.join(15)
        assert not thread.is_alive(), "a held request was not answered"
    assert sorted((a.status, a.backend) for a in answers) == [(200, "b-127.0.0.2"), (200, "b-127.0.0.4")], answers

    seen = proxy.spread(12)
    assert set(seen) == {"b-127.0.0.4", "b-127.0.0.5"}, seen

    health = proxy.samples("backend_health")
    assert set(health) == endpoints(group, then), health
    assert proxy.samples("backend_drained")[drained] == 1.0


def test_endpoints_that_stay_keep_their_health_state(nameserver, demo_backends, proxy_factory):
    group = demo_backends(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    group.control("127.0.0.3", "/control/health/503")
    nameserver.answer(NAME, "127.0.0.2", "127.0.0.3")
    config = proxy_config(nameserver, [("svc", url(group))])
    # One probe round at start-up, then none for the rest of the test: a state rebuilt by the change would
    # show as a fresh (healthy, never or newly checked) endpoint.
    config["health_check"] = {"interval": "1h", "timeout": "5s", "unhealthy_threshold": 1, "healthy_threshold": 1}
    proxy = proxy_factory(config)
    failing = endpoint("svc", "127.0.0.3", group.port)
    before = wait_until(
        lambda: (b := proxy.backends().get(failing)) and b["state"] == "unhealthy" and b,
        f"{failing} unhealthy after its first probe",
        CHANGE_TIMEOUT,
    )

    nameserver.answer(NAME, "127.0.0.3", "127.0.0.4")
    listed = proxy.wait_endpoints(endpoints(group, ["127.0.0.3", "127.0.0.4"]), CHANGE_TIMEOUT)
    after = listed[failing]
    assert after["state"] == "unhealthy", after
    assert (after["last_check"], after["consecutive_failures"], after["last_error"]) == (
        before["last_check"],
        before["consecutive_failures"],
        before["last_error"],
    ), (before, after)
    assert set(proxy.spread(4)) == {"b-127.0.0.4"}


def test_a_connect_error_resolves_the_name_again_at_once(nameserver, demo_backends, proxy_factory):
    addresses = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    group = demo_backends(addresses)
    nameserver.answer(NAME, *addresses)
    proxy = proxy_factory(proxy_config(nameserver, [("svc", url(group))], dns_refresh="1h"))
    proxy.wait_endpoints(endpoints(group, addresses))
    dead = endpoint("svc", "127.0.0.3", group.port)

    group.stop("127.0.0.3")
    nameserver.answer(NAME, "127.0.0.2", "127.0.0.4")
    asked = nameserver.queries(NAME)
    # Round robin sends one of three requests to the dead endpoint; a retry answers it from another.
    seen = proxy.spread(3)
    assert set(seen) <= {"b-127.0.0.2", "b-127.0.0.4"}, seen
    assert proxy.samples("backend_connect_errors_total").get(dead, 0) >= 1

    nameserver.wait_queries(NAME, asked, timeout=5.0)
    proxy.wait_endpoints(endpoints(group, ["127.0.0.2", "127.0.0.4"]), timeout=5.0)
    assert set(proxy.spread(6)) == {"b-127.0.0.2", "b-127.0.0.4"}


@pytest.mark.parametrize("failure", ["nxdomain", "no-records", "no-answer"])
def test_a_name_unresolved_at_start_up_gets_endpoints_once_it_resolves(
    failure, nameserver, demo_backends, proxy_factory
):
    addresses = ["127.0.0.2", "127.0.0.3"]
    group = demo_backends(addresses)
    {
        "nxdomain": lambda: nameserver.refuse(NAME, "nxdomain"),
        "no-records": lambda: nameserver.answer(NAME),
        "no-answer": lambda: nameserver.drop(NAME),
    }[failure]()
    proxy = proxy_factory(proxy_config(nameserver, [("svc", url(group))]))

    warning = proxy.process.wait_for(
        lambda e: e.get("level") == "WARN" and e.get("host") == NAME, f"a warning naming {NAME}"
    )
    assert NAME in warning["message"], warning
    assert proxy.backends() == {}
    assert proxy.get("/").status == 503

    nameserver.answer(NAME, *addresses)
    proxy.wait_endpoints(endpoints(group, addresses), CHANGE_TIMEOUT)
    assert set(proxy.spread(6)) == names(addresses)


def test_an_unresolved_name_leaves_the_static_backends_of_its_upstream(nameserver, demo_backends, proxy_factory):
    static = demo_backends(["127.0.0.1"])
    group = demo_backends(["127.0.0.2"])
    nameserver.refuse(NAME, "nxdomain")
    proxy = proxy_factory(
        proxy_config(nameserver, [("svc", url(group)), ("static", f"http://127.0.0.1:{static.port}")])
    )
    assert set(proxy.backends()) == {"static"}
    assert set(proxy.spread(4)) == {"b-127.0.0.1"}

    nameserver.answer(NAME, "127.0.0.2")
    proxy.wait_endpoints({"static", endpoint("svc", "127.0.0.2", group.port)}, CHANGE_TIMEOUT)
    assert set(proxy.spread(4)) == {"b-127.0.0.1", "b-127.0.0.2"}


def test_failed_resolutions_keep_the_last_endpoints(nameserver, demo_backends, proxy_factory):
    addresses = ["127.0.0.2", "127.0.0.3"]
    group = demo_backends(addresses)
    nameserver.answer(NAME, *addresses)
    proxy = proxy_factory(proxy_config(nameserver, [("svc", url(group))]))
    known = endpoints(group, addresses)
    proxy.wait_endpoints(known)

    def kept_warnings() -> int:
        return sum(
            1
            for e in list(proxy.process.events)
            if e.get("level") == "WARN" and e.get("host") == NAME and "keeping the 2 endpoint" in e.get("message", "")
        )

    for fail in (lambda: nameserver.refuse(NAME, "servfail"), lambda: nameserver.drop(NAME)):
        warned = kept_warnings()
        fail()

        # Every look while the resolutions fail finds both endpoints still there.
        def two_more_failures() -> bool:
            listed = set(proxy.backends())
            assert listed == known, f"the endpoints changed to {sorted(listed)} while resolutions failed"
            return kept_warnings() >= warned + 2

        wait_until(two_more_failures, "two failed resolutions, each keeping the 2 endpoints", 15.0)
        assert set(proxy.spread(4)) == names(addresses)

    nameserver.answer(NAME, "127.0.0.3")
    proxy.wait_endpoints(endpoints(group, ["127.0.0.3"]), CHANGE_TIMEOUT)


def test_each_endpoint_is_probed_and_reported_on_its_own(nameserver, demo_backends, proxy_factory):
    addresses = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    group = demo_backends(addresses)
    nameserver.answer(NAME, *addresses)
    config = proxy_config(nameserver, [("svc", url(group))])
    config["health_check"] = {
        "interval": "500ms",
        "timeout": "500ms",
        "path": "/health",
        "unhealthy_threshold": 2,
        "healthy_threshold": 1,
    }
    proxy = proxy_factory(config)
    every = endpoints(group, addresses)
    failing = endpoint("svc", "127.0.0.3", group.port)
    wait_until(
        lambda: all(b["last_check"] and b["state"] == "healthy" for b in proxy.wait_endpoints(every).values()),
        "every endpoint probed and healthy",
        CHANGE_TIMEOUT,
    )

    group.control("127.0.0.3", "/control/health/503")
    wait_until(
        lambda: {n: b["state"] for n, b in proxy.backends().items()}
        == {n: ("unhealthy" if n == failing else "healthy") for n in every},
        f"{failing} alone unhealthy",
        CHANGE_TIMEOUT,
    )
    text = proxy.metrics()
    assert proxy.samples("backend_health", text) == {n: (0.0 if n == failing else 1.0) for n in every}
    failures = proxy.samples("health_check_failures_total", text)
    assert failures[failing] >= 2 and all(failures[n] == 0 for n in every - {failing}), failures
    assert set(proxy.spread(6)) == {"b-127.0.0.2", "b-127.0.0.4"}

    group.control("127.0.0.3", "/control/health/200")
    wait_until(
        lambda: proxy.samples("backend_health") == {n: 1.0 for n in every},
        f"{failing} healthy again",
        CHANGE_TIMEOUT,
    )


def test_tcp_probes_connect_to_each_endpoint(nameserver, demo_backends, proxy_factory):
    addresses = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    group = demo_backends(addresses)
    nameserver.answer(NAME, *addresses)
    config = proxy_config(nameserver, [("svc", url(group))], dns_refresh="1h")
    config["health_check"] = {
        "type": "tcp",
        "interval": "500ms",
        "timeout": "500ms",
        "unhealthy_threshold": 1,
        "healthy_threshold": 1,
    }
    proxy = proxy_factory(config)
    every = endpoints(group, addresses)
    stopped = endpoint("svc", "127.0.0.3", group.port)

    def probed_states() -> dict[str, str] | None:
        listed = proxy.backends()
        if not all(b["last_check"] for b in listed.values()):
            return None
        return {n: b["state"] for n, b in listed.items()}

    states = wait_until(probed_states, "every endpoint probed", CHANGE_TIMEOUT)
    assert states == {n: "healthy" for n in every}, {n: proxy.backends()[n]["last_error"] for n in every}

    group.stop("127.0.0.3")
    wait_until(
        lambda: probed_states() == {n: ("unhealthy" if n == stopped else "healthy") for n in every},
        f"{stopped} alone unhealthy",
        CHANGE_TIMEOUT,
    )


@pytest.mark.parametrize("how", ["api", "sighup"])
def test_a_reload_adding_a_named_backend_resolves_it(how, nameserver, demo_backends, proxy_factory):
    static = demo_backends(["127.0.0.1"])
    group = demo_backends(["127.0.0.2", "127.0.0.3"])
    # Written without the trailing dot, the name is still asked for as it is, not through a search list.
    nameserver.answer("api.test", "127.0.0.2", "127.0.0.3")
    config = proxy_config(nameserver, [("static", f"http://127.0.0.1:{static.port}")])
    proxy = proxy_factory(config)
    assert set(proxy.backends()) == {"static"}
    assert proxy.get("/api/x").backend == "b-127.0.0.1"

    config = {
        **config,
        "upstreams": {"api": {"backends": [{"name": "api", "url": f"http://api.test:{group.port}"}]}},
        "routes": [{"path": "/api/*", "upstream": "api"}],
    }
    proxy.rewrite(config)
    if how == "api":
        report = "; ".join(proxy.reload_via_api()["changes"])
    else:
        proxy.sighup()
        report = proxy.process.wait_for(
            lambda e: str(e.get("message", "")).startswith("SIGHUP: "), "the SIGHUP reload's report"
        )["message"]
    first = proxy.get("/api/x")

    expected = endpoints(group, ["127.0.0.2", "127.0.0.3"], "api")
    proxy.wait_endpoints(expected, CHANGE_TIMEOUT, upstream="api")
    assert set(proxy.spread(6, "/api/x")) == {"b-127.0.0.2", "b-127.0.0.3"}
    assert set(proxy.spread(2, "/other")) == {"b-127.0.0.1"}

    # The snapshot the reload installs already has the endpoints, as the first one at start-up does: a request
    # right after the reload goes to one of them, not to a name only the system's resolver could look up.
    assert all(f"api/{name}" in report for name in expected), report
    assert (first.status, first.backend) in {(200, "b-127.0.0.2"), (200, "b-127.0.0.3")}, first


def test_a_reload_shortening_dns_refresh_applies_at_once(nameserver, demo_backends, proxy_factory):
    group = demo_backends(["127.0.0.2", "127.0.0.3"])
    nameserver.answer(NAME, "127.0.0.2")
    config = proxy_config(nameserver, [("svc", url(group))], dns_refresh="1h")
    proxy = proxy_factory(config)
    proxy.wait_endpoints(endpoints(group, ["127.0.0.2"]))

    proxy.rewrite({**config, "discovery": {**config["discovery"], "dns_refresh": "1s"}})
    proxy.reload_via_api()
    nameserver.answer(NAME, "127.0.0.2", "127.0.0.3")
    proxy.wait_endpoints(endpoints(group, ["127.0.0.2", "127.0.0.3"]), CHANGE_TIMEOUT)


@pytest.mark.parametrize(
    "addresses", [["::1"], ["127.0.0.2", "::1"]], ids=["aaaa-only", "a-and-aaaa"]
)
def test_ipv6_addresses_are_endpoints_with_ip_family_all(addresses, nameserver, demo_backends, proxy_factory):
    group = demo_backends(addresses)
    nameserver.answer(NAME, *addresses)
    config = proxy_config(nameserver, [("svc", url(group))])
    config["discovery"]["ip_family"] = "all"
    proxy = proxy_factory(config)
    assert set(proxy.backends()) == endpoints(group, addresses)
    assert set(proxy.spread(2 * len(addresses))) == names(addresses)


@pytest.mark.parametrize(
    "addresses,expected",
    [(["::1"], ["::1"]), (["127.0.0.2", "::1"], ["127.0.0.2"])],
    ids=["aaaa-only", "a-and-aaaa"],
)
def test_by_default_ipv4_addresses_are_preferred(addresses, expected, nameserver, demo_backends, proxy_factory):
    # As for `localhost` in /etc/hosts: an AAAA record beside the A records is not an endpoint of its own
    # unless asked for, since what listens on the IPv4 address often does not listen on the IPv6 one.
    group = demo_backends(addresses)
    nameserver.answer(NAME, *addresses)
    proxy = proxy_factory(proxy_config(nameserver, [("svc", url(group))]))
    assert set(proxy.backends()) == endpoints(group, expected)
    assert set(proxy.spread(2 * len(expected))) == names(expected)
