"""A minimal Faust app for the smoke test: counts events per key in a RocksDB table.

Configured entirely by environment variables so the test can run it as ``faust -A`` in a subprocess.
"""

import os

import faust

app = faust.App(
    os.environ["SMOKE_APP_ID"],
    broker=f"kafka://{os.environ['SMOKE_BROKER']}",
    store="rocksdb://",
    datadir=os.environ["SMOKE_DATADIR"],
    topic_partitions=1,
    topic_replication_factor=1,
    web_enabled=False,  # (``faust worker`` enables it anyway: the test gives it a free loopback port)
    web_bind="127.0.0.1",
)
topic = app.topic(os.environ["SMOKE_TOPIC"], key_serializer="raw", value_serializer="raw")
counts = app.Table("counts", default=int, partitions=1)


@app.agent(topic)
async def count(stream):  # type: ignore[no-untyped-def]
    async for event in stream.events():
        key = event.key.decode()
        counts[key] += 1
        with open(os.environ["SMOKE_OUT"], "a") as out:
            out.write(f"{key} {counts[key]}\n")
