"""Customer logic for a Sluice pipeline step.

`process` receives a batch of records and returns the records to write. Raise
`Err(Failure_Reject([...]))` to refuse records for good (the rest of the batch is processed again
without them), `Err(Failure_Retry(reason))` to have the batch offered again later.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.types import Failure_Reject, Rejected


class Transform(exports.Transform):
    def process(self, batch):
        output, rejected = [], []
        for index, message in enumerate(batch):
            if not message.payload:
                rejected.append(Rejected(index=index, reason="empty payload"))
            else:
                output.append(message)
        if rejected:
            raise Err(Failure_Reject(rejected))
        return output
