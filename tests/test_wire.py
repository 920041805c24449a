"""The activator <-> autoscaler wire contract (autoscaler/wire.py): what each message accepts and what
it refuses with a reason, as both ends parse it."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from autoscaler.wire import Poke, Route, RoutesUpdate, SideRoute, SideStats, StatsReport


def _route(**over) -> dict:
    r = {"service": "ns/svc", "name": "svc", "namespace": "ns", "hosts": ["svc.ns.example.com"],
         "canary_percent": 20, "container_concurrency": 1,
         "sides": {"default": {"ready": True, "desired": 1,
                               "endpoints": [{"id": "r1", "host": "10.0.0.1", "http_port": 9292,
                                              "grpc_port": 9293}]}}}
    r.update(over)
    return r


def test_routes_update_round_trips_through_json() -> None:
    update = RoutesUpdate(epoch="e1", version=3, full=False, services=[Route(**_route())], removed=["ns/old"],
                          activators=2)
    back = RoutesUpdate.model_validate_json(update.model_dump_json())
    assert back == update
    assert back.services[0].sides["default"].endpoints[0].grpc_port == 9293
    assert back.services[0].sides.get("canary") is None


def test_unknown_fields_are_ignored_for_rolling_upgrades() -> None:
    r = Route.model_validate({**_route(), "new_field": 1})
    assert r.service == "ns/svc"


@pytest.mark.parametrize(("message", "body", "reason"), [
    (SideStats, {"service": "ns/a", "average_concurrency": float("nan")}, "finite"),
    (SideStats, {"service": "ns/a", "average_concurrency": float("inf")}, "finite"),
    (SideStats, {"service": "ns/a", "average_concurrency": -1}, "greater than or equal"),
    (SideStats, {"service": "ns/a", "average_concurrency": 1e12}, "less than or equal"),
    (SideStats, {"service": "ns/a", "window": 0}, "greater than 0"),
    (SideStats, {"service": "ns/a", "window": 3600}, "less than or equal"),
    (SideStats, {"service": "ns/a", "requests": -5}, "greater than or equal"),
    (SideStats, {"service": "ns/a", "side": "blue"}, "'default', 'canary' or 'previous'"),
    (SideStats, {"service": "no-slash"}, "namespace/name"),
    (SideStats, {"service": "NS/Upper"}, "namespace/name"),
    (Poke, {"service": "ns/" + "a" * 300}, "namespace/name"),
    (Poke, {"service": "ns/a", "side": "other"}, "'default', 'canary' or 'previous'"),
    (StatsReport, {"activator": "", "stats": []}, "at least 1"),
    (Route, _route(canary_percent=101), "less than or equal"),
    (SideRoute, {"endpoints": [{"id": "r", "host": "h", "http_port": 70000}]}, "less than or equal"),
    (RoutesUpdate, {"epoch": "e", "version": -1, "full": True}, "greater than or equal"),
])
def test_bad_messages_are_refused_with_a_reason(message, body, reason) -> None:
    with pytest.raises(ValidationError) as exc:
        message.model_validate(body)
    assert reason in str(exc.value)


def test_non_finite_numbers_in_json_text_are_refused() -> None:
    # Python's json writes NaN/Infinity; a hostile activator (or a bug) can send them.
    text = json.dumps({"activator": "a", "stats": [{"service": "ns/a", "average_concurrency": float("nan")}]})
    with pytest.raises(ValidationError):
        StatsReport.model_validate_json(text)


def test_messages_are_frozen() -> None:
    p = Poke(service="ns/a")
    with pytest.raises(ValidationError):
        p.side = "canary"  # type: ignore[misc]


# ---- releases: tag hosts and the outgoing version, added compatibly ------------------------------------
def _release_route() -> Route:
    return Route(**_route(canary_percent=10, previous_percent=60,
                          tags={"default": ["default-svc.ns.example.com"], "canary": ["canary-svc.ns.example.com"]},
                          previous={"ready": True, "desired": 1,
                                    "endpoints": [{"id": "old", "host": "10.0.0.2", "http_port": 9292}]}))


def test_a_route_with_tags_and_a_previous_side_round_trips() -> None:
    r = _release_route()
    back = Route.model_validate_json(r.model_dump_json())
    assert back == r and set(back.routed_sides()) == {"default", "previous"}
    assert back.tags["canary"] == ("canary-svc.ns.example.com",)


def test_a_route_of_an_older_controller_reads_with_no_tags_and_no_previous() -> None:
    r = Route.model_validate(_route())
    assert r.tags == {} and r.previous is None and r.previous_percent == 0 and set(r.routed_sides()) == {"default"}


def test_an_activator_that_predates_releases_still_reads_a_new_route() -> None:
    """The Route model as it was before releases: a new controller's table (with `previous`, outside
    `sides`) parses there, with the canary share in force; the previous side is just not seen."""
    from typing import Literal

    from autoscaler.wire import _ServiceMessage

    class OldRoute(_ServiceMessage):
        name: str
        namespace: str
        hosts: tuple[str, ...]
        canary_percent: int = 0
        container_concurrency: int = 0
        sides: dict[Literal["default", "canary"], SideRoute]

    old = OldRoute.model_validate_json(_release_route().model_dump_json())
    assert old.canary_percent == 10 and set(old.sides) == {"default"}


def test_shares_over_100_are_refused() -> None:
    with pytest.raises(ValidationError, match="exceed 100"):
        Route(**_route(canary_percent=50, previous_percent=51))
