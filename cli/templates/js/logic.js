// Customer logic for a Sluice pipeline step.
//
// `process` receives a batch of records and returns the records to write. Throw
// `{ tag: "reject", val: [{ index, reason }] }` to refuse records for good (the rest of the batch
// is processed again without them), `{ tag: "retry", val: reason }` to have the batch offered again.

export const transform = {
  process(batch) {
    const output = [];
    const rejected = [];
    batch.forEach((message, index) => {
      if (message.payload.length === 0) {
        rejected.push({ index, reason: "empty payload" });
      } else {
        output.push(message);
      }
    });
    if (rejected.length > 0) {
      throw { tag: "reject", val: rejected };
    }
    return output;
  },
};
