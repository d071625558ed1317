"""Run one provider stream in greenlets and append its events to the broker.

Split the way the SDKs split streaming:

    state.py       StreamState: numbering, the output so far, usage, metrics; builds events (pure)
    producer.py    the hot loop: provider deltas -> state -> broker.append
    supervisor.py  Pump: typed control messages, deadlines, exactly one terminal event
    outage.py      riding through a stream-store outage (StoreUnreachable)
    group.py       PumpGroup: this process's pumps, drained at shutdown
"""

from sse_gateway.pump.group import PumpGroup
from sse_gateway.pump.outage import StoreUnreachable
from sse_gateway.pump.producer import ProducerDone, ProducerFailed
from sse_gateway.pump.state import Outcome, StreamState
from sse_gateway.pump.supervisor import (
    CancelRequested,
    Control,
    Pump,
    ReadersChanged,
    Shutdown,
)

__all__ = ["CancelRequested", "Control", "Outcome", "ProducerDone", "ProducerFailed", "Pump",
           "PumpGroup", "ReadersChanged", "Shutdown", "StoreUnreachable", "StreamState"]
