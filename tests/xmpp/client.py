"""A real XMPP client (slixmpp) for the XEP-0065 component tests.

Usage: client.py '<json arguments>'. Connects to the test's Prosody over
plaintext loopback c2s, does one thing, and prints JSON lines on stdout:

- {"op": "query", ...}: disco#info of the component and its streamhost query.
- {"op": "activate", "sid": S, "target": T, ...}: first the hash slixmpp's own
  XEP-0065 plugin computes for (sid, our full JID, target), then the outcome
  of the activation IQ.
"""

import asyncio
import json
import sys

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout


def say(obj):
    print(json.dumps(obj), flush=True)


def outcome(exc):
    if isinstance(exc, IqError):
        return {"type": "error", "condition": exc.condition, "error_type": exc.etype}
    return {"type": "timeout"}


async def run(args):
    xmpp = slixmpp.ClientXMPP(args["jid"], args["password"])
    xmpp.enable_starttls = False
    xmpp.enable_direct_tls = False
    xmpp.enable_plaintext = True
    # The test server has no certificate: SCRAM over loopback plaintext.
    xmpp.plugin["feature_mechanisms"].unencrypted_scram = True
    xmpp.register_plugin("xep_0030")
    xmpp.register_plugin("xep_0065")
    started = asyncio.Event()
    xmpp.add_event_handler("session_start", lambda _: started.set())
    xmpp.connect("127.0.0.1", args["port"])
    await asyncio.wait_for(started.wait(), 20)
    proxy = args["component"]
    timeout = args.get("timeout", 10)
    try:
        if args["op"] == "query":
            try:
                info = await xmpp.plugin["xep_0030"].get_info(jid=proxy, timeout=timeout)
                say({
                    "type": "result",
                    "identities": [[i[0], i[1]] for i in info["disco_info"]["identities"]],
                    "features": sorted(info["disco_info"]["features"]),
                })
            except (IqError, IqTimeout) as exc:
                say(outcome(exc))
            try:
                iq = await xmpp.plugin["xep_0065"].get_network_address(proxy, timeout=timeout)
                sh = iq["socks"]["streamhost"]
                say({"type": "result", "streamhost": {
                    "jid": str(sh["jid"]), "host": sh["host"], "port": int(sh["port"]),
                }})
            except (IqError, IqTimeout) as exc:
                say(outcome(exc))
        elif args["op"] == "activate":
            plugin = xmpp.plugin["xep_0065"]
            # slixmpp's JID class normalises as servers do; the Target side
            # of slixmpp hashes the JID objects it got from the server.
            target = slixmpp.JID(args["target"])
            say({"hash": plugin._get_dest_sha1(args["sid"], xmpp.boundjid, target),
                 "requester": str(xmpp.boundjid)})
            try:
                await plugin.activate(proxy, args["sid"], args["target"], timeout=timeout)
                say({"type": "result"})
            except (IqError, IqTimeout) as exc:
                say(outcome(exc))
    finally:
        xmpp.disconnect()


asyncio.run(run(json.loads(sys.argv[1])))
