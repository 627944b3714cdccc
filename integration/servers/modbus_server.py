"""A Modbus TCP server for Sluice's tests (pymodbus 3.16).

    python3 modbus_server.py --port PORT [--preset preset.json] [--log-requests]

Serves every unit id listed in the preset (default: unit 1), each with its own coils, discrete
inputs, input registers and holding registers (`size` of each, all zero or false unless preset).
Unknown unit ids answer exception 4, addresses past `size` exception 2.

The preset is JSON:

    {
      "units": [1, 2],
      "size": 2000,
      "values": [
        {"unit": 1, "table": "holding", "address": 0, "registers": [1, 2, 3]},
        {"unit": 1, "table": "coil", "address": 5, "bits": [true, false, true]},
        {"unit": 1, "table": "input", "address": 10, "type": "f32", "value": 1.5,
         "byte_order": "little", "word_order": "big"},
        {"unit": 1, "table": "holding", "address": 40, "type": "string", "value": "PUMP-7",
         "registers": 4}
      ]
    }

Typed values are encoded here with Python's `struct`, independently of the code under test:
the value's big-endian bytes, split into 16-bit words; `word_order: little` puts the last word
in the lowest register, `byte_order: little` swaps the two bytes inside each register.

With --log-requests every request is printed (flushed) as one line:

    REQ unit=1 fc=3 address=0 count=125

so a test can count exactly what reached the server.
"""

import argparse
import asyncio
import json
import struct
import sys

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

TABLES = {"coil": 0, "discrete": 1, "holding": 2, "input": 3}
STRUCT = {
    "u16": "H", "i16": "h", "u32": "I", "i32": "i", "f32": "f",
    "u64": "Q", "i64": "q", "f64": "d",
}


def encode(entry):
    """The registers holding one typed value, as the device would store it."""
    kind = entry["type"]
    if kind == "string":
        raw = entry["value"].encode("ascii")
        raw = raw.ljust(2 * entry["registers"], b"\0")
    else:
        raw = struct.pack(">" + STRUCT[kind], entry["value"])
    words = [raw[i:i + 2] for i in range(0, len(raw), 2)]
    if entry.get("word_order", "big") == "little" and kind != "string":
        words.reverse()
    if entry.get("byte_order", "big") == "little":
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


def build(preset):
    size = preset.get("size", 2000)
    units = preset.get("units", [1])
    memory = {
        unit: [[False] * size, [False] * size, [0] * size, [0] * size] for unit in units
    }
    for entry in preset.get("values", []):
        table = memory[entry.get("unit", units[0])][TABLES[entry["table"]]]
        address = entry["address"]
        if "bits" in entry:
            values = [bool(b) for b in entry["bits"]]
        elif "type" in entry:
            values = encode(entry)
        else:
            values = entry["registers"]
        table[address:address + len(values)] = values
    return memory


def log_request(sending, pdu):
    """Prints each request as it arrives (trace_pdu hook: called for requests and responses)."""
    if not sending:
        count = getattr(pdu, "count", 0) or len(pdu.registers or []) or len(pdu.bits or [])
        print(
            f"REQ unit={pdu.dev_id} fc={pdu.function_code} address={pdu.address} count={count}",
            flush=True,
        )
    return pdu


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--preset")
    parser.add_argument("--log-requests", action="store_true")
    args = parser.parse_args()
    preset = {}
    if args.preset:
        with open(args.preset, encoding="utf-8") as file:
            preset = json.load(file)
    devices = []
    for unit, (coils, discrete, holding, inputs) in build(preset).items():
        devices.append(
            SimDevice(
                id=unit,
                simdata=(
                    [SimData(0, values=coils, datatype=DataType.BITS)],
                    [SimData(0, values=discrete, datatype=DataType.BITS)],
                    [SimData(0, values=holding, datatype=DataType.REGISTERS)],
                    [SimData(0, values=inputs, datatype=DataType.REGISTERS)],
                ),
            )
        )
    print(f"serving units {[d.id for d in devices]} on 127.0.0.1:{args.port}", flush=True)
    trace = log_request if args.log_requests else None
    server = ModbusTcpServer(devices, address=("127.0.0.1", args.port), trace_pdu=trace)
    await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
