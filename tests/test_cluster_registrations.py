"""Registration-based SIP trunks in a cluster (docs/deploy.md, "Registration-based SIP trunks in a cluster"): one
process REGISTERs each trunk, the trunk follows an operator's edit or deletion made on any node, a draining
registrant hands it over, and a REGISTER refresh tells the other nodes nothing (it used to make every node drop all
its cached numbers and agents, twice per refresh of every trunk).

Two gateways on one fresh PostgreSQL database, each with its own control-bus connection and SIP port, and a real
Kamailio as the carrier's registrar (tests/kamailio_registrar.cfg): the test reads its bindings (`kamcmd ul.dump`).
"""
from __future__ import annotations

import pytest
import pytest_asyncio

from conftest import SECRET_KEY
from procs import GatewayProc, KamailioRegistrar, needs_kamailio
from sipp import api, sip_gateway, sip_number, wait_for
from test_cluster_sip_trunks import _sees, pg_db  # noqa: F401  (fixture: a fresh PostgreSQL database)

pytestmark = [needs_kamailio, pytest.mark.timeout(180)]


@pytest_asyncio.fixture
async def registrar(tmp_path):
    made = []

    async def start(**kw) -> KamailioRegistrar:
        made.append(await KamailioRegistrar.start(tmp_path, **kw))
        return made[-1]
    yield start
    for r in made:
        r.close()


async def node(make_gateway, pg_db, tmp_path, name: str):
    return await sip_gateway(make_gateway, db=pg_db, node_id=f"reg-{name}", data_dir=str(tmp_path / name))


def contact(gw, user: str) -> str:
    return f"sip:{user}@127.0.0.1:{gw.carriers['sip'].port}"


async def holder(gw, number_id: int) -> str | None:
    """The process that registers the trunk, as any node's API shows it."""
    status = (await api(gw, "GET", f"/phone_number/{number_id}", expect=200))["phone_number"]["status"]
    return status.get("registered_by")


async def test_one_process_registers_a_trunk_and_follows_edits_made_on_any_node(pg_db, make_gateway, tmp_path,
                                                                                 registrar):
    reg = await registrar()
    a = await node(make_gateway, pg_db, tmp_path, "a")
    num = await sip_number(a, agent=False, sip_port=reg.port, register=True, sip_username="alice",
                           sip_password="s3cret")
    await wait_for(lambda: reg.bindings() == {"alice": [contact(a, "alice")]}, 20, what="node a to register alice")

    b = await node(make_gateway, pg_db, tmp_path, "b")       # starts with the trunk already stored
    await wait_for(lambda: _sees(a, b), 30, what="node a to see node b alive")
    assert num["id"] not in b.carriers["sip"].registrations   # a holds it: no second binding
    assert await holder(b, num["id"]) == "reg-a"
    assert reg.bindings() == {"alice": [contact(a, "alice")]}

    # edited on b: a (the registrant) un-registers alice and registers bob
    await api(b, "PATCH", f"/phone_number/{num['id']}", {"sip_username": "bob"}, expect=200)
    bob = await wait_for(lambda: (bs := reg.bindings()) and "alice" not in bs and bs.get("bob") and bs, 20,
                         what="the edit to reach the registrar")
    owner = await holder(a, num["id"])
    gw = {"reg-a": a, "reg-b": b}[owner]
    assert bob == {"bob": [contact(gw, "bob")]}
    assert ("sip:alice@127.0.0.1:%d" % reg.port, contact(a, "alice"), "0") in reg.registers()   # Expires: 0

    # the registrant drains: it un-registers and the other node takes the trunk over
    other = b if gw is a else a
    gw.begin_drain()
    await wait_for(lambda: reg.bindings() == {"bob": [contact(other, "bob")]}, 30,
                   what="the other node to take the trunk over")
    assert await holder(gw, num["id"]) == other.settings.proc_id

    # deleted on the drained node: the new registrant un-registers
    await api(gw, "DELETE", f"/phone_number/{num['id']}", expect=200)
    await wait_for(lambda: reg.bindings() == {}, 20, what="the un-REGISTER")
    assert not other.carriers["sip"].registrations


async def test_a_register_refresh_tells_the_other_nodes_nothing(pg_db, make_gateway, tmp_path, registrar):
    reg = await registrar(max_expires=2)               # granted 2 s: refreshed every second
    a = await node(make_gateway, pg_db, tmp_path, "a")
    b = await node(make_gateway, pg_db, tmp_path, "b")
    await wait_for(lambda: _sees(a, b), 30, what="node a to see node b alive")
    await wait_for(lambda: _sees(b, a), 30, what="node b to see node a alive")
    num = await sip_number(a, agent=False, sip_port=reg.port, register=True, sip_username="carol",
                           sip_password="s3cret")
    gw = await wait_for(lambda: next((g for g in (a, b) if g.carriers["sip"].registrations.get(num["id"])), None),
                        20, what="a registrant")
    registration = gw.carriers["sip"].registrations[num["id"]]
    await wait_for(lambda: registration.registered, 20, what="the first REGISTER")
    epochs = (a.store.cache_epoch, b.store.cache_epoch)
    done = registration.refreshes
    await wait_for(lambda: registration.refreshes >= done + 3, 30, what="three refreshes")
    assert (a.store.cache_epoch, b.store.cache_epoch) == epochs      # nobody dropped its cached numbers
    for node_ in (a, b):                                             # and every node's API shows the binding
        status = (await api(node_, "GET", f"/phone_number/{num['id']}", expect=200))["phone_number"]["status"]
        assert status["registration"] == "registered" and status["registered_by"] == gw.settings.proc_id


async def test_a_crashed_registrants_binding_is_removed_by_the_process_that_takes_the_trunk_over(pg_db, tmp_path,
                                                                                               registrar):
    """kill -9 of the process that registers a trunk: a running one claims the trunk once the dead one's heartbeat
    is stale, registers its own Contact and removes the dead Contact's binding (which stayed at the registrar until
    it expired, up to an hour, with a forking registrar trying it for every call). Real `gateway serve`
    processes."""
    reg = await registrar()
    env = {"GATEWAY_SECRET_KEY": SECRET_KEY, "GATEWAY_HEARTBEAT_INTERVAL": "0.5", "GATEWAY_STALE_AFTER": "5"}
    nodes = {}
    for name in ("reg-a", "reg-b"):
        (tmp_path / name).mkdir()
        nodes[name] = await GatewayProc.start(tmp_path / name, "--db", pg_db, env={**env, "GATEWAY_NODE_ID": name})
    try:
        for name, gw in nodes.items():
            await gw.wait_procs({name})
        num = (await nodes["reg-a"].api("POST", "/phone_number/import/sip", {
            "phone_number": "+15550001111", "sip_trunk_name": "carrier", "sip_host": "127.0.0.1", "sip_port": reg.port,
            "register": True,
            "sip_username": "alice", "sip_password": "s3cret", "auth_type": "ip", "allowed_ips": ["127.0.0.1"]},
            expect=201))["phone_number"]

        async def registrant(asked: str = "reg-b") -> str | None:
            got = await nodes[asked].api("GET", f"/phone_number/{num['id']}", expect=200)
            status = got["phone_number"]["status"]
            return status.get("registration") == "registered" and status.get("registered_by")
        async def registrant_is(name: str) -> bool:
            return await registrant(asked=name) == name     # the survivor: the other one is dead by then
        dead = await wait_for(registrant, 30, what="a registrant")
        alive = "reg-b" if dead == "reg-a" else "reg-a"
        await wait_for(lambda: reg.bindings() == {"alice": [f"sip:alice@127.0.0.1:{nodes[dead].sip_port}"]}, 20,
                       what="one binding")
        nodes[dead].proc.kill()
        nodes[dead].proc.wait(10)
        await wait_for(lambda: reg.bindings() == {"alice": [f"sip:alice@127.0.0.1:{nodes[alive].sip_port}"]}, 60,
                       what="the survivor's binding alone")
        await wait_for(lambda: registrant_is(alive), 20, what="the survivor shown as the registrant")
    finally:
        for gw in nodes.values():
            await gw.close()
