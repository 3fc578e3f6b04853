#!/usr/bin/env python3
"""Small RabbitMQ chores for the RabbitMQ scripts, with the pika client.

  rabbitmq-tool.py declare HOST:PORT classic|quorum|stream NAME   a durable queue or stream
  rabbitmq-tool.py drain HOST:PORT NAME     every message of a queue, one per line (taken out)
"""
import sys

import pika


def main(command, server, *rest):
    host, port = server.rsplit(":", 1)
    connection = pika.BlockingConnection(pika.ConnectionParameters(host, int(port)))
    channel = connection.channel()
    if command == "declare" and len(rest) == 2:
        kind, name = rest
        channel.queue_declare(name, durable=True, arguments={"x-queue-type": kind})
    elif command == "drain" and len(rest) == 1:
        out = sys.stdout.buffer
        while True:
            method, _, body = channel.basic_get(rest[0], auto_ack=True)
            if method is None:
                break
            out.write(body + b"\n")
        out.flush()
    else:
        raise SystemExit(__doc__)
    connection.close()


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
