#!/usr/bin/env python3
"""Small JetStream chores for the NATS scripts, with the nats-py client.

  nats-tool.py create-stream HOST:PORT NAME     a stream taking NAME.>
  nats-tool.py dump HOST:PORT NAME              every message's payload, one per line
"""
import asyncio
import sys

import nats
from nats.js.api import DeliverPolicy


async def main(command, server, name):
    nc = await nats.connect(f"nats://{server}")
    js = nc.jetstream()
    if command == "create-stream":
        await js.add_stream(name=name, subjects=[f"{name}.>"])
    elif command == "dump":
        info = await js.stream_info(name)
        left = info.state.messages
        if left:
            sub = await js.subscribe(f"{name}.>", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
            out = sys.stdout.buffer
            while left:
                msg = await sub.next_msg(timeout=10)
                out.write(msg.data + b"\n")
                left -= 1
            out.flush()
    else:
        raise SystemExit(f"unknown command {command}")
    await nc.close()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    asyncio.run(main(*sys.argv[1:]))
