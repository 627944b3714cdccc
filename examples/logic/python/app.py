"""Example customer logic in Python: a JSON field mapper and filter.

Maps `{"device": .., "temp": .., "site": .., ...}` to `{"device_id": .., "temperature": .., "site": ..}`
keyed by the device; drops heartbeats (`"kind": "heartbeat"`); rejects payloads that are not JSON
objects or have no `device` string.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.types import Failure_Reject, Message, Rejected


def map_payload(payload):
    """Returns None to drop the record, a str to reject it, or (key, payload) to keep it."""
    try:
        record = json.loads(payload)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        return "payload is not a JSON object"
    if record.get("kind") == "heartbeat":
        return None
    device = record.get("device")
    if not isinstance(device, str):
        return "missing device"
    site = record.get("site")
    if not isinstance(site, str):
        site = "unknown"
    mapped = {"device_id": device, "temperature": record.get("temp"), "site": site}
    return device.encode(), json.dumps(mapped, separators=(",", ":")).encode()


class Transform(exports.Transform):
    def process(self, batch):
        output, rejected = [], []
        for index, message in enumerate(batch):
            outcome = map_payload(message.payload)
            if outcome is None:
                continue
            if isinstance(outcome, str):
                rejected.append(Rejected(index=index, reason=outcome))
                continue
            key, payload = outcome
            output.append(
                Message(
                    key=key,
                    payload=payload,
                    headers=message.headers,
                    timestamp_ms=message.timestamp_ms,
                    origin=message.origin,
                )
            )
        if rejected:
            raise Err(Failure_Reject(rejected))
        return output
