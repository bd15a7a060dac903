"""Two real XMPP clients (slixmpp) moving a file through a XEP-0065 proxy.

Usage: transfer.py '<json arguments>'. Each run is one client, logged in over
plaintext loopback c2s (`host`, `port`, `jid`, `password`); it prints JSON
lines on stdout, each with `t`, a CLOCK_MONOTONIC reading (the same clock in
every process of the machine, so the two sides' times compare):

- {"op": "receive", "size": N, "out": PATH}: the Target. slixmpp's own
  XEP-0065 plugin accepts the offer and connects to the streamhost; the bytes
  go to PATH. Prints {"ready"} once online, {"stream"} when connected,
  {"complete", sha256} as soon as N bytes are in (while the sender may still
  be connected), and {"closed", received, sha256} when the stream ends.
- {"op": "send", "to": TARGET, "file": PATH, "proxy": JID, "hold": bool}:
  the Requester. Asks `proxy` for its streamhost, offers it to TARGET (full
  JID) with that single streamhost, activates, and writes the file. Prints
  {"activated"} and {"sent", bytes} once every byte has left its socket
  buffer; with `hold`, keeps the bytestream open until a line `close` comes
  on stdin (so that the receiver must get every byte from a proxy while the
  sender is still there), then closes and prints {"closed"}.
- {"op": "activate", "proxy": JID, "sid": S, "target": T}: prints the
  bytestream hash for (S, our full JID, T), waits for a line on stdin, sends
  `<activate>` and prints the outcome (for SOCKS5 peers that are not XMPP
  clients, e.g. curl).
- {"op": "activations", "proxy": JID, "socks5": "HOST:PORT", "count": N,
  "parallel": C}: N activations over this one session, C at a time, each
  with two raw SOCKS5 connections (Target first, then Requester) to HOST:PORT, the
  `<activate>` IQ, and one byte from Requester to Target followed by the
  Requester's close, read by the Target up to its end of stream. Prints
  {"activations", count, seconds, per_second}.
"""

import asyncio
import hashlib
import json
import sys
import time

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout

# Bytes read from the file per write on the bytestream.
CHUNK = 1 << 20
# How long one IQ may take, in seconds.
IQ_TIMEOUT = 20


def say(**obj):
    obj["t"] = time.monotonic()
    print(json.dumps(obj), flush=True)


def outcome(exc):
    if isinstance(exc, IqError):
        return {"type": "error", "condition": exc.condition, "error_type": exc.etype}
    return {"type": "timeout"}


async def stdin_line():
    """The next line on stdin ('' at its end), without blocking the loop."""
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def login(args, auto_accept=False):
    xmpp = slixmpp.ClientXMPP(args["jid"], args["password"])
    xmpp.enable_starttls = False
    xmpp.enable_direct_tls = False
    xmpp.enable_plaintext = True
    # The test servers have no certificate: SCRAM over loopback plaintext
    # (Prosody), or PLAIN where the server offers nothing else (ejabberd
    # with anonymous logins, which keeps no passwords to do SCRAM with).
    xmpp.plugin["feature_mechanisms"].unencrypted_scram = True
    xmpp.plugin["feature_mechanisms"].unencrypted_plain = True
    xmpp.register_plugin("xep_0030")
    xmpp.register_plugin("xep_0065", {"auto_accept": auto_accept})
    started = asyncio.Event()
    xmpp.add_event_handler("session_start", lambda _: started.set())
    xmpp.connect(args.get("host", "127.0.0.1"), args["port"])
    await asyncio.wait_for(started.wait(), 20)
    return xmpp


async def receive(args):
    xmpp = await login(args, auto_accept=True)
    size = args["size"]
    digest = hashlib.sha256()
    out = open(args["out"], "wb")
    received = 0
    closed = asyncio.Event()

    def on_stream(_conn):
        say(event="stream")

    def on_data(data):
        # slixmpp hands every read of the bytestream to this event, in order.
        nonlocal received
        out.write(data)
        digest.update(data)
        received += len(data)
        if received == size:
            say(event="complete", received=received, sha256=digest.hexdigest())

    xmpp.add_event_handler("socks5_stream", on_stream)
    xmpp.add_event_handler("socks5_data", on_data)
    xmpp.add_event_handler("socks5_closed", lambda _exc: closed.set())
    say(event="ready", jid=str(xmpp.boundjid))
    await asyncio.wait_for(closed.wait(), args.get("timeout", 600))
    out.close()
    say(event="closed", received=received, sha256=digest.hexdigest())
    xmpp.disconnect()


async def send(args):
    xmpp = await login(args)
    plugin = xmpp.plugin["xep_0065"]
    proxy = slixmpp.JID(args["proxy"])
    try:
        iq = await plugin.get_network_address(proxy, timeout=IQ_TIMEOUT)
    except (IqError, IqTimeout) as exc:
        say(event="streamhost", **outcome(exc))
        return
    host, port = iq["socks"]["streamhost"]["host"], iq["socks"]["streamhost"]["port"]
    say(event="streamhost", jid=str(iq["socks"]["streamhost"]["jid"]), host=host, port=int(port))
    # slixmpp offers every proxy it knows (its discovery fills the same
    # table, the port as the text of the attribute): this one only, as a
    # client configured with one proxy does.
    plugin._proxies = {proxy: (host, port)}
    try:
        sock = await plugin.handshake(args["to"], timeout=IQ_TIMEOUT)
    except (IqError, IqTimeout) as exc:
        say(event="activated", **outcome(exc))
        return
    if sock is None:
        say(event="activated", type="error", condition="no bytestream")
        return
    say(event="activated", type="result")
    sent = 0
    with open(args["file"], "rb") as f:
        while chunk := f.read(CHUNK):
            await sock.write(chunk)
            sent += len(chunk)
    # Every byte handed to the kernel, so that "sent" means on the wire.
    while sock.transport.get_write_buffer_size() > 0:
        await asyncio.sleep(0.001)
    say(event="sent", bytes=sent)
    if args.get("hold"):
        line = await asyncio.wait_for(stdin_line(), args.get("timeout", 600))
        assert line.strip() in ("close", ""), line
    sock.transport.close()
    say(event="closed")
    xmpp.disconnect()


async def activate(args):
    xmpp = await login(args)
    plugin = xmpp.plugin["xep_0065"]
    target = slixmpp.JID(args["target"])
    say(hash=plugin._get_dest_sha1(args["sid"], xmpp.boundjid, target),
        requester=str(xmpp.boundjid))
    await stdin_line()
    try:
        await plugin.activate(args["proxy"], args["sid"], args["target"], timeout=IQ_TIMEOUT)
        say(type="result")
    except (IqError, IqTimeout) as exc:
        say(**outcome(exc))
    xmpp.disconnect()


async def socks5(host, port, digest):
    """A SOCKS5 connection to the proxy that asked for `digest`: (reader, writer)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"\x05\x01\x00")
    if await reader.readexactly(2) != b"\x05\x00":
        raise RuntimeError("greeting refused")
    request = b"\x05\x01\x00\x03\x28" + digest.encode() + b"\x00\x00"
    writer.write(request)
    reply = await reader.readexactly(len(request))
    if reply[:2] != b"\x05\x00":
        raise RuntimeError(f"request refused: {reply[:2].hex()}")
    return reader, writer


async def activations(args):
    xmpp = await login(args)
    plugin = xmpp.plugin["xep_0065"]
    # The proxy pairs whatever two connections present the hash: the Target
    # needs no XMPP session of its own.
    target = slixmpp.JID(args.get("target", "target@localhost/bench"))
    host, port = args["socks5"].rsplit(":", 1)
    count, parallel = args["count"], args.get("parallel", 16)
    failures = []

    async def one(i):
        sid = f"bench-{i}"
        digest = plugin._get_dest_sha1(sid, xmpp.boundjid, target)
        t_reader, t_writer = await socks5(host, port, digest)
        r_reader, r_writer = await socks5(host, port, digest)
        try:
            await plugin.activate(args["proxy"], sid, target, timeout=IQ_TIMEOUT)
        except (IqError, IqTimeout) as exc:
            failures.append(outcome(exc))
            t_writer.close()
            r_writer.close()
            return
        r_writer.write(b"x")
        r_writer.close()
        got = await t_reader.read()
        t_writer.close()
        if got != b"x":
            failures.append({"type": "lost", "got": got.hex()})

    queue = iter(range(count))

    async def worker():
        for i in queue:
            await one(i)

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(parallel)))
    seconds = time.monotonic() - start
    say(event="activations", count=count, failures=failures[:5], failed=len(failures),
        seconds=seconds, per_second=count / seconds)
    xmpp.disconnect()


OPS = {"receive": receive, "send": send, "activate": activate, "activations": activations}

if __name__ == "__main__":
    arguments = json.loads(sys.argv[1])
    asyncio.run(OPS[arguments["op"]](arguments))
