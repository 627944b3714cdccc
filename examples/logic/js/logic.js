// Example customer logic in JavaScript: a JSON field mapper and filter.
//
// Maps {"device": .., "temp": .., "site": .., ...} to {"device_id": .., "temperature": .., "site": ..}
// keyed by the device; drops heartbeats ("kind": "heartbeat"); rejects payloads that are not JSON
// objects or have no `device` string.

const decoder = new TextDecoder();
const encoder = new TextEncoder();

// Returns null to drop the record, a string to reject it, or {key, payload} to keep it.
function mapPayload(payload) {
  let record;
  try {
    record = JSON.parse(decoder.decode(payload));
  } catch {
    record = null;
  }
  if (record === null || typeof record !== "object" || Array.isArray(record)) {
    return "payload is not a JSON object";
  }
  if (record.kind === "heartbeat") {
    return null;
  }
  if (typeof record.device !== "string") {
    return "missing device";
  }
  const site = typeof record.site === "string" ? record.site : "unknown";
  const temperature = record.temp === undefined ? null : record.temp;
  const mapped = { device_id: record.device, temperature, site };
  return { key: encoder.encode(record.device), payload: encoder.encode(JSON.stringify(mapped)) };
}

export const transform = {
  process(batch) {
    const output = [];
    const rejected = [];
    batch.forEach((message, index) => {
      const outcome = mapPayload(message.payload);
      if (outcome === null) {
        return;
      }
      if (typeof outcome === "string") {
        rejected.push({ index, reason: outcome });
        return;
      }
      output.push({ ...message, key: outcome.key, payload: outcome.payload });
    });
    if (rejected.length > 0) {
      throw { tag: "reject", val: rejected };
    }
    return output;
  },
};
